"""Tests of ``qure.score``, ``qure.topk``, ``qure.target_rank`` and ``qure.mine_from_features``.

Scores are checked against NumPy float64 references (within a tolerance) and, bit for bit,
against the specified fused-multiply-add chain. Top-k, target ranks and mining from features are
checked *exactly* against references built from ``qure.score``'s own matrix: the streaming paths
must reproduce its bits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qure
from qure import mine_from_features, mine_negatives, score, target_rank, topk

PAIRINGS = ("consecutive", "anchored")
SMALL_VALUES = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# references


def reference_scores(queries, gallery):
    """``(Q, N)`` float64 scores: einsum in float64, then the max over the tokens."""
    q = np.asarray(queries, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    if g.ndim == 2:
        g = g[:, None, :]
    return np.einsum("qd,ntd->qnt", q, g, optimize=True).max(axis=2)


def assert_close_to_reference(scores, queries, gallery):
    expected = reference_scores(queries, gallery)
    q64 = np.asarray(queries, dtype=np.float64)
    g64 = np.asarray(gallery, dtype=np.float64)
    d = q64.shape[1]
    scale = float(np.sqrt(np.mean(q64**2) * np.mean(g64**2))) if q64.size and g64.size else 1.0
    assert scores.dtype == np.float32
    assert scores.shape == expected.shape
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5 * np.sqrt(d) * scale)


def ranking(row, excluded=()):
    """Indices of ``row`` by score descending, ties by ascending index, minus ``excluded``."""
    excluded = {int(x) for x in excluded}
    keep = [j for j in range(len(row)) if j not in excluded]
    return sorted(keep, key=lambda j: (-float(row[j]), j))


def reference_topk(scores, k, excludes=None):
    """Exact top-k of a score matrix, padded with (-inf, -1)."""
    q = scores.shape[0]
    values = np.full((q, k), -np.inf, dtype=np.float32)
    indices = np.full((q, k), -1, dtype=np.int64)
    for i in range(q):
        order = ranking(scores[i], () if excludes is None else excludes[i])[:k]
        indices[i, : len(order)] = order
        values[i, : len(order)] = scores[i, order]
    return values, indices


def reference_rank(scores, targets):
    """Higher scores plus ties with a lower index, per query."""
    out = []
    for i, t in enumerate(targets):
        row = scores[i]
        s = row[t]
        out.append(int(np.sum(row > s) + np.sum(row[:t] == s)))
    return np.array(out, dtype=np.int64)


def as_numpy(x):
    """A result as NumPy: torch results (for torch queries) go to the CPU first."""
    return x.cpu().numpy() if hasattr(x, "cpu") else x


def assert_topk_equal(result, expected):
    values, indices = (as_numpy(x) for x in result)
    assert values.dtype == np.float32 and indices.dtype == np.int64
    assert values.shape == indices.shape == expected[0].shape
    np.testing.assert_array_equal(indices, expected[1])
    # Bitwise on the values (both sides come from the same float32 scores).
    np.testing.assert_array_equal(values.view(np.uint32), expected[0].view(np.uint32))


def _fma_f32(a, b, c):
    """Correctly rounded float32 ``a * b + c`` (one rounding), via exact rationals."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if exact == 0:
        return np.float32(0.0)
    guess = np.float32(float(exact))
    candidates = [
        np.nextafter(guess, np.float32(-np.inf)),
        guess,
        np.nextafter(guess, np.float32(np.inf)),
    ]
    return min(
        candidates,
        key=lambda v: (abs(Fraction(float(v)) - exact), int(np.array(v).view(np.uint32)) & 1),
    )


def fma_chain_scores(queries, gallery):
    """The specified scores: per (query, token) ``s = fma(g[k], q[k], s)`` from +0.0, then max."""
    g = gallery if gallery.ndim == 3 else gallery[:, None, :]
    out = np.empty((queries.shape[0], g.shape[0]), dtype=np.float32)
    for i, qrow in enumerate(queries):
        for j in range(g.shape[0]):
            best = None
            for token in g[j]:
                s = np.float32(0.0)
                for x, y in zip(token, qrow):
                    s = _fma_f32(x, y, s)
                best = s if best is None else max(best, s)
            out[i, j] = best
    return out


