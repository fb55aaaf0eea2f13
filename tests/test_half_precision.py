"""Half-precision galleries: float16 (NumPy, torch) and bfloat16 (torch).

A half gallery is read in place (its bits, never a float32 copy) and every value is widened
exactly to float32, so its scores, top-k, target ranks and mined bands are *identical* to those
of ``gallery.astype(float32)``; against the float32 features the half values were rounded from,
scores stay within the documented bound (``qure.retrieval``'s module docstring).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qure
from qure._arrays import as_gallery

torch = pytest.importorskip("torch")

UNIT_ROUND = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


def _half(gallery32: np.ndarray, fmt: str, kind: str):
    """The gallery in ``fmt`` as NumPy or torch, and its exact float32 values."""
    if fmt == "float16" and kind == "numpy":
        g = gallery32.astype(np.float16)
        return g, g.astype(np.float32)
    dtype = torch.float16 if fmt == "float16" else torch.bfloat16
    g = torch.from_numpy(gallery32).to(dtype)
    return g, g.to(torch.float32).numpy()


CASES = [("float16", "numpy"), ("float16", "torch"), ("bfloat16", "torch")]
PAIRINGS = ("consecutive", "anchored")


@st.composite
def problems(draw):
    q = draw(st.integers(1, 40))
    n = draw(st.integers(1, 70))
    t = draw(st.integers(1, 3))
    d = draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**32 - 1))
    quantised = draw(st.booleans())
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    gallery = rng.standard_normal((n, t, d)).astype(np.float32)
    if quantised:  # exact ties
        queries, gallery = np.round(queries * 2) / 2, np.round(gallery * 2) / 2
    return queries, gallery, rng.integers(0, n, q)


@pytest.mark.parametrize(("fmt", "kind"), CASES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_half_results_are_those_of_the_widened_gallery(fmt, kind, problem):
    queries, gallery32, targets = problem
    half, widened = _half(gallery32, fmt, kind)
    n = gallery32.shape[0]
    np.testing.assert_array_equal(qure.score(queries, half), qure.score(queries, widened))
    k = min(5, n)
    for got, want in zip(qure.topk(queries, half, k), qure.topk(queries, widened, k)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        qure.target_rank(queries, half, targets), qure.target_rank(queries, widened, targets)
    )
    a = qure.mine_from_features(queries, half, targets, block_size=7)
    b = qure.mine_negatives(qure.score(queries, widened), targets)
    for field in ("indptr", "indices", "target_rank", "drops"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


@pytest.mark.parametrize(("fmt", "kind"), CASES)
@settings(max_examples=40, deadline=None)
@given(problem=problems())
def test_half_scores_within_the_documented_bound_of_float32(fmt, kind, problem):
    queries, gallery32, _ = problem
    half, _ = _half(gallery32, fmt, kind)
    d = queries.shape[1]
    got = qure.score(queries, half).astype(np.float64)
    exact32 = qure.score(queries, gallery32).astype(np.float64)
    # sum_k |q_k g_k| for the token achieving each side's max: bound by the max over tokens.
    mag = np.einsum("qd,ntd->qnt", np.abs(queries), np.abs(gallery32)).max(axis=2)
    gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
    bound = (UNIT_ROUND[fmt] + 2 * gamma) * mag + 2.0**-25 * np.abs(queries).sum(1)[:, None]
    assert np.all(np.abs(got - exact32) <= bound * (1 + 1e-6))


def test_half_galleries_are_read_in_place():
    g16 = np.ones((10, 4), dtype=np.float16)
    bits, fmt = as_gallery(g16, "gallery", ndim=2)
    assert fmt == "float16" and bits.dtype == np.uint16 and np.shares_memory(bits, g16)
    for dtype, name in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        t = torch.ones((10, 2, 4), dtype=dtype)
        bits, fmt = as_gallery(t, "gallery", ndim=3)
        assert fmt == name and bits.dtype == np.uint16
        assert bits.ctypes.data == t.data_ptr()
    # float32 passes through; other dtypes are converted to float32.
    g32 = np.ones((3, 4), dtype=np.float32)
    assert as_gallery(g32, "gallery", ndim=2)[0] is g32
    assert as_gallery(np.ones((3, 4)), "gallery", ndim=2)[1] == "float32"


@pytest.mark.parametrize(("fmt", "kind"), CASES)
def test_non_finite_half_values_are_named(fmt, kind):
    gallery = np.ones((50, 2, 4), dtype=np.float32)
    gallery[31, 1, 2] = np.inf
    half, _ = _half(gallery, fmt, kind)
    queries = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="gallery row 31 .* column 6"):
        qure.score(queries, half)
    with pytest.raises(ValueError, match="gallery row 31"):
        qure.topk(queries, half, 2)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_half_results_do_not_depend_on_the_thread_count(threads):
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((37, 16)).astype(np.float32)
    gallery = rng.standard_normal((3000, 16)).astype(np.float16)
    before = qure.get_num_threads()
    try:
        qure.set_num_threads(1)
        want = qure.topk(queries, gallery, 300), qure.topk(queries[:3], gallery, 10)
        qure.set_num_threads(threads)
        got = qure.topk(queries, gallery, 300), qure.topk(queries[:3], gallery, 10)
    finally:
        qure.set_num_threads(before)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g[0], w[0])
        np.testing.assert_array_equal(g[1], w[1])


@pytest.mark.parametrize(("fmt", "kind"), [("float32", "numpy"), *CASES])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(), window=st.integers(1, 20), pairing=st.sampled_from(PAIRINGS))
def test_windowed_mining_from_features_is_mining_the_score_matrix(
    fmt, kind, problem, window, pairing
):
    """``max_rank`` windows of at most a quarter of the gallery take the streaming window pass."""
    queries, gallery32, targets = problem
    gallery, widened = (gallery32, gallery32) if fmt == "float32" else _half(gallery32, fmt, kind)
    n = gallery32.shape[0]
    max_rank = max(1, min(window, n // 4))
    got = qure.mine_from_features(queries, gallery, targets, max_rank=max_rank, pairing=pairing)
    want = qure.mine_negatives(
        qure.score(queries, widened), targets, max_rank=max_rank, pairing=pairing
    )
    for field in ("indptr", "indices", "target_rank", "drops"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
