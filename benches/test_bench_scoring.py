"""Scoring, top-k and mining-from-features benchmarks.

- scoring, T=32 (BLIP-2 style max over tokens): Q=2048, N=8192, d=256; qure.score vs torch
  ``matmul`` + ``amax`` vs the released code's ``einsum('ik,jlk->ijl')`` + ``max``.
- top-k, T=1, in four regimes side by side: many queries (Q=4096, N=100,000, k=100), few
  queries against a big gallery (Q=4, N=1,000,000, k=100) and large k (Q=1024, N=100,000,
  k=1,000 and k=2,048), d=256; qure.topk on float32 and on float16 galleries vs FAISS
  IndexFlatIP vs torch ``matmul`` + ``topk`` in 1,024-query chunks. The summary gives qure's
  ratio to the better of the two.
- mining from features at FashionIQ training scale: Q=18000, N=18000, T=32, d=256, in a fresh
  process so its peak resident memory can be reported.
- the machine's measured FMA peak, so every GFLOP/s figure can be read as a fraction of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import qure
from qure import _core

from .conftest import SMALL, THREADS, best_seconds, record

SCORE_SHAPE = (128, 512, 32, 64) if SMALL else (2048, 8192, 32, 256)  # Q, N, T, d
TOPK_SHAPE = (256, 5000, 64, 10) if SMALL else (4096, 100_000, 256, 100)  # Q, N, d, k
# Top-k regimes (Q, N, d, k): the name is the summary's group.
TOPK_REGIMES = {
    "many queries": (256, 5000, 64, 10) if SMALL else (4096, 100_000, 256, 100),
    "few queries": (4, 20_000, 64, 10) if SMALL else (4, 1_000_000, 256, 100),
    "k=1000": (128, 5000, 64, 100) if SMALL else (1024, 100_000, 256, 1000),
    "k=2048": (128, 5000, 64, 200) if SMALL else (1024, 100_000, 256, 2048),
}
MINE_SHAPE = (600, 600, 32, 64) if SMALL else (18_000, 18_000, 32, 256)  # Q, N, T, d


def _unit(rng, shape):
    x = rng.standard_normal(shape, dtype=np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x


@pytest.fixture(scope="module")
def score_problem():
    q, n, t, d = SCORE_SHAPE
    rng = np.random.default_rng(0)
    return _unit(rng, (q, d)), _unit(rng, (n, t, d))


@pytest.fixture(scope="module")
def topk_problem():
    q, n, d, _ = TOPK_SHAPE
    rng = np.random.default_rng(1)
    return _unit(rng, (q, d)), _unit(rng, (n, d))


_REGIME_CACHE: dict = {}


def _regime_problem(regime):
    """Queries and a gallery for a top-k regime (the last one built is kept: regimes sharing
    a gallery size reuse it)."""
    q, n, d, k = TOPK_REGIMES[regime]
    key = (n, d)
    if key not in _REGIME_CACHE:
        _REGIME_CACHE.clear()
        rng = np.random.default_rng(7)
        gallery = np.empty((n, d), dtype=np.float32)
        for start in range(0, n, 100_000):  # in chunks: no full-size temporaries
            gallery[start : start + 100_000] = _unit(rng, (min(100_000, n - start), d))
        _REGIME_CACHE[key] = gallery
    gallery = _REGIME_CACHE[key]
    queries = _unit(np.random.default_rng(q + k), (q, d))
    return queries, gallery, k


def _check_against_float64(indices, queries, gallery, k, rows=4):
    """qure's top-k against a float64 ranking on a few queries (near-ties may swap)."""
    exact = queries[:rows].astype(np.float64) @ gallery.T.astype(np.float64)
    want = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    assert (np.asarray(indices)[:rows] == want).mean() > 0.99


def _regime_rounds(q, n):
    return 3 if q * n >= 10**8 else 5


REGIMES = list(TOPK_REGIMES)


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_topk_regime_qure(benchmark, regime, dtype):
    queries, gallery, k = _regime_problem(regime)
    q, n, d = queries.shape[0], gallery.shape[0], gallery.shape[1]
    g = gallery if dtype == "float32" else gallery.astype(np.float16)
    _, indices = benchmark.pedantic(
        qure.topk, args=(queries, g, k), rounds=_regime_rounds(q, n), warmup_rounds=1
    )
    if dtype == "float32":
        _check_against_float64(indices, queries, gallery, k)
    else:  # exactly the float32 result of the widened values
        _, want = qure.topk(queries[:4], g[: min(n, 200_000)].astype(np.float32), k)
        _, got = qure.topk(queries[:4], g[: min(n, 200_000)], k)
        np.testing.assert_array_equal(got, want)
    name = "qure" if dtype == "float32" else "qure, float16 gallery"
    record(f"top-k {regime}", name, _gflops(2 * q * n * d, best_seconds(benchmark)), "GFLOP/s")