def random_features(rng, kind, q, n, t, d):
    g_shape = (n, d) if t is None else (n, t, d)
    if kind == "normal":
        return (
            rng.standard_normal((q, d)).astype(np.float32),
            rng.standard_normal(g_shape).astype(np.float32),
        )
    if kind == "small":
        return rng.choice(SMALL_VALUES, (q, d)), rng.choice(SMALL_VALUES, g_shape)
    if kind == "sparse":
        qs = rng.choice(SMALL_VALUES, (q, d)) * (rng.random((q, d)) < 0.3)
        gs = rng.choice(SMALL_VALUES, g_shape) * (rng.random(g_shape) < 0.3)
        return qs.astype(np.float32), gs.astype(np.float32)
    if kind == "constant":
        return np.full((q, d), 0.5, np.float32), np.full(g_shape, -1.0, np.float32)
    if kind == "positive":
        return (
            rng.uniform(0, 1, (q, d)).astype(np.float32),
            rng.uniform(0, 1, g_shape).astype(np.float32),
        )
    raise AssertionError(kind)


# --------------------------------------------------------------------------------------------
# 1. agreement with NumPy references

SHAPES = [
    # (Q, N, T, d); T None means an (N, d) gallery.
    (1, 1, None, 1),
    (1, 1, 1, 3),
    (2, 1, 32, 3),
    (33, 1, 2, 1),
    (1, 7, 32, 3),
    (33, 517, None, 1),
    (33, 517, 2, 3),
    (17, 600, 32, 24),
    (47, 1100, 1, 65),
    (33, 1025, 2, 130),
    (5, 513, 32, 96),
    (70, 300, None, 768),
]


@pytest.mark.parametrize(("q", "n", "t", "d"), SHAPES)
def test_score_matches_numpy(q, n, t, d):
    rng = np.random.default_rng(q * 1000 + n + d)
    for kind in ("normal", "positive"):
        queries, gallery = random_features(rng, kind, q, n, t, d)
        s = score(queries, gallery)
        assert s.shape == (q, n) and s.dtype == np.float32
        assert_close_to_reference(s, queries, gallery)
        # Top-k values are those scores; the ranking is consistent with them.
        k = min(n, 10)
        assert_topk_equal(topk(queries, gallery, k), reference_topk(s, k))
        targets = rng.integers(0, n, q)
        np.testing.assert_array_equal(
            target_rank(queries, gallery, targets), reference_rank(s, targets)
        )


@pytest.mark.parametrize("factor", [1e-3, 1.0, 1e3])
def test_score_matches_numpy_scaled(factor):
    rng = np.random.default_rng(5)
    queries, gallery = random_features(rng, "normal", 9, 130, 3, 50)
    queries = (queries * factor).astype(np.float32)
    s = score(queries, gallery)
    assert_close_to_reference(s, queries, gallery)


def test_score_small_values_exact():
    """Dyadic inputs: every partial sum is exact, so the scores equal the float64 reference."""
    rng = np.random.default_rng(3)
    for q, n, t, d in [(3, 50, None, 5), (33, 513, 4, 7), (1, 1, 32, 1)]:
        queries, gallery = random_features(rng, "small", q, n, t, d)
        np.testing.assert_array_equal(score(queries, gallery), reference_scores(queries, gallery))


def test_score_is_the_fma_chain():
    """Bit for bit the fused multiply-add chain over k = 0 .. d-1, starting from +0.0."""
    rng = np.random.default_rng(17)
    for q, n, t, d in [(3, 5, 3, 37), (2, 4, None, 19), (1, 3, 2, 1)]:
        queries, gallery = random_features(rng, "normal", q, n, t, d)
        expected = fma_chain_scores(queries, gallery)
        got = score(queries, gallery)
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_two_dimensional_gallery_is_one_token():
    rng = np.random.default_rng(8)
    queries, gallery = random_features(rng, "normal", 35, 531, None, 40)
    s2 = score(queries, gallery)
    s3 = score(queries, gallery[:, None, :])
    np.testing.assert_array_equal(s2.view(np.uint32), s3.view(np.uint32))
    assert_topk_equal(topk(queries, gallery, 20), topk(queries, gallery[:, None, :], 20))
    targets = rng.integers(0, 531, 35)
    np.testing.assert_array_equal(
        target_rank(queries, gallery, targets), target_rank(queries, gallery[:, None, :], targets)
    )


