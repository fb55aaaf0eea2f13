"""Tests of ``qure.mine_negatives`` against a plain reference of its specification."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_mine, released_loop

import qure
from qure import HardNegatives, mine_negatives

PAIRINGS = ("consecutive", "anchored")


# --------------------------------------------------------------------------------------------
# helpers


def assert_matches_reference(result, scores, targets, **kwargs):
    """Checks every field of ``result`` exactly against ``reference_mine``."""
    bands, ranks, drops = reference_mine(scores, targets, **kwargs)
    q = len(ranks)
    assert isinstance(result, HardNegatives)
    assert len(result) == q
    for name in ("indptr", "indices", "target_rank", "drops"):
        assert getattr(result, name).dtype == np.int64, name
    expected_indptr = np.concatenate([[0], np.cumsum([len(b) for b in bands])]).astype(np.int64)
    expected_indices = np.array([g for b in bands for g in b], dtype=np.int64)
    np.testing.assert_array_equal(result.indptr, expected_indptr)
    np.testing.assert_array_equal(result.indices, expected_indices)
    np.testing.assert_array_equal(result.target_rank, np.array(ranks, dtype=np.int64))
    np.testing.assert_array_equal(result.drops, np.array(drops, dtype=np.int64).reshape(q, 2))
    for i in range(q):
        np.testing.assert_array_equal(result[i], np.array(bands[i], dtype=np.int64))


def check(scores, targets, **kwargs):
    result = mine_negatives(scores, targets, **kwargs)
    assert_matches_reference(result, scores, targets, **kwargs)
    return result


def band_of(scores, target, **kwargs):
    """Band, target rank and drops of a single query."""
    result = mine_negatives(np.asarray([scores], dtype=np.float32), [target], **kwargs)
    return result[0].tolist(), int(result.target_rank[0]), tuple(result.drops[0].tolist())


# --------------------------------------------------------------------------------------------
# property tests against the reference

SMALL_VALUES = [-1.0, -0.5, -0.0, 0.0, 0.25, 0.5, 1.0]
MODERATE_FLOATS = st.floats(
    min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32
)


@st.composite
def mining_cases(draw, with_exclusions: bool):
    q = draw(st.integers(1, 6))
    n = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["small", "floats", "clustered"]))
    if kind == "small":
        values = draw(st.lists(st.sampled_from(SMALL_VALUES), min_size=q * n, max_size=q * n))
    elif kind == "floats":
        values = draw(st.lists(MODERATE_FLOATS, min_size=q * n, max_size=q * n))
    else:
        # A few well separated levels with a little jitter: steep drops between levels and ties.
        levels = st.sampled_from([-3.0, -1.0, 0.0, 2.0, 2.5, 7.0])
        jitter = st.sampled_from([0.0, 0.0, 1e-3, -1e-3, 2e-3, 0.01])
        values = draw(st.lists(st.tuples(levels, jitter).map(sum), min_size=q * n, max_size=q * n))
    scores = np.array(values, dtype=np.float32).reshape(q, n)
    targets = draw(st.lists(st.integers(0, n - 1), min_size=q, max_size=q))
    kwargs = {
        "consecutive_threshold": draw(st.integers(0, 4)),
        "pairing": draw(st.sampled_from(PAIRINGS)),
        "max_rank": draw(st.one_of(st.none(), st.integers(1, n + 2))),
    }
    if with_exclusions:
        if draw(st.booleans()):
            kwargs["positives"] = draw(
                st.lists(st.lists(st.integers(0, n - 1), max_size=3), min_size=q, max_size=q)
            )
        if draw(st.booleans()):
            ids = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
            if draw(st.booleans()):
                ids = [f"item-{x}" for x in ids]
            kwargs["gallery_ids"] = ids
    return scores, np.array(targets, dtype=np.int64), kwargs


PROPERTY_SETTINGS = settings(
    deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@settings(PROPERTY_SETTINGS, max_examples=600)
@given(mining_cases(with_exclusions=False))
def test_matches_reference(case):
    scores, targets, kwargs = case
    check(scores, targets, **kwargs)


@settings(PROPERTY_SETTINGS, max_examples=400)
@given(mining_cases(with_exclusions=True))
def test_matches_reference_with_exclusions(case):
    scores, targets, kwargs = case
    check(scores, targets, **kwargs)


def _random_rows(rng, kind, q, n):
    if kind == "normal":
        return rng.standard_normal((q, n)).astype(np.float32)
    if kind == "quantised":
        return (np.round(rng.uniform(-1, 1, (q, n)) * 4) / 4).astype(np.float32)
    if kind == "cubed":
        return (rng.uniform(-1, 1, (q, n)) ** 3).astype(np.float32)
    if kind == "clustered":
        levels = rng.choice([-2.0, 0.0, 0.5, 3.0], size=(q, n))
        return (levels + rng.normal(0, 1e-3, (q, n))).astype(np.float32)
    if kind == "wide":
        signs = rng.choice([-1.0, 1.0], size=(q, n))
        return (signs * 10.0 ** rng.uniform(-30, 30, (q, n))).astype(np.float32)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("seed", "kind"), list(enumerate(["normal", "quantised", "cubed", "clustered", "wide"]))
)
def test_matches_reference_on_longer_rows(seed, kind):
    """Longer rows exercise the steepest-first scan beyond its first few candidates."""
    rng = np.random.default_rng(seed)
    q, n = 12, 300
    scores = _random_rows(rng, kind, q, n)
    targets = rng.integers(0, n // 4, q)
    for pairing in PAIRINGS:
        for threshold in (0, 1, 3, 40):
            for max_rank in (None, 60):
                check(
                    scores,
                    targets,
                    consecutive_threshold=threshold,
                    pairing=pairing,
                    max_rank=max_rank,
                )


def test_deep_drop_scan():
    """The first qualifying pair lies 200 drops deep in the steepest-first order."""
    n_tail = 1000
    drops = np.array([-(1 + j % 7) for j in range(n_tail - 1)], dtype=np.float64)
    drops[:200] = -(1000 - np.arange(200))
    drops[300] = -790
    tail_scores = np.concatenate([[0.0], np.cumsum(drops)]) / 1024  # exact in float32
    perm = np.random.default_rng(5).permutation(n_tail + 1)  # gallery index of each rank
    row = np.empty(n_tail + 1, dtype=np.float32)
    row[perm] = np.concatenate([[1.0], tail_scores])
    target = int(perm[0])
    scores = np.stack([row, row])
    # Steepest drops are 0, 1, ..., 199 (adjacent), then 300: the pair is (199, 300).
    band, rank, chosen = band_of(row, target)
    assert (rank, chosen) == (0, (199, 300))
    assert band == perm[201:302].tolist()
    assert band_of(row, target, pairing="anchored") == (perm[2:4].tolist(), 0, (0, 2))
    for pairing in PAIRINGS:
        for threshold in (0, 1, 150, 400):
            check(scores, [target, perm[500]], consecutive_threshold=threshold, pairing=pairing)


# --------------------------------------------------------------------------------------------
# hand-worked edge cases

# Target 0 scores 16/16; the tail scores (in sixteenths) 14, 8, 7, 6, 5, 1, 0 give exact drops
# -6, -1, -1, -1, -4, -1 at tail positions 0..5.
DYADIC = [16, 14, 8, 7, 6, 5, 1, 0]
DYADIC_ROW = [v / 16 for v in DYADIC]


def test_worked_example():
    band, rank, drops = band_of(DYADIC_ROW, 0)
    # Drop order 0, 4, 1, 2, 3, 5: the first pair (0, 4) is 4 > 1 apart.
    assert (band, rank, drops) == ([2, 3, 4, 5], 0, (0, 4))
    assert band_of(DYADIC_ROW, 0, pairing="anchored") == ([2, 3, 4, 5], 0, (0, 4))
    # threshold 4: (0, 4) is not enough; (4, 1), (1, 2), (2, 3) neither; (3, 5) neither.
    assert band_of(DYADIC_ROW, 0, consecutive_threshold=4) == ([], 0, (-1, -1))
    # anchored with threshold 4: 0 pairs with 5, the first drop more than 4 away.
    assert band_of(DYADIC_ROW, 0, consecutive_threshold=4, pairing="anchored") == (
        [2, 3, 4, 5, 6],
        0,
        (0, 5),
    )


def test_gallery_order_does_not_matter():
    perm = [3, 7, 0, 5, 1, 6, 2, 4]
    row = [DYADIC_ROW[perm.index(g)] for g in range(8)]  # gallery item g holds DYADIC[perm^-1 g]
    band, rank, drops = band_of(row, perm[0])
    assert (band, rank, drops) == ([perm[k] for k in (2, 3, 4, 5)], 0, (0, 4))


def test_max_rank():
    # First 5 tail items: 14, 8, 7, 6, 5 -> drops -6, -1, -1, -1 -> order 0, 1, 2, 3.
    assert band_of(DYADIC_ROW, 0, max_rank=5) == ([], 0, (-1, -1))
    assert band_of(DYADIC_ROW, 0, max_rank=5, pairing="anchored") == ([2, 3], 0, (0, 2))
    for m in (1, 2):
        assert band_of(DYADIC_ROW, 0, max_rank=m) == ([], 0, (-1, -1))
        assert band_of(DYADIC_ROW, 0, max_rank=m, consecutive_threshold=0) == ([], 0, (-1, -1))
    # Three tail items, threshold 0: drops -6, -1 at positions 0 and 1 qualify.
    assert band_of(DYADIC_ROW, 0, max_rank=3, consecutive_threshold=0) == ([2], 0, (0, 1))
    full = band_of(DYADIC_ROW, 0)
    for m in (7, 8, 100):
        assert band_of(DYADIC_ROW, 0, max_rank=m) == full


def test_target_last_and_first():
    row = [0.1, 0.5, 0.9, 0.3]
    assert band_of(row, 0) == ([], 3, (-1, -1))
    assert band_of(row, 2) == ([], 0, (-1, -1))  # tail 1, 3, 0: two drops, adjacent
    assert band_of(row, 2, consecutive_threshold=0) == ([3], 0, (0, 1))


@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("threshold", [0, 1, 2])
def test_tiny_galleries(pairing, threshold):
    kw = {"pairing": pairing, "consecutive_threshold": threshold}
    assert band_of([0.3], 0, **kw) == ([], 0, (-1, -1))
    assert band_of([0.3, 0.7], 0, **kw) == ([], 1, (-1, -1))
    assert band_of([0.3, 0.7], 1, **kw) == ([], 0, (-1, -1))
    for t in range(3):
        # A tail of at most 2 items never has a band.
        assert band_of([0.3, 0.7, 0.1], t, **kw)[0] == []
        assert band_of([0.3, 0.7, 0.1], t, **kw)[2] == (-1, -1)
    # 4 items, target first: tail of 3 items, drops at 0 and 1.
    expected = ([2], 0, (0, 1)) if threshold == 0 else ([], 0, (-1, -1))
    assert band_of([0.9, 0.5, 0.25, 0.0], 0, **kw) == expected
    check(np.array([[0.3], [0.1]], dtype=np.float32), [0, 0], **kw)


def test_all_equal_scores():
    assert band_of([0.5] * 6, 2) == ([], 2, (-1, -1))
    assert band_of([0.5] * 6, 2, consecutive_threshold=0) == ([4], 2, (0, 1))
    # 10 equal scores, target 0: 8 zero drops ordered by position, every consecutive pair is
    # adjacent; anchored pairs 0 with 2.
    assert band_of([0.5] * 10, 0) == ([], 0, (-1, -1))
    assert band_of([0.5] * 10, 0, pairing="anchored") == ([2, 3], 0, (0, 2))
    assert band_of([0.5] * 10, 0, pairing="anchored", consecutive_threshold=4) == (
        [2, 3, 4, 5, 6],
        0,
        (0, 5),
    )
    for t in range(10):
        assert band_of([-0.25] * 10, t)[1] == t


def test_signed_zeros_tie():
    assert band_of([0.0, -0.0, 0.0, 1.0], 1)[1] == 2
    assert band_of([-0.0, 0.0], 0)[1] == 0
    assert band_of([-0.0, 0.0], 1)[1] == 1
    assert band_of([0.0, -0.0], 1)[1] == 1
    # Target 0; the tail 1..5 is all zeros then -1: drops 0, 0, 0, 0, -1.
    row = [1.0, -0.0, 0.0, -0.0, 0.0, 0.0, -1.0]
    assert band_of(row, 0, pairing="anchored") == ([2, 3, 4, 5], 0, (0, 4))
    check(np.array([row, row[::-1]], dtype=np.float32), [0, 3], pairing="anchored")
    check(np.array([row, row[::-1]], dtype=np.float32), [2, 3])


def test_ties_around_target():
    row = [0.5, 0.7, 0.5, 0.5, 0.2, 0.5, 0.1]
    # Ranking 1, 0, 2, 3, 5, 4, 6; target 2 at rank 2; tail 3, 5, 4, 6 with drops
    # 0, -0.3, -0.1 -> order 1, 2, 0; pair (1, 2) is adjacent, (2, 0) -> (0, 2).
    assert band_of(row, 2) == ([5, 4], 2, (0, 2))
    assert band_of(row, 2, pairing="anchored") == ([], 2, (-1, -1))
    assert band_of(row, 0)[1] == 1
    assert band_of(row, 5)[1] == 4
    check(np.array([row] * 7, dtype=np.float32), np.arange(7))


def test_positives_are_removed():
    base = band_of(DYADIC_ROW, 0)[0]
    assert base == [2, 3, 4, 5]
    r = mine_negatives(
        np.array([DYADIC_ROW] * 3, np.float32), [0, 0, 0], positives=[[3], [], [5, 2, 7]]
    )
    assert r[0].tolist() == [2, 4, 5]
    assert r[1].tolist() == [2, 3, 4, 5]
    assert r[2].tolist() == [3, 4]
    # Drops and ranks are those before the exclusions.
    np.testing.assert_array_equal(r.drops, [[0, 4]] * 3)
    np.testing.assert_array_equal(r.sizes, [3, 4, 2])
    # Numpy arrays, tuples, and the target itself are fine as positives.
    r2 = mine_negatives(
        np.array([DYADIC_ROW] * 3, np.float32),
        np.array([0, 0, 0]),
        positives=[np.array([3]), (), np.array([5, 2, 7, 0])],
    )
    assert r2 == r


def test_gallery_ids_remove_duplicates():
    ids = [10, 11, 12, 13, 10, 12, 16, 17]
    # Band 2, 3, 4, 5: 4 shares the target's id, 5 repeats 2's id.
    r = mine_negatives(np.array([DYADIC_ROW], np.float32), [0], gallery_ids=ids)
    assert r[0].tolist() == [2, 3]
    # 3 as a positive: removed too.
    r = mine_negatives(np.array([DYADIC_ROW], np.float32), [0], gallery_ids=ids, positives=[[3]])
    assert r[0].tolist() == [2]
    # A positive outside the band still removes its id: 1 has id 11, make 3 share it.
    ids2 = [10, 11, 12, 11, 14, 15, 16, 17]
    r = mine_negatives(np.array([DYADIC_ROW], np.float32), [0], gallery_ids=ids2, positives=[[1]])
    assert r[0].tolist() == [2, 4, 5]
    # String ids behave the same.
    names = [f"img{x}.jpg" for x in ids]
    r = mine_negatives(np.array([DYADIC_ROW], np.float32), [0], gallery_ids=names)
    assert r[0].tolist() == [2, 3]
    r = mine_negatives(np.array([DYADIC_ROW], np.float32), [0], gallery_ids=np.array(names))
    assert r[0].tolist() == [2, 3]
    # Only the first occurrence (in rank order, not gallery order) of an id is kept.
    perm_row = [1.0, 0.875, 0.5, 0.25, 0.4375, 0.375, 0.0625, 0.0]  # ranking 0 1 2 4 5 3 6 7
    ids3 = [0, 1, 2, 9, 9, 5, 6, 7]
    r = mine_negatives(np.array([perm_row], np.float32), [0], gallery_ids=ids3)
    # Tail 1 2 4 5 3 6 7, scores 14 8 7 6 4 1 0 (sixteenths): drops -6 -1 -1 -2 -3 -1
    # -> order 0 4 3 1 2 5 -> pair (0, 4), band 2 4 5 3; 3 repeats 4's id.
    assert r[0].tolist() == [2, 4, 5]
    check(np.array([perm_row], np.float32), [0], gallery_ids=ids3)


def test_empty_query_set():
    for targets in (np.zeros(0, dtype=np.int64), [], np.zeros(0, dtype=np.int32)):
        r = mine_negatives(np.zeros((0, 5), dtype=np.float32), targets)
        assert len(r) == 0
        assert r.indptr.tolist() == [0]
        assert r.indices.shape == (0,)
        assert r.target_rank.shape == (0,)
        assert r.drops.shape == (0, 2)
        assert r.sizes.shape == (0,)
        assert list(r) == []
        assert "queries=0" in repr(r)
        with pytest.raises(IndexError):
            r[0]


# --------------------------------------------------------------------------------------------
# input types


def _mixed_scores(seed=0, q=8, n=50):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((q, n))
    scores[:, ::5] = np.round(scores[:, ::5], 1)  # some ties
    targets = rng.integers(0, n, q)
    return scores, targets


def test_float64_input():
    scores, targets = _mixed_scores(1)
    r64 = mine_negatives(scores, targets)
    r32 = mine_negatives(scores.astype(np.float32), targets)
    assert r64 == r32
    assert_matches_reference(r64, scores.astype(np.float32), targets)


def test_float16_input():
    scores, targets = _mixed_scores(2)
    s16 = scores.astype(np.float16)  # many ties
    r16 = mine_negatives(s16, targets)
    assert r16 == mine_negatives(s16.astype(np.float32), targets)
    assert_matches_reference(r16, s16.astype(np.float32), targets)


def test_integer_scores_and_target_dtypes():
    scores = np.array([[5, 4, 1, 1, 0, -3, -4]], dtype=np.int32)
    expected = mine_negatives(scores.astype(np.float32), [0])
    assert mine_negatives(scores, [0]) == expected
    for dtype in (np.int8, np.int16, np.int32, np.uint8, np.uint32, np.uint64):
        assert mine_negatives(scores.astype(np.float32), np.array([0], dtype=dtype)) == expected
    assert mine_negatives(scores.astype(np.float32).tolist(), (0,)) == expected


def test_non_contiguous_inputs():
    scores, targets = _mixed_scores(3, q=20, n=60)
    s32 = scores.astype(np.float32)
    expected = mine_negatives(np.ascontiguousarray(s32), targets)
    transposed = np.asfortranarray(s32)
    assert not transposed.flags.c_contiguous
    assert mine_negatives(transposed, targets) == expected
    assert mine_negatives(np.ascontiguousarray(s32.T).T, targets) == expected
    wide = np.zeros((20, 120), dtype=np.float32)
    wide[:, ::2] = s32
    assert mine_negatives(wide[:, ::2], targets) == expected
    tall = np.repeat(s32, 2, axis=0)
    assert mine_negatives(tall[::2], targets) == expected
    reversed_cols = s32[:, ::-1]
    flipped_targets = 59 - targets
    assert mine_negatives(reversed_cols, flipped_targets) == mine_negatives(
        np.ascontiguousarray(reversed_cols), flipped_targets
    )
    t2 = np.repeat(targets, 2)
    assert mine_negatives(s32, t2[::2]) == expected
    # float64, non-contiguous: same as its float32 conversion.
    assert mine_negatives(np.asfortranarray(scores), targets) == expected
    assert_matches_reference(expected, s32, targets)


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    scores, targets = _mixed_scores(4, q=10, n=70)
    s32 = scores.astype(np.float32)
    expected = mine_negatives(s32, targets)
    t32 = torch.from_numpy(s32.copy())
    assert mine_negatives(t32, targets) == expected
    assert mine_negatives(t32, torch.from_numpy(targets)) == expected
    assert mine_negatives(t32, torch.tensor(targets.tolist(), dtype=torch.int32)) == expected
    assert mine_negatives(s32, torch.tensor(targets.tolist())) == expected
    t64 = torch.from_numpy(scores)
    assert mine_negatives(t64, targets) == mine_negatives(t64.float().numpy(), targets)
    assert mine_negatives(t64, targets) == expected
    tbf = t64.to(torch.bfloat16)
    rbf = mine_negatives(tbf, targets)
    converted = tbf.float().numpy()
    assert rbf == mine_negatives(converted, targets)
    assert_matches_reference(rbf, converted, targets)
    t16 = t64.half()
    assert mine_negatives(t16, targets) == mine_negatives(t16.float().numpy(), targets)
    # Non-contiguous tensor and a tensor that requires grad.
    tt = torch.from_numpy(np.ascontiguousarray(s32.T)).T
    assert not tt.is_contiguous()
    assert mine_negatives(tt, targets) == expected
    assert mine_negatives(t32.clone().requires_grad_(True), targets) == expected


def test_torch_exclusions():
    torch = pytest.importorskip("torch")
    r_np = mine_negatives(
        np.array([DYADIC_ROW], np.float32), [0], gallery_ids=[10, 11, 12, 13, 10, 12, 16, 17]
    )
    r_t = mine_negatives(
        torch.tensor([DYADIC_ROW]),
        torch.tensor([0]),
        gallery_ids=torch.tensor([10, 11, 12, 13, 10, 12, 16, 17]),
    )
    assert r_t == r_np
    assert r_t[0].tolist() == [2, 3]


# --------------------------------------------------------------------------------------------
# threads and parity with the released code


def test_thread_count_does_not_change_results(restore_threads):
    rng = np.random.default_rng(11)
    q, n = 300, 2000
    scores = rng.standard_normal((q, n)).astype(np.float32)
    scores[::3] = np.round(scores[::3] * 4) / 4  # heavy ties in every third row
    targets = rng.integers(0, n, q)
    ids = rng.integers(0, n // 2, n)
    positives = [rng.integers(0, n, 3) for _ in range(q)]
    configs = [
        {},
        {"pairing": "anchored", "consecutive_threshold": 3},
        {"max_rank": 100, "gallery_ids": ids, "positives": positives},
    ]
    for kwargs in configs:
        results = []
        for threads in (1, 2, 3):
            qure.set_num_threads(threads)
            assert qure.get_num_threads() == threads
            results.append(mine_negatives(scores, targets, **kwargs))
        assert results[0] == results[1] == results[2]
    # Spot-check a few rows of the last run against the reference.
    rows = [0, 3, 7, 150, 299]
    check(scores[rows], targets[rows], max_rank=100)


def test_parity_with_released_loop():
    rng = np.random.default_rng(2025)
    q, n = 50, 500
    scores = rng.standard_normal((q, n)).astype(np.float32)
    assert all(len(np.unique(row)) == n for row in scores)
    targets = rng.integers(0, n, q)
    found = 0
    for threshold in (1, 2):
        r = mine_negatives(scores, targets, consecutive_threshold=threshold)
        for i in range(q):
            released = released_loop(scores[i], int(targets[i]), threshold)
            if released is None:
                assert r[i].size == 0
                assert r.drops[i].tolist() == [-1, -1]
            else:
                found += 1
                np.testing.assert_array_equal(r[i], released.astype(np.int64))
    assert found > 50


# --------------------------------------------------------------------------------------------
# HardNegatives


@pytest.fixture
def mined():
    scores = np.array([DYADIC_ROW, DYADIC_ROW, [0.5] * 8], np.float32)
    return mine_negatives(scores, [0, 7, 0])


def test_hard_negatives_fields(mined):
    assert len(mined) == 3
    assert mined.indptr.tolist() == [0, 4, 4, 4]
    assert mined.indices.tolist() == [2, 3, 4, 5]
    assert mined.target_rank.tolist() == [0, 7, 0]
    assert mined.drops.tolist() == [[0, 4], [-1, -1], [-1, -1]]
    assert mined.sizes.tolist() == [4, 0, 0]
    assert mined.empty.tolist() == [False, True, True]
    assert mined.drops.shape == (3, 2)


def test_hard_negatives_getitem(mined):
    assert mined[0].dtype == np.int64
    assert mined[0].tolist() == [2, 3, 4, 5]
    assert mined[-3].tolist() == [2, 3, 4, 5]
    assert mined[-1].tolist() == []
    assert mined[np.int64(0)].tolist() == [2, 3, 4, 5]
    for bad in (3, -4, 100):
        with pytest.raises(IndexError):
            mined[bad]
    assert [b.tolist() for b in mined] == [[2, 3, 4, 5], [], []]


def test_hard_negatives_repr(mined):
    text = repr(mined)
    assert "queries=3" in text
    for word in ("mean", "median", "empty"):
        assert word in text
    assert "empty=2" in text


def test_hard_negatives_pickle(mined):
    clone = pickle.loads(pickle.dumps(mined))
    assert clone == mined
    assert isinstance(clone, HardNegatives)
    assert clone[0].tolist() == [2, 3, 4, 5]


def test_hard_negatives_save_load(mined, tmp_path):
    path = tmp_path / "negatives.npz"
    mined.save(path)
    loaded = HardNegatives.load(path)
    assert loaded == mined
    for name in ("indptr", "indices", "target_rank", "drops"):
        assert getattr(loaded, name).dtype == np.int64
    loaded_str = HardNegatives.load(str(path))
    assert loaded_str == mined


def test_hard_negatives_eq(mined):
    scores = np.array([DYADIC_ROW, DYADIC_ROW, [0.5] * 8], np.float32)
    assert mine_negatives(scores, [0, 7, 0]) == mined
    assert mine_negatives(scores, [0, 6, 0]) != mined
    assert mine_negatives(scores, [0, 7, 0], pairing="anchored") != mined
    assert mined != "not negatives"


# --------------------------------------------------------------------------------------------
# bad input

GOOD = np.array([[0.9, 0.5, 0.4, 0.1], [0.2, 0.3, 0.8, 0.0]], dtype=np.float32)


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2), ()])
def test_wrong_ndim(shape):
    with pytest.raises(ValueError, match="scores"):
        mine_negatives(np.zeros(shape, np.float32), [0])


def test_target_shape_and_length():
    with pytest.raises(ValueError, match="target_idx"):
        mine_negatives(GOOD, [0])
    with pytest.raises(ValueError, match="target_idx"):
        mine_negatives(GOOD, [0, 1, 2])
    with pytest.raises(ValueError, match="target_idx"):
        mine_negatives(GOOD, [[0, 1]])


@pytest.mark.parametrize("bad", [4, -1, 100])
def test_target_out_of_range(bad):
    with pytest.raises(ValueError, match="target_idx"):
        mine_negatives(GOOD, [0, bad])


def test_target_not_integer():
    with pytest.raises(TypeError, match="target_idx"):
        mine_negatives(GOOD, np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="target_idx"):
        mine_negatives(GOOD, [0.0, 1.0])


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("row", [0, 3])
def test_non_finite_scores(bad_value, row):
    scores = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    scores[row, 2] = bad_value
    with pytest.raises(ValueError, match=rf"scores row {row}\b"):
        mine_negatives(scores, [0] * 5)
    # Also when the bad value is the target's own score, or ranked before it.
    with pytest.raises(ValueError, match=rf"scores row {row}\b"):
        mine_negatives(scores, [2] * 5)


def test_non_finite_reports_first_row(restore_threads):
    scores = np.random.default_rng(1).standard_normal((64, 30)).astype(np.float32)
    scores[41, 5] = np.nan
    scores[17, 29] = np.inf
    for threads in (1, 3):
        qure.set_num_threads(threads)
        with pytest.raises(ValueError, match=r"scores row 17\b"):
            mine_negatives(scores, np.zeros(64, np.int64))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_float64_overflowing_float32_is_non_finite():
    scores = np.array([[0.5, 1e300, 0.25]])
    with pytest.raises(ValueError, match=r"scores row 0\b"):
        mine_negatives(scores, [0])


def test_threshold_checks():
    with pytest.raises(ValueError, match="consecutive_threshold"):
        mine_negatives(GOOD, [0, 1], consecutive_threshold=-1)
    for bad in (1.5, 1.0, "1", None):
        with pytest.raises(TypeError, match="consecutive_threshold"):
            mine_negatives(GOOD, [0, 1], consecutive_threshold=bad)
    # NumPy integers are integers.
    assert mine_negatives(GOOD, [0, 1], consecutive_threshold=np.int64(1)) == mine_negatives(
        GOOD, [0, 1]
    )


def test_empty_gallery():
    with pytest.raises(ValueError, match="empty"):
        mine_negatives(np.zeros((2, 0), np.float32), [0, 0])
    with pytest.raises(ValueError, match="empty"):
        mine_negatives(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))


def test_non_numeric_scores():
    with pytest.raises(TypeError, match="scores"):
        mine_negatives(np.array([["a", "b"], ["c", "d"]]), [0, 1])
    with pytest.raises(TypeError, match="scores"):
        mine_negatives(np.array([[1.0, None], [0.5, 0.2]], dtype=object), [0, 1])
    with pytest.raises(TypeError, match="scores"):
        mine_negatives(np.ones((2, 3), dtype=np.complex64), [0, 1])


def test_non_numeric_torch_scores():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError):
        mine_negatives(torch.ones((2, 3), dtype=torch.complex64), [0, 1])


def test_unknown_pairing():
    for bad in ("greedy", "Consecutive", ""):
        with pytest.raises(ValueError, match="pairing"):
            mine_negatives(GOOD, [0, 1], pairing=bad)


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_max_rank_too_small(bad):
    with pytest.raises(ValueError, match="max_rank"):
        mine_negatives(GOOD, [0, 1], max_rank=bad)


def test_positives_checks():
    with pytest.raises(ValueError, match="positives"):
        mine_negatives(GOOD, [0, 1], positives=[[1]])
    with pytest.raises(ValueError, match="positives"):
        mine_negatives(GOOD, [0, 1], positives=[[1], [2], [3]])
    for bad in (4, -1, 1000):
        with pytest.raises(ValueError, match="positives"):
            mine_negatives(GOOD, [0, 1], positives=[[1], [2, bad]])


def test_gallery_ids_checks():
    with pytest.raises(ValueError, match="gallery_ids"):
        mine_negatives(GOOD, [0, 1], gallery_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="gallery_ids"):
        mine_negatives(GOOD, [0, 1], gallery_ids=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="gallery_ids"):
        mine_negatives(GOOD, [0, 1], gallery_ids=["a", "b", "c"])


def test_set_num_threads_checks(restore_threads):
    with pytest.raises(ValueError, match="threads"):
        qure.set_num_threads(0)
    with pytest.raises(ValueError, match="threads"):
        qure.set_num_threads(-2)
    with pytest.raises(TypeError):
        qure.set_num_threads(1.5)