@pytest.mark.parametrize("regime", REGIMES)
def test_topk_regime_faiss(benchmark, regime):
    faiss = pytest.importorskip("faiss")
    queries, gallery, k = _regime_problem(regime)
    q, n, d = queries.shape[0], gallery.shape[0], gallery.shape[1]
    index = faiss.IndexFlatIP(d)
    index.add(gallery)
    _, indices = benchmark.pedantic(
        index.search, args=(queries, k), rounds=_regime_rounds(q, n), warmup_rounds=1
    )
    _check_against_float64(indices, queries, gallery, k)
    record(
        f"top-k {regime}",
        "FAISS IndexFlatIP",
        _gflops(2 * q * n * d, best_seconds(benchmark)),
        "GFLOP/s",
    )


@pytest.mark.parametrize("regime", REGIMES)
def test_topk_regime_torch(benchmark, regime):
    torch = pytest.importorskip("torch")
    queries, gallery, k = _regime_problem(regime)
    q, n, d = queries.shape[0], gallery.shape[0], gallery.shape[1]
    qt, gt = torch.from_numpy(queries), torch.from_numpy(gallery)

    def run():
        return [torch.topk(qt[i : i + 1024] @ gt.T, k, dim=1) for i in range(0, q, 1024)]

    benchmark.pedantic(run, rounds=_regime_rounds(q, n), warmup_rounds=1)
    record(
        f"top-k {regime}",
        "torch matmul+topk",
        _gflops(2 * q * n * d, best_seconds(benchmark)),
        "GFLOP/s",
    )


def _gflops(flops: float, seconds: float | None) -> float | None:
    return None if seconds is None else flops / seconds / 1e9


def test_fma_peak(benchmark):
    iterations = 20_000_000 if SMALL else 200_000_000
    peak = benchmark.pedantic(_core.fma_peak_gflops, args=(iterations,), rounds=3)
    best = max(_core.fma_peak_gflops(iterations) for _ in range(2))
    benchmark.extra_info["gflops"] = max(peak, best)
    record("machine", f"FMA peak ({qure.simd_kernel()}, {THREADS} threads)", best, "GFLOP/s")


def test_score_qure(benchmark, score_problem):
    queries, gallery = score_problem
    q, n, t, d = SCORE_SHAPE
    benchmark.pedantic(qure.score, args=(queries, gallery), rounds=5, warmup_rounds=1)
    record("score T=32", "qure", _gflops(2 * q * n * t * d, best_seconds(benchmark)), "GFLOP/s")


def test_score_torch_matmul_amax(benchmark, score_problem):
    torch = pytest.importorskip("torch")
    queries, gallery = score_problem
    q, n, t, d = SCORE_SHAPE
    qt, gt = torch.from_numpy(queries), torch.from_numpy(gallery).reshape(n * t, d)

    def run():
        return torch.matmul(qt, gt.T).reshape(q, n, t).amax(dim=-1)

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    np.testing.assert_allclose(out.numpy(), qure.score(queries, gallery), rtol=1e-4, atol=1e-5)
    record(
        "score T=32",
        "torch matmul+amax",
        _gflops(2 * q * n * t * d, best_seconds(benchmark)),
        "GFLOP/s",
    )


def test_score_released_einsum(benchmark, score_problem):
    torch = pytest.importorskip("torch")
    queries, gallery = score_problem
    q, n, t, d = SCORE_SHAPE
    qt, gt = torch.from_numpy(queries), torch.from_numpy(gallery)

    def run():
        return torch.einsum("ik,jlk->ijl", qt, gt).max(dim=-1).values

    benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    record(
        "score T=32",
        "released einsum+max",
        _gflops(2 * q * n * t * d, best_seconds(benchmark)),
        "GFLOP/s",
    )


def test_topk_qure(benchmark, topk_problem):
    queries, gallery = topk_problem
    q, n, d, k = TOPK_SHAPE
    benchmark.pedantic(qure.topk, args=(queries, gallery, k), rounds=5, warmup_rounds=1)
    record("top-k T=1", "qure", _gflops(2 * q * n * d, best_seconds(benchmark)), "GFLOP/s")