def test_max_over_tokens_is_per_token_score_max():
    rng = np.random.default_rng(9)
    queries, gallery = random_features(rng, "normal", 21, 70, 5, 33)
    per_token = np.stack([score(queries, gallery[:, j]) for j in range(5)])
    np.testing.assert_array_equal(score(queries, gallery), per_token.max(axis=0))


def test_zero_queries():
    gallery = np.ones((5, 2, 3), np.float32)
    s = score(np.zeros((0, 3), np.float32), gallery)
    assert s.shape == (0, 5) and s.dtype == np.float32


def test_ties_across_blocks():
    """Many exact duplicates spread over a long gallery: ties resolve by ascending index."""
    rng = np.random.default_rng(10)
    base = rng.standard_normal((7, 3, 16)).astype(np.float32)
    gallery = np.tile(base, (160, 1, 1))[:1100]
    queries = rng.standard_normal((37, 16)).astype(np.float32)
    s = score(queries, gallery)
    assert len(np.unique(s[0])) <= 7
    for k in (1, 150, 700, 1100):
        assert_topk_equal(topk(queries, gallery, k), reference_topk(s, k))
    targets = rng.integers(0, 1100, 37)
    np.testing.assert_array_equal(
        target_rank(queries, gallery, targets), reference_rank(s, targets)
    )


def test_topk_full_sort():
    rng = np.random.default_rng(12)
    queries, gallery = random_features(rng, "small", 19, 200, 2, 3)
    s = score(queries, gallery)
    values, indices = topk(queries, gallery, 200)
    np.testing.assert_array_equal(indices, np.argsort(-s, axis=1, kind="stable"))
    np.testing.assert_array_equal(values, np.take_along_axis(s, indices, axis=1))


def test_mine_from_features_block_sizes():
    rng = np.random.default_rng(13)
    queries, gallery = random_features(rng, "normal", 45, 600, 4, 24)
    targets = rng.integers(0, 600, 45)
    s = score(queries, gallery)
    configs = [
        {},
        {"pairing": "anchored", "consecutive_threshold": 3},
        {
            "max_rank": 50,
            "positives": [rng.integers(0, 600, 2) for _ in range(45)],
            "gallery_ids": rng.integers(0, 300, 600),
        },
    ]
    for kwargs in configs:
        expected = mine_negatives(s, targets, **kwargs)
        np.testing.assert_array_equal(expected.target_rank, reference_rank(s, targets))
        for block_size in (None, 1, 7, 32, 45, 1000):
            got = mine_from_features(queries, gallery, targets, block_size=block_size, **kwargs)
            assert got == expected, (kwargs, block_size)


# --------------------------------------------------------------------------------------------
# 2. property tests: exact consistency with qure.score


@st.composite
def feature_cases(draw):
    q = draw(st.integers(1, 6))
    n = draw(st.integers(1, 30))
    t = draw(st.sampled_from([None, 1, 2, 3]))
    d = draw(st.integers(1, 8))
    kind = draw(st.sampled_from(["small", "small", "small", "sparse", "constant", "normal"]))
    if kind == "small" and draw(st.booleans()):
        # Hypothesis-drawn values (shrinkable); otherwise seeded.
        g_shape = (n, d) if t is None else (n, t, d)
        size_q, size_g = q * d, int(np.prod(g_shape))
        values = st.sampled_from([float(v) for v in SMALL_VALUES])
        queries = np.array(draw(st.lists(values, min_size=size_q, max_size=size_q)), np.float32)
        gallery = np.array(draw(st.lists(values, min_size=size_g, max_size=size_g)), np.float32)
        queries, gallery = queries.reshape(q, d), gallery.reshape(g_shape)
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        queries, gallery = random_features(rng, kind, q, n, t, d)
    return queries, gallery


