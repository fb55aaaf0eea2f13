"""Mining benchmark: qure vs the released code's per-query loop vs vectorised torch.

Q=4096 queries x N=16384 gallery scores from random unit embeddings (d=256), one random target per
query, 2 threads for everyone, same process, same data.

Against the physical floor, one read of the score matrix (``torch.amax(scores, dim=1)``, same
threads): Q=2048 x N=16384 with targets where a trained model puts them (rank 10) and at random.
The rank-10 rows are also timed in two groups, those whose bands hold most of the row and the
others, each against its own streaming pass: the wide bands must be sorted and written out.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import released_loop

import qure

from .conftest import SMALL, STREAMING_PASS, per_unit, record

Q, N, D = (256, 2048, 64) if SMALL else (4096, 16384, 256)
LOOP_QUERIES = 32 if SMALL else 256  # the Python loop is timed on a prefix of the queries


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((N, D), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = rng.standard_normal((Q, D), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries @ gallery.T
    targets = rng.integers(0, N, Q)
    return scores, targets


@pytest.fixture(scope="module")
def wide_band_problem(problem):
    """Queries planted next to their targets: the target ranks first and the two steepest drops
    sit at both ends of the bulk, so bands hold most of the gallery (the costly case)."""
    rng = np.random.default_rng(1)
    scores, _ = problem
    gallery = rng.standard_normal((N, D), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    targets = rng.integers(0, N, Q)
    queries = gallery[targets] + 0.08 * rng.standard_normal((Q, D), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries @ gallery.T, targets


def released_loop_all(scores: np.ndarray, targets: np.ndarray) -> list:
    """The released QuRe training code's mining, query by query (``tests/reference.py``)."""
    return [released_loop(row, int(t)) for row, t in zip(scores, targets)]


def torch_pipeline(scores, chunk: int = 512):
    """The best vectorised torch CPU pipeline: sort rows, diff, argsort the drops."""
    import torch

    out = None
    for start in range(0, scores.shape[0], chunk):
        values, _ = torch.sort(scores[start : start + chunk], dim=1, descending=True)
        out = torch.argsort(torch.diff(values, dim=1), dim=1)
    return out


def test_mine_qure(benchmark, problem):
    scores, targets = problem
    result = benchmark(qure.mine_negatives, scores, targets)
    assert len(result) == Q
    benchmark.extra_info["band_size_mean"] = float(result.sizes.mean())
    record("mining", "qure", _ms(per_unit(benchmark, Q)), "ms/query")


def test_mine_qure_wide_bands(benchmark, wide_band_problem):
    scores, targets = wide_band_problem
    result = benchmark.pedantic(qure.mine_negatives, args=(scores, targets), rounds=3)
    benchmark.extra_info["band_size_mean"] = float(result.sizes.mean())
    record("mining, wide bands", "qure", _ms(per_unit(benchmark, Q)), "ms/query")


def test_mine_torch_vectorised(benchmark, problem):
    torch = pytest.importorskip("torch")
    scores, _ = problem
    tensor = torch.from_numpy(scores)
    benchmark.pedantic(torch_pipeline, args=(tensor,), rounds=3, iterations=1)
    record("mining", "torch sort+diff+argsort", _ms(per_unit(benchmark, Q)), "ms/query")


def test_mine_released_loop(benchmark, problem):
    scores, targets = problem
    sub_scores, sub_targets = scores[:LOOP_QUERIES], targets[:LOOP_QUERIES]
    bands = benchmark.pedantic(
        released_loop_all, args=(sub_scores, sub_targets), rounds=3, iterations=1
    )
    record("mining", "released per-query loop", _ms(per_unit(benchmark, LOOP_QUERIES)), "ms/query")
    # Same bands as qure's consecutive rule on this tie-free data.
    mined = qure.mine_negatives(sub_scores, sub_targets)
    for i, band in enumerate(bands):
        expected = np.zeros(0, dtype=np.int64) if band is None else band
        np.testing.assert_array_equal(mined[i], expected)


FLOOR_Q = 256 if SMALL else 2048


@pytest.fixture(scope="module")
def floor_problem():
    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((N, D), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = rng.standard_normal((FLOOR_Q, D), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries @ gallery.T
    near_top = np.argsort(-scores, axis=1)[:, 10].copy()  # every target at rank 10
    return scores, {"rank 10": near_top, "random": rng.integers(0, N, FLOOR_Q)}


@pytest.mark.parametrize("targets", ["rank 10", "random"])
def test_mine_vs_one_pass_qure(benchmark, floor_problem, targets):
    scores, target_sets = floor_problem
    result = benchmark.pedantic(
        qure.mine_negatives, args=(scores, target_sets[targets]), rounds=5, warmup_rounds=1
    )
    if targets == "rank 10":
        assert np.all(result.target_rank == 10)
    record(
        f"mining vs one pass, targets {targets}",
        "qure",
        _ms(per_unit(benchmark, FLOOR_Q)),
        "ms/query",
    )


@pytest.mark.parametrize("targets", ["rank 10", "random"])
def test_mine_vs_one_pass_amax(benchmark, floor_problem, targets):
    torch = pytest.importorskip("torch")
    scores, _ = floor_problem
    tensor = torch.from_numpy(scores)
    benchmark.pedantic(torch.amax, args=(tensor,), kwargs={"dim": 1}, rounds=10, warmup_rounds=1)
    record(
        f"mining vs one pass, targets {targets}",
        "one streaming pass alone (torch.amax)",
        _ms(per_unit(benchmark, FLOOR_Q)),
        "ms/query",
    )


@pytest.fixture(scope="module")
def rank10_split(floor_problem):
    """The rank-10 rows split by their band: more than half the row, or not."""
    scores, target_sets = floor_problem
    targets = target_sets["rank 10"]
    wide = qure.mine_negatives(scores, targets).sizes > scores.shape[1] // 2
    return {
        name: (np.ascontiguousarray(scores[rows]), targets[rows])
        for name, rows in (("wide bands", wide), ("short bands", ~wide))
    }


@pytest.mark.parametrize("part", ["wide bands", "short bands"])
def test_mine_rank10_split_qure(benchmark, rank10_split, part):
    scores, targets = rank10_split[part]
    if len(targets) == 0:
        pytest.skip(f"no rank-10 row has {part} at this size")
    benchmark.pedantic(qure.mine_negatives, args=(scores, targets), rounds=5, warmup_rounds=1)
    group = f"mining vs one pass, rank-10 rows with {part}"
    record(group, "qure", _ms(per_unit(benchmark, len(targets))), "ms/query")


@pytest.mark.parametrize("part", ["wide bands", "short bands"])
def test_mine_rank10_split_amax(benchmark, rank10_split, part):
    torch = pytest.importorskip("torch")
    scores, targets = rank10_split[part]
    if len(targets) == 0:
        pytest.skip(f"no rank-10 row has {part} at this size")
    tensor = torch.from_numpy(scores)
    benchmark.pedantic(torch.amax, args=(tensor,), kwargs={"dim": 1}, rounds=10, warmup_rounds=1)
    group = f"mining vs one pass, rank-10 rows with {part}"
    record(group, STREAMING_PASS, _ms(per_unit(benchmark, len(targets))), "ms/query")
