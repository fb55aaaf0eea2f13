"""qure: QuRe hard-negative mining and training for composed image retrieval.

The heavy work (scoring, top-k, mining and sampling) runs in a parallel Rust core; this package
converts NumPy arrays and torch tensors for it and builds training and evaluation on top.

Layers, each using only those above it: core operations (:func:`mine_negatives`,
:func:`score`, :func:`topk`, :class:`NegativeSampler`; NumPy only) -> torch glue
(:mod:`qure.torch` losses, :mod:`qure.distributed` collectives, :mod:`qure.sharded` mining) ->
data and models (:mod:`qure.datasets`, :mod:`qure.models`) -> training and evaluation
(:mod:`qure.train`, :mod:`qure.metrics`, :mod:`qure.experiments`, :mod:`qure.demo`) -> the CLI.
"""

from __future__ import annotations

import os
import warnings

from . import _core
from ._arrays import check_int
from .mining import HardNegatives, mine_negatives
from .retrieval import mine_from_features, score, simd_kernel, target_rank, topk
from .sampling import NegativeSampler

__version__: str = _core.__version__

MAX_THREADS: int = _core.MAX_THREADS
"""The most threads qure uses (1024): results never depend on the count, and more than a few per
core only costs memory and start-up time."""

__all__ = [
    "MAX_THREADS",
    "HardNegatives",
    "NegativeSampler",
    "__version__",
    "get_num_threads",
    "mine_from_features",
    "mine_negatives",
    "score",
    "set_num_threads",
    "simd_kernel",
    "target_rank",
    "topk",
]


def set_num_threads(n: int) -> None:
    """Sets how many threads qure's parallel work uses, from 1 to :data:`MAX_THREADS` (results
    never depend on it). Raises ``ValueError`` outside that range, before starting any thread."""
    _core.set_num_threads(check_int(n, "the number of threads", 1, MAX_THREADS))


def get_num_threads() -> int:
    """How many threads qure's parallel work uses."""
    return _core.get_num_threads()


_env_simd = os.environ.get("QURE_SIMD")
if _env_simd is not None and _env_simd not in ("portable", "scalar", "avx2", "avx512"):
    warnings.warn(
        f"QURE_SIMD={_env_simd!r} is not one of portable, avx2, avx512; using the best kernel "
        "this CPU has",
        RuntimeWarning,
        stacklevel=2,
    )


def _check_env_threads(value: str | None) -> None:
    """``QURE_NUM_THREADS`` must be an integer from 1 to ``MAX_THREADS`` (or unset: all cores).
    Checked at import, before the thread pool exists, so a typo never starts 100000 threads."""
    if value is None:
        return
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(
            f"QURE_NUM_THREADS={value!r} must be an integer from 1 to {MAX_THREADS} "
            "(or unset, to use every core)"
        )


_check_env_threads(os.environ.get("QURE_NUM_THREADS"))