PROPERTY_SETTINGS = settings(
    deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(feature_cases(), st.data())
def test_topk_property(case, data):
    queries, gallery = case
    q, n = queries.shape[0], gallery.shape[0]
    s = score(queries, gallery)
    if np.all(np.isin(queries, SMALL_VALUES)) and np.all(np.isin(gallery, SMALL_VALUES)):
        np.testing.assert_array_equal(s, reference_scores(queries, gallery))
    else:
        assert_close_to_reference(s, queries, gallery)
    k = data.draw(st.integers(1, n), label="k")
    form = data.draw(st.sampled_from(["none", "array", "lists"]), label="exclude form")
    if form == "none":
        exclude, excludes = None, None
    elif form == "array":
        exclude = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=q, max_size=q)))
        excludes = [[x] for x in exclude]
    else:
        exclude = data.draw(
            st.lists(st.lists(st.integers(0, n - 1), max_size=n + 2), min_size=q, max_size=q)
        )
        excludes = exclude
    result = (
        topk(queries, gallery, k) if exclude is None else topk(queries, gallery, k, exclude=exclude)
    )
    assert_topk_equal(result, reference_topk(s, k, excludes))


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(feature_cases(), st.data())
def test_target_rank_property(case, data):
    queries, gallery = case
    q, n = queries.shape[0], gallery.shape[0]
    targets = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=q, max_size=q)))
    s = score(queries, gallery)
    ranks = target_rank(queries, gallery, targets)
    assert ranks.dtype == np.int64 and ranks.shape == (q,)
    expected = reference_rank(s, targets)
    np.testing.assert_array_equal(ranks, expected)
    for i, t in enumerate(targets):
        assert ranking(s[i]).index(int(t)) == expected[i]


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(feature_cases(), st.data())
def test_mine_from_features_property(case, data):
    queries, gallery = case
    q, n = queries.shape[0], gallery.shape[0]
    targets = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=q, max_size=q)))
    kwargs = {
        "consecutive_threshold": data.draw(st.integers(0, 4)),
        "pairing": data.draw(st.sampled_from(PAIRINGS)),
        "max_rank": data.draw(st.one_of(st.none(), st.integers(1, n + 2))),
    }
    if data.draw(st.booleans()):
        kwargs["positives"] = data.draw(
            st.lists(st.lists(st.integers(0, n - 1), max_size=3), min_size=q, max_size=q)
        )
    if data.draw(st.booleans()):
        ids = data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
        if data.draw(st.booleans()):
            ids = [f"item-{x}" for x in ids]
        kwargs["gallery_ids"] = ids
    block_size = data.draw(st.one_of(st.none(), st.integers(1, 70)), label="block_size")
    expected = mine_negatives(score(queries, gallery), targets, **kwargs)
    got = mine_from_features(queries, gallery, targets, block_size=block_size, **kwargs)
    assert got == expected


# --------------------------------------------------------------------------------------------
# 3. exclude


def test_exclude_array_and_lists():
    rng = np.random.default_rng(20)
    queries, gallery = random_features(rng, "small", 12, 40, 2, 3)
    s = score(queries, gallery)
    refs = rng.integers(0, 40, 12)
    expected = reference_topk(s, 10, [[r] for r in refs])
    for exclude in (refs, refs.astype(np.int32), refs.astype(np.uint16), [[r] for r in refs]):
        assert_topk_equal(topk(queries, gallery, 10, exclude=exclude), expected)
    # A list of ints is one item per query too.
    assert_topk_equal(topk(queries, gallery, 10, exclude=refs.tolist()), expected)
    # Ragged lists with duplicates and empty rows.
    lists = [list(rng.integers(0, 40, i % 5)) + ([3, 3] if i % 3 == 0 else []) for i in range(12)]
    assert_topk_equal(topk(queries, gallery, 10, exclude=lists), reference_topk(s, 10, lists))
    # An empty exclusion list per query is no exclusion.
    assert_topk_equal(topk(queries, gallery, 10, exclude=[[]] * 12), topk(queries, gallery, 10))


