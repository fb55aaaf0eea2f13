"""Shared test helpers: tiny CIR training data and models, thread-count restoring, state checks.

Plain helpers are imported by name (``from conftest import make_cir_data``); fixtures are found
by pytest. The plain-Python references of the core's rules live in ``tests/reference.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import qure

VOCAB = 12
"""Token ids of the tiny models' texts: 1..VOCAB-1, 0 pads."""


@pytest.fixture
def restore_threads():
    """Restores qure's thread count after a test that changes it."""
    before = qure.get_num_threads()
    yield
    qure.set_num_threads(before)


def make_cir_data(
    n_pool: int = 80,
    n_queries: int = 40,
    size: int = 16,
    seed: int = 0,
    unique_targets: bool = True,
    positives: Any = None,
) -> Any:
    """Random images, references and 0-padded texts over a pool of ``n_pool`` images (distinct
    targets when ``unique_targets``), as :class:`qure.train.CIRTrainData`."""
    from qure.train import CIRTrainData

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_pool, size, size, 3), dtype=np.uint8)
    if unique_targets:
        target = rng.permutation(n_pool)[:n_queries]
    else:
        target = rng.integers(0, n_pool, size=n_queries)
    reference = (target + rng.integers(1, n_pool, size=n_queries)) % n_pool
    text = rng.integers(1, VOCAB, size=(n_queries, 5))
    for i in range(n_queries):
        text[i, rng.integers(1, 6) :] = 0
    return CIRTrainData(
        images=images,
        reference=reference.astype(np.int64),
        text=text.astype(np.int64),
        target=target.astype(np.int64),
        positives=positives,
    )


def make_tiny_model(seed: int = 0) -> Any:
    """A small :class:`qure.models.TinyCIRModel` for ``VOCAB``, initialised from ``seed``."""
    import torch

    from qure.models import TinyCIRModel

    torch.manual_seed(seed)
    return TinyCIRModel(VOCAB, dim=16, tokens=2, width=8)


def assert_same_state(a: Any, b: Any) -> None:
    """Two modules hold bit-identical parameters and buffers."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