def test_topk_faiss(benchmark, topk_problem):
    faiss = pytest.importorskip("faiss")
    queries, gallery = topk_problem
    q, n, d, k = TOPK_SHAPE
    index = faiss.IndexFlatIP(d)
    index.add(gallery)
    _, indices = benchmark.pedantic(index.search, args=(queries, k), rounds=5, warmup_rounds=1)
    _, ours = qure.topk(queries, gallery, k)
    assert (indices == ours).mean() > 0.999  # FAISS sums in another order: rare near-ties swap
    record(
        "top-k T=1",
        "FAISS IndexFlatIP",
        _gflops(2 * q * n * d, best_seconds(benchmark)),
        "GFLOP/s",
    )


def test_topk_torch(benchmark, topk_problem):
    torch = pytest.importorskip("torch")
    queries, gallery = topk_problem
    q, n, d, k = TOPK_SHAPE
    qt, gt = torch.from_numpy(queries), torch.from_numpy(gallery)

    def run():
        return [torch.topk(qt[i : i + 1024] @ gt.T, k, dim=1) for i in range(0, q, 1024)]

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    record(
        "top-k T=1",
        "torch matmul+topk",
        _gflops(2 * q * n * d, best_seconds(benchmark)),
        "GFLOP/s",
    )


_MINE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import qure

    def status_mb(field):
        # VmHWM is this process's own peak (ru_maxrss would include the parent's, across exec).
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024

    q, n, t, d, threads = (int(v) for v in sys.argv[1:6])
    qure.set_num_threads(threads)
    rng = np.random.default_rng(2)
    gallery = np.empty((n, t, d), dtype=np.float32)
    for start in range(0, n, 1000):  # in chunks: no full-size temporaries
        part = rng.standard_normal((min(1000, n - start), t, d), dtype=np.float32)
        part /= np.linalg.norm(part, axis=-1, keepdims=True)
        gallery[start : start + len(part)] = part
    targets = rng.integers(0, n, q)
    # Queries near one of their target's tokens: a trained model's ranking, roughly.
    queries = gallery[targets, 0] + 0.5 * rng.standard_normal((q, d), dtype=np.float32) / d**0.5
    queries /= np.linalg.norm(queries, axis=-1, keepdims=True)
    inputs = status_mb("VmRSS")
    start = time.perf_counter()
    mined = qure.mine_from_features(queries, gallery, targets)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds,
        "peak_rss_mb": status_mb("VmHWM"),
        "inputs_rss_mb": inputs,
        "output_mb": (mined.indices.nbytes + mined.indptr.nbytes) / 2**20,
        "band_mean": float(mined.sizes.mean()),
    }))
    """
)


def test_mine_from_features_fashioniq_scale(benchmark):
    q, n, t, d = MINE_SHAPE
    args = [sys.executable, "-c", _MINE_SCRIPT, str(q), str(n), str(t), str(d), str(THREADS)]

    def run():
        out = subprocess.run(args, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    flops = 2 * q * n * t * d
    record("mine from features", "qure seconds", result["seconds"], "s")
    record("mine from features", "qure GFLOP/s", _gflops(flops, result["seconds"]), "GFLOP/s")
    record("mine from features", "peak RSS, whole process", result["peak_rss_mb"], "MB")
    record("mine from features", "RSS before mining (inputs)", result["inputs_rss_mb"], "MB")
    record("mine from features", "output (the bands)", result["output_mb"], "MB")
    record("mine from features", "mean band size", result["band_mean"], "items")


_SCORE_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np

    def status_mb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024

    q, n, t, d = (int(v) for v in sys.argv[1:5])
    how = sys.argv[5]
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((q, d), dtype=np.float32)
    gallery = rng.standard_normal((n, t, d), dtype=np.float32)
    if how == "qure":
        import qure
        before = status_mb("VmRSS")
        qure.score(queries, gallery)
    else:
        import torch
        qt, gt = torch.from_numpy(queries), torch.from_numpy(gallery).reshape(n * t, d)
        before = status_mb("VmRSS")
        torch.matmul(qt, gt.T).reshape(q, n, t).amax(dim=-1)
    print(json.dumps({"extra_mb": status_mb("VmHWM") - before}))
    """
)


@pytest.mark.parametrize("how", ["qure", "torch"])
def test_score_extra_memory(benchmark, how):
    """Peak memory a T=32 scoring call adds beyond its inputs (output included), fresh process."""
    if how == "torch":
        pytest.importorskip("torch")
    q, n, t, d = SCORE_SHAPE
    args = [sys.executable, "-c", _SCORE_MEMORY_SCRIPT, str(q), str(n), str(t), str(d), how]

    def run():
        out = subprocess.run(args, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    name = "qure" if how == "qure" else "torch matmul+amax"
    record("score T=32 extra memory", name, result["extra_mb"], "MB")
    record("score T=32 extra memory", f"{name}: output alone", q * n * 4 / 2**20, "MB")