def test_exclude_padding():
    rng = np.random.default_rng(21)
    queries, gallery = random_features(rng, "normal", 4, 5, None, 3)
    s = score(queries, gallery)
    values, indices = topk(queries, gallery, 5, exclude=[[0, 1], [], [4, 4, 4], [0, 1, 2, 3, 4]])
    assert_topk_equal((values, indices), reference_topk(s, 5, [[0, 1], [], [4], [0, 1, 2, 3, 4]]))
    assert indices[0, 3:].tolist() == [-1, -1] and np.all(np.isneginf(values[0, 3:]))
    assert np.all(indices[1] >= 0)
    assert indices[2, 4] == -1 and np.isneginf(values[2, 4])
    assert indices[3].tolist() == [-1] * 5 and np.all(np.isneginf(values[3]))
    # (Q,) form with k = N: exactly one pad per query.
    values, indices = topk(queries, gallery, 5, exclude=np.array([0, 1, 2, 3]))
    assert indices[:, 4].tolist() == [-1] * 4 and np.all(np.isneginf(values[:, 4]))
    for i in range(4):
        assert i not in indices[i].tolist()
    # N = 1 gallery, its only item excluded.
    v1, i1 = topk(queries, gallery[:1], 1, exclude=np.zeros(4, np.int64))
    assert i1.tolist() == [[-1]] * 4 and np.all(np.isneginf(v1))


def test_exclude_cirr_reference():
    """CIRR: each query is built from a reference image that must not be retrieved."""
    rng = np.random.default_rng(22)
    n, q, t, d = 300, 40, 4, 32
    gallery = rng.standard_normal((n, t, d)).astype(np.float32)
    refs = rng.integers(0, n, q)
    # Queries close to their reference's first token: the reference is top-1 without exclusion.
    queries = (gallery[refs, 0] * 3 + 0.1 * rng.standard_normal((q, d))).astype(np.float32)
    _, plain = topk(queries, gallery, 1)
    assert (plain[:, 0] == refs).mean() > 0.9
    k = 10
    values, indices = topk(queries, gallery, k, exclude=refs)
    assert not np.any(indices == refs[:, None])
    _, wider = topk(queries, gallery, k + 1)
    for i in range(q):
        kept = [x for x in wider[i].tolist() if x != refs[i]][:k]
        assert indices[i].tolist() == kept
    s = score(queries, gallery)
    np.testing.assert_array_equal(values, np.take_along_axis(s, indices, axis=1))
    assert_topk_equal((values, indices), reference_topk(s, k, [[r] for r in refs]))


# --------------------------------------------------------------------------------------------
# 4. thread counts


def test_thread_count_does_not_change_results(restore_threads):
    rng = np.random.default_rng(30)
    q, n, t, d = 70, 900, 4, 24
    queries, gallery = random_features(rng, "normal", q, n, t, d)
    queries[::4] = np.round(queries[::4] * 2) / 2  # some exact ties
    gallery[::3] = np.round(gallery[::3] * 2) / 2
    targets = rng.integers(0, n, q)
    refs = rng.integers(0, n, q)
    outputs = []
    for threads in (1, 2, 3):
        qure.set_num_threads(threads)
        assert qure.get_num_threads() == threads
        outputs.append(
            (
                score(queries, gallery),
                topk(queries, gallery, 25),
                topk(queries, gallery, 25, exclude=refs),
                target_rank(queries, gallery, targets),
                mine_from_features(queries, gallery, targets),
                mine_from_features(queries, gallery, targets, block_size=9, pairing="anchored"),
            )
        )
    first = outputs[0]
    for other in outputs[1:]:
        np.testing.assert_array_equal(first[0].view(np.uint32), other[0].view(np.uint32))
        for j in (1, 2):
            assert_topk_equal(other[j], first[j])
        np.testing.assert_array_equal(first[3], other[3])
        assert first[4] == other[4] and first[5] == other[5]
    s = first[0]
    assert_topk_equal(first[1], reference_topk(s, 25))
    np.testing.assert_array_equal(first[3], reference_rank(s, targets))
    assert first[4] == mine_negatives(s, targets)


# --------------------------------------------------------------------------------------------
# 5. input types


def test_numpy_dtypes_and_layouts():
    rng = np.random.default_rng(40)
    q64 = rng.standard_normal((13, 20))
    g64 = rng.standard_normal((90, 3, 20))
    q32, g32 = q64.astype(np.float32), g64.astype(np.float32)
    expected = score(q32, g32)
    np.testing.assert_array_equal(score(q64, g64), expected)
    np.testing.assert_array_equal(
        score(q64.astype(np.float16), g64.astype(np.float16)),
        score(q64.astype(np.float16).astype(np.float32), g64.astype(np.float16).astype(np.float32)),
    )
    # Non-contiguous views.
    qf = np.asfortranarray(q32)
    assert not qf.flags.c_contiguous
    np.testing.assert_array_equal(score(qf, g32), expected)
    wide = np.zeros((90, 3, 40), np.float32)
    wide[:, :, ::2] = g32
    np.testing.assert_array_equal(score(q32, wide[:, :, ::2]), expected)
    tall = np.repeat(q32, 2, axis=0)
    np.testing.assert_array_equal(score(tall[::2], g32), expected)
    gt = np.ascontiguousarray(g32.transpose(2, 1, 0)).transpose(2, 1, 0)
    assert not gt.flags.c_contiguous
    np.testing.assert_array_equal(score(q32, gt), expected)
    np.testing.assert_array_equal(score(q32, g32[::-1])[:, ::-1], expected)
    assert_topk_equal(topk(qf, gt, 7), topk(q32, g32, 7))
    targets = rng.integers(0, 90, 13)
    np.testing.assert_array_equal(target_rank(qf, gt, targets), target_rank(q32, g32, targets))
    assert mine_from_features(qf, gt, targets) == mine_from_features(q32, g32, targets)
    # Python lists.
    np.testing.assert_array_equal(score(q32.tolist(), g32.tolist()), expected)


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    from qure._arrays import as_float32_matrix

    rng = np.random.default_rng(41)
    q64 = rng.standard_normal((11, 24))
    g64 = rng.standard_normal((77, 2, 24))
    q32, g32 = q64.astype(np.float32), g64.astype(np.float32)
    targets = rng.integers(0, 77, 11)
    exp_s = score(q32, g32)
    exp_top = topk(q32, g32, 9)
    exp_rank = target_rank(q32, g32, targets)
    exp_mined = mine_from_features(q32, g32, targets)

    tq, tg = torch.from_numpy(q32.copy()), torch.from_numpy(g32.copy())
    # CPU float32 tensors are read in place.
    assert as_float32_matrix(tq, "queries").ctypes.data == tq.data_ptr()
    assert as_float32_matrix(tg, "gallery", ndim=3).ctypes.data == tg.data_ptr()
    np.testing.assert_array_equal(score(tq, tg), exp_s)
    assert_topk_equal(topk(tq, tg, 9), exp_top)
    # torch queries in, torch tensors out (on their device); NumPy queries, NumPy out.
    assert isinstance(score(tq, tg), torch.Tensor) and score(tq, tg).dtype == torch.float32
    values, indices = topk(tq, g32, 9)
    assert (values.dtype, indices.dtype) == (torch.float32, torch.int64)
    assert target_rank(tq, g32, targets).dtype == torch.int64
    assert isinstance(score(q32, tg), np.ndarray)
    assert isinstance(topk(q32, tg, 9)[1], np.ndarray)
    np.testing.assert_array_equal(target_rank(tq, tg, torch.from_numpy(targets)), exp_rank)
    assert (
        mine_from_features(tq, tg, torch.tensor(targets.tolist(), dtype=torch.int32)) == exp_mined
    )
    # Mixed NumPy and torch, requires_grad, non-contiguous tensors.
    np.testing.assert_array_equal(score(tq.clone().requires_grad_(True), g32), exp_s)
    tt = torch.from_numpy(np.ascontiguousarray(q32.T)).T
    assert not tt.is_contiguous()
    np.testing.assert_array_equal(score(tt, tg), exp_s)
    tg_nc = torch.from_numpy(np.ascontiguousarray(g32.transpose(1, 0, 2))).transpose(0, 1)
    assert not tg_nc.is_contiguous()
    assert_topk_equal(topk(tt, tg_nc, 9), exp_top)
    # Other float dtypes: the same as converting to float32 first.
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        cq, cg = torch.from_numpy(q64).to(dtype), torch.from_numpy(g64).to(dtype)
        fq, fg = cq.float().numpy(), cg.float().numpy()
        np.testing.assert_array_equal(score(cq, cg), score(fq, fg))
        assert_topk_equal(topk(cq, cg, 9), topk(fq, fg, 9))
        np.testing.assert_array_equal(target_rank(cq, cg, targets), target_rank(fq, fg, targets))
        assert mine_from_features(cq, cg, targets) == mine_from_features(fq, fg, targets)
    # exclude as a tensor, (Q,) and per-query lists of tensors.
    refs = rng.integers(0, 77, 11)
    expected = topk(q32, g32, 9, exclude=refs)
    assert_topk_equal(topk(tq, tg, 9, exclude=torch.from_numpy(refs)), expected)
    assert_topk_equal(topk(tq, tg, 9, exclude=[torch.tensor([int(r)]) for r in refs]), expected)


def test_cuda_inputs():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(42)
    q32 = rng.standard_normal((6, 16)).astype(np.float32)
    g32 = rng.standard_normal((50, 3, 16)).astype(np.float32)
    tq, tg = torch.from_numpy(q32).cuda(), torch.from_numpy(g32).cuda()
    assert score(tq, tg).device == tq.device
    np.testing.assert_array_equal(score(tq, tg).cpu().numpy(), score(q32, g32))
    assert_topk_equal(
        topk(tq.half(), tg.half(), 5), topk(tq.half().float().cpu(), tg.half().float().cpu(), 5)
    )


# --------------------------------------------------------------------------------------------
# 6. SIMD kernels

_DIGEST_CODE = """
import hashlib
import numpy as np
import qure

def digest():
    rng = np.random.default_rng(1234)
    queries = rng.standard_normal((19, 37)).astype(np.float32)
    gallery = rng.standard_normal((130, 3, 37)).astype(np.float32)
    flat = rng.standard_normal((75, 37)).astype(np.float32)
    h = hashlib.sha256()
    h.update(qure.score(queries, gallery).tobytes())
    h.update(qure.score(queries, flat).tobytes())
    values, indices = qure.topk(queries, gallery, 17)
    h.update(values.tobytes())
    h.update(indices.tobytes())
    h.update(qure.target_rank(queries, gallery, np.arange(19) * 5).tobytes())
    return h.hexdigest()
"""


def _digest_in_process():
    namespace = {}
    exec(_DIGEST_CODE, namespace)
    return namespace["digest"]()


def test_simd_kernel_name():
    assert qure.simd_kernel() in ("avx512", "avx2", "portable")


@pytest.mark.parametrize("cap", ["portable", "avx2"])
def test_kernels_are_bit_identical(cap):
    env = {k: v for k, v in os.environ.items() if k != "QURE_SIMD"}
    env["QURE_SIMD"] = cap
    env["QURE_NUM_THREADS"] = "2"
    code = _DIGEST_CODE + "\nprint(qure.simd_kernel())\nprint(digest())\n"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    kernel, digest = out.stdout.split()
    here = qure.simd_kernel()
    if cap == "portable":
        assert kernel == "portable"
    else:
        assert kernel in ("avx2", "portable")
        if here in ("avx512", "avx2"):
            assert kernel == "avx2"
    assert digest == _digest_in_process()


# --------------------------------------------------------------------------------------------
# 7. bad input


def _q(q=3, d=4):
    return np.ones((q, d), np.float32)


def _g(n=5, t=2, d=4):
    return np.ones((n, t, d), np.float32) if t else np.ones((n, d), np.float32)


def _all_calls(queries, gallery):
    targets = np.zeros(len(queries), np.int64)
    return [
        lambda: score(queries, gallery),
        lambda: topk(queries, gallery, 1),
        lambda: target_rank(queries, gallery, targets),
        lambda: mine_from_features(queries, gallery, targets),
    ]


@pytest.mark.parametrize(
    ("queries", "gallery"),
    [
        (_q(d=4), _g(d=3)),
        (_q(d=4), _g(t=None, d=5)),
        (np.ones(4, np.float32), _g()),
        (np.ones((3, 1, 4), np.float32), _g()),
        (_q(), np.ones(4, np.float32)),
        (_q(), np.ones((5, 2, 1, 4), np.float32)),
        (_q(), np.zeros((0, 4), np.float32)),
        (_q(), np.zeros((0, 2, 4), np.float32)),
    ],
    ids=["d-3d", "d-2d", "q-1d", "q-3d", "g-1d", "g-4d", "empty-2d", "empty-3d"],
)
def test_bad_shapes(queries, gallery):
    for call in _all_calls(queries, gallery):
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(bad):
    queries = _q()
    queries[2, 1] = bad
    for call in _all_calls(queries, _g()):
        with pytest.raises(ValueError, match="queries row 2"):
            call()
    gallery = _g()
    gallery[3, 1, 2] = bad
    for call in _all_calls(_q(), gallery):
        with pytest.raises(ValueError, match="gallery row 3"):
            call()
    flat = _g(t=None)
    flat[4, 0] = bad
    for call in _all_calls(_q(), flat):
        with pytest.raises(ValueError, match="gallery row 4"):
            call()


def test_bad_k():
    queries, gallery = _q(), _g()
    for k in (6, 100):
        with pytest.raises(ValueError):
            topk(queries, gallery, k)
    for k in (0, -1):
        with pytest.raises(ValueError):
            topk(queries, gallery, k)
    for k in (2.0, "2", None, True, 1.5):
        with pytest.raises(TypeError):
            topk(queries, gallery, k)
    # NumPy integers are integers.
    assert topk(queries, gallery, np.int32(5))[1].shape == (3, 5)
    assert topk(queries, gallery, np.int64(1))[1].shape == (3, 1)


def test_bad_exclude():
    queries, gallery = _q(), _g()
    bad = [
        np.array([0, 1]),
        np.array([0, 1, 2, 3]),
        np.array([0, 1, 5]),
        np.array([0, 1, -1]),
        [[0], [1]],
        [[0], [1], [2], [3]],
        [[0], [1], [7]],
        [[0], [1], [-1]],
        [[0, 5], [], []],
    ]
    for exclude in bad:
        with pytest.raises(ValueError):
            topk(queries, gallery, 2, exclude=exclude)
    with pytest.raises(TypeError):
        topk(queries, gallery, 2, exclude=np.array([0.0, 1.0, 2.0]))


def test_bad_targets_and_mining_args():
    queries, gallery = _q(), _g()
    for targets in ([0, 0, 5], [0, 0, -1], [0, 0], [0, 0, 0, 0]):
        with pytest.raises(ValueError):
            target_rank(queries, gallery, targets)
        with pytest.raises(ValueError):
            mine_from_features(queries, gallery, targets)
    with pytest.raises(TypeError):
        target_rank(queries, gallery, [0.0, 1.0, 2.0])
    targets = [0, 1, 2]
    with pytest.raises(ValueError):
        mine_from_features(queries, gallery, targets, block_size=0)
    with pytest.raises(TypeError):
        mine_from_features(queries, gallery, targets, block_size=2.0)
    with pytest.raises(ValueError):
        mine_from_features(queries, gallery, targets, pairing="nearest")
    with pytest.raises(ValueError):
        mine_from_features(queries, gallery, targets, max_rank=0)
    with pytest.raises(ValueError):
        mine_from_features(queries, gallery, targets, positives=[[0], [1]])
    with pytest.raises(ValueError):
        mine_from_features(queries, gallery, targets, gallery_ids=[0, 1, 2])


def test_complex_features_refused():
    with pytest.raises(TypeError):
        score(_q().astype(np.complex64), _g())
