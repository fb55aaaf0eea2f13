"""Tests of ``qure.metrics``: hand-worked cases, properties against per-query loops, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qure
from qure.metrics import (
    band_stats,
    false_negative_rate,
    ndcg_at_k,
    preference_agreement,
    preference_rate,
    ranked_without_reference,
    recall_at_k,
    set_scores,
    summarize,
)

LOG2_3 = math.log2(3.0)  # discount of position 1 is 1 / log2(3); position 0: 1, position 2: 1/2


def hard_negatives(rows):
    """A ``qure.HardNegatives`` holding ``rows`` (lists of gallery indices)."""
    sizes = [len(r) for r in rows]
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    indices = np.array([i for r in rows for i in r], dtype=np.int64)
    q = len(rows)
    return qure.HardNegatives(
        indptr=indptr,
        indices=indices,
        target_rank=np.zeros(q, dtype=np.int64),
        drops=np.full((q, 2), -1, dtype=np.int64),
    )


# --------------------------------------------------------------------------------------------
# hand-worked cases


def test_recall_hand_case():
    out = recall_at_k(np.array([0, 3, 12, 60]))
    assert out == {"R@1": 25.0, "R@5": 50.0, "R@10": 50.0, "R@50": 75.0}
    assert list(out) == ["R@1", "R@5", "R@10", "R@50"]
    assert recall_at_k([0, 1, 2], ks=2) == {"R@2": pytest.approx(200.0 / 3)}
    assert recall_at_k([4], ks=(5, 4)) == {"R@5": 100.0, "R@4": 0.0}
    assert math.isnan(recall_at_k(np.zeros(0, dtype=np.int64), ks=(1,))["R@1"])


def test_ndcg_hand_case():
    relevance = np.array(
        [
            [3.0, 2.0, 0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],  # nothing relevant: skipped
        ]
    )
    ranked = np.array(
        [
            [2, 0, 3, 4],  # gains 0, 3, 1 at positions 0, 1, 2
            [1, -1, -1, -1],  # padding gains nothing
            [0, 1, 2, 3],
        ]
    )
    # row 0: DCG = 0 + 3/log2(3) + 1/2; IDCG from the top 3 values 3, 2, 1 = 3 + 2/log2(3) + 1/2
    row0 = (3 / LOG2_3 + 0.5) / (3 + 2 / LOG2_3 + 0.5)
    assert row0 == pytest.approx(0.5024905201686705, abs=1e-15)
    # row 1: DCG = IDCG = 1
    assert ndcg_at_k(ranked, relevance, k=3) == pytest.approx((row0 + 1.0) / 2, abs=1e-15)
    # k=1: row 0 retrieves gain 0 of an ideal 3; row 1 is perfect
    assert ndcg_at_k(ranked, relevance, k=1) == pytest.approx(0.5, abs=1e-15)


def test_ndcg_padding_first_and_k_beyond_gallery():
    relevance = np.array([[0.0, 2.0]])
    # padding at position 0, the relevant item at position 1: (2/log2(3)) / 2
    assert ndcg_at_k(np.array([[-1, 1, 0]]), relevance, k=2) == pytest.approx(1 / LOG2_3)
    # k larger than the gallery: the ideal list is the whole (2-item) row
    assert ndcg_at_k(np.array([[1, 0, -1]]), relevance, k=3) == pytest.approx(1.0)
    # only the first k columns are read (a duplicate further right is not looked at)
    assert ndcg_at_k(np.array([[1, 0, 1]]), relevance, k=2) == pytest.approx(1.0)


def test_ndcg_all_rows_skipped_is_nan():
    assert math.isnan(ndcg_at_k(np.array([[0, 1]]), np.zeros((1, 3)), k=2))
    assert math.isnan(ndcg_at_k(np.zeros((0, 2), dtype=np.int64), np.zeros((0, 3)), k=2))
    assert math.isnan(ndcg_at_k(np.full((2, 1), -1), np.zeros((2, 0)), k=1))


FN_RELEVANCE = np.array(
    [
        [0.0, 0.9, 0.1, 0.5, 0.0, 0.0],
        [0.7, 0.0, 0.0, 0.0, 0.0, 0.2],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    ]
)
FN_ROWS = [[1, 2, 3], [0, 5], []]


def test_false_negative_rate_hand_case():
    # threshold 0.5: row 0 -> 0.9 yes, 0.1 no, 0.5 yes (>=); row 1 -> 0.7 yes, 0.2 no; row 2 empty
    # pooled: 3 of 5 negatives (a per-query mean would give (2/3 + 1/2) / 2 instead)
    negatives = hard_negatives(FN_ROWS)
    assert false_negative_rate(negatives, FN_RELEVANCE, 0.5) == pytest.approx(0.6)
    assert false_negative_rate(FN_ROWS, FN_RELEVANCE, 0.5) == pytest.approx(0.6)
    as_arrays = [np.array(r, dtype=np.int32) for r in FN_ROWS]
    assert false_negative_rate(as_arrays, FN_RELEVANCE, 0.5) == pytest.approx(0.6)
    assert false_negative_rate(negatives, FN_RELEVANCE, 0.95) == 0.0
    assert false_negative_rate(negatives, FN_RELEVANCE, 0.0) == 1.0


def test_false_negative_rate_no_negatives_is_nan():
    assert math.isnan(false_negative_rate(hard_negatives([[], []]), np.ones((2, 3)), 0.5))
    assert math.isnan(false_negative_rate([[], []], np.ones((2, 3)), 0.5))


def test_false_negative_rate_on_mined_bands():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((8, 50)).astype(np.float32)
    targets = rng.integers(0, 50, 8)
    negatives = qure.mine_negatives(scores, targets)
    relevance = rng.uniform(0, 1, (8, 50))
    expected = [relevance[q, i] >= 0.3 for q, band in enumerate(negatives) for i in band]
    got = false_negative_rate(negatives, relevance, 0.3)
    if expected:
        assert got == pytest.approx(np.mean(expected))
    else:
        assert math.isnan(got)
    assert band_stats(negatives)["band_mean"] == pytest.approx(negatives.sizes.mean())


def test_band_stats_hand_case():
    rows = [[1, 2, 3], [], [7], [0, 1, 2, 3]]  # sizes 3, 0, 1, 4
    expected = {
        "band_mean": 2.0,
        "band_std": math.sqrt((1 + 4 + 1 + 4) / 4),
        "band_median": 2.0,
        "band_empty": 0.25,
    }
    for negatives in (rows, hard_negatives(rows)):
        assert band_stats(negatives) == pytest.approx(expected)
    assert all(math.isnan(v) for v in band_stats([]).values())


def test_set_scores_hand_case():
    scores = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 0.0, 0.0, 5.0]])
    sets = np.array([[0, 3], [0, 0]])
    np.testing.assert_array_equal(set_scores(scores, sets), [2.5, 10.0])


def test_set_scores_tie_independent_of_order():
    # (0.1 + 0.2) + 0.7 == 1.0 but (0.7 + 0.2) + 0.1 == 0.9999999999999999 in float64
    scores = np.array([[0.1, 0.2, 0.7]])
    a = set_scores(scores, [[0, 1, 2]])
    b = set_scores(scores, [[2, 1, 0]])
    assert a[0] == b[0]
    out = preference_rate(scores, [[0, 1, 2]], [[2, 1, 0]], np.array([[0.0, 1.0, 0.0]]))
    assert out["model_ties"] == 1 and out["oracle_ties"] == 1 and out["pairs"] == 0


# Sets A = items {0, 1}, B = items {2, 3} for every query.
PREF_MODEL = np.array(
    [
        [1.0, 1.0, 0.0, 0.0],  # q0: model A > B
        [1.0, 1.0, 0.0, 0.0],  # q1: model A > B
        [0.0, 0.0, 1.0, 1.0],  # q2: model B > A
        [1.0, 1.0, 0.0, 0.0],  # q3: model A > B
        [1.0, 0.0, 0.0, 1.0],  # q4: model tie
    ]
)
PREF_ORACLE = np.array(
    [
        [1.0, 1.0, 0.0, 0.0],  # q0: oracle A > B  -> agrees
        [0.0, 0.0, 1.0, 1.0],  # q1: oracle B > A  -> disagrees
        [0.0, 0.0, 1.0, 1.0],  # q2: oracle B > A  -> agrees (counted only when symmetric)
        [1.0, 0.0, 1.0, 0.0],  # q3: oracle tie    -> never counted
        [1.0, 1.0, 0.0, 0.0],  # q4: oracle A > B  -> never counted (model tie)
    ]
)
PREF_A = np.tile([0, 1], (5, 1))
PREF_B = np.tile([2, 3], (5, 1))


def test_preference_rate_eq9_vs_symmetric():
    eq9 = preference_rate(PREF_MODEL, PREF_A, PREF_B, PREF_ORACLE, symmetric=False)
    # model A > B and oracle not tied: q0 (agree), q1 (disagree) -> 1/2
    assert eq9 == {"preference_rate": 50.0, "pairs": 2, "model_ties": 1, "oracle_ties": 1}
    sym = preference_rate(PREF_MODEL, PREF_A, PREF_B, PREF_ORACLE)
    # both strict: q0 (agree), q1 (disagree), q2 (agree) -> 2/3
    assert sym == {
        "preference_rate": pytest.approx(200.0 / 3),
        "pairs": 3,
        "model_ties": 1,
        "oracle_ties": 1,
    }
    # swapping A and B: Eq. 9 now conditions on B > A (only q2, which agrees)
    swapped = preference_rate(PREF_MODEL, PREF_B, PREF_A, PREF_ORACLE, symmetric=False)
    assert swapped == {"preference_rate": 100.0, "pairs": 1, "model_ties": 1, "oracle_ties": 1}


def test_preference_rate_no_pairs_is_nan():
    out = preference_rate(np.ones((2, 3)), [[0], [1]], [[1], [2]], np.ones((2, 3)))
    assert math.isnan(out["preference_rate"])
    assert out == {
        "preference_rate": out["preference_rate"],
        "pairs": 0,
        "model_ties": 2,
        "oracle_ties": 2,
    }


def test_preference_rate_sets_of_different_sizes():
    model = np.array([[3.0, 1.0, 2.0]])
    oracle = np.array([[1.0, 0.0, 0.0]])
    # A = {0}: model 3, oracle 1; B = {1, 2}: model 1.5, oracle 0 -> agree
    out = preference_rate(model, [[0]], [[1, 2]], oracle, symmetric=False)
    assert out == {"preference_rate": 100.0, "pairs": 1, "model_ties": 0, "oracle_ties": 0}


def test_summarize():
    assert summarize([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(1.25)))
    assert summarize([1.0, float("nan"), 3.0]) == pytest.approx((2.0, 1.0))
    assert summarize((5,)) == (5.0, 0.0)
    for empty in ([], [float("nan")]):
        mean, std = summarize(empty)
        assert math.isnan(mean) and math.isnan(std)


# --------------------------------------------------------------------------------------------
# properties against straightforward per-query loops

PROPERTY_SETTINGS = settings(
    deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
GRADES = st.sampled_from([0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 3.0])


def reference_ndcg(ranked, relevance, k):
    values = []
    for row, rel in zip(ranked, relevance):
        dcg = sum(
            float(rel[idx]) / math.log2(pos + 2) for pos, idx in enumerate(row[:k]) if idx >= 0
        )
        ideal = sorted((float(r) for r in rel), reverse=True)[:k]
        idcg = sum(g / math.log2(pos + 2) for pos, g in enumerate(ideal))
        if idcg > 0:
            values.append(dcg / idcg)
    return sum(values) / len(values) if values else math.nan


@st.composite
def ndcg_cases(draw):
    q = draw(st.integers(1, 5))
    g = draw(st.integers(1, 12))
    k = draw(st.integers(1, 8))
    width = k + draw(st.integers(0, 3))
    relevance = np.array(draw(st.lists(GRADES, min_size=q * g, max_size=q * g))).reshape(q, g)
    rows = []
    for _ in range(q):
        items = draw(st.lists(st.integers(0, g - 1), unique=True, max_size=width))
        rows.append(draw(st.permutations(items + [-1] * (width - len(items)))))
    return np.array(rows, dtype=np.int64).reshape(q, width), relevance, k


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(ndcg_cases())
def test_ndcg_matches_loop(case):
    ranked, relevance, k = case
    got = ndcg_at_k(ranked, relevance, k=k)
    expected = reference_ndcg(ranked.tolist(), relevance.tolist(), k)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert 0.0 <= got <= 1.0 + 1e-12


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(
    st.lists(st.integers(0, 80), max_size=30),
    st.lists(st.integers(1, 100), min_size=1, max_size=5),
)
def test_recall_matches_loop(ranks, ks):
    got = recall_at_k(np.array(ranks, dtype=np.int64), ks=ks)
    assert list(got) == list(dict.fromkeys(f"R@{k}" for k in ks))
    for k in ks:
        if ranks:
            expected = 100.0 * sum(1 for r in ranks if r < k) / len(ranks)
            assert got[f"R@{k}"] == pytest.approx(expected)
        else:
            assert math.isnan(got[f"R@{k}"])


@st.composite
def band_cases(draw):
    q = draw(st.integers(0, 6))
    g = draw(st.integers(1, 10))
    relevance = np.array(draw(st.lists(GRADES, min_size=q * g, max_size=q * g))).reshape(q, g)
    rows = [draw(st.lists(st.integers(0, g - 1), max_size=6)) for _ in range(q)]
    threshold = draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, 10.0]))
    return rows, relevance, threshold


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(band_cases(), st.booleans())
def test_band_metrics_match_loop(case, as_hard_negatives):
    rows, relevance, threshold = case
    negatives = hard_negatives(rows) if as_hard_negatives else rows
    flags = [relevance[q][i] >= threshold for q, row in enumerate(rows) for i in row]
    got = false_negative_rate(negatives, relevance, threshold)
    if flags:
        assert got == pytest.approx(sum(flags) / len(flags))
    else:
        assert math.isnan(got)
    stats = band_stats(negatives)
    sizes = [len(r) for r in rows]
    if not sizes:
        assert all(math.isnan(v) for v in stats.values())
        return
    mean = sum(sizes) / len(sizes)
    assert stats["band_mean"] == pytest.approx(mean)
    assert stats["band_std"] == pytest.approx(
        math.sqrt(sum((s - mean) ** 2 for s in sizes) / len(sizes))
    )
    srt = sorted(sizes)
    mid = len(srt) // 2
    median = srt[mid] if len(srt) % 2 else (srt[mid - 1] + srt[mid]) / 2
    assert stats["band_median"] == pytest.approx(median)
    assert stats["band_empty"] == pytest.approx(sum(s == 0 for s in sizes) / len(sizes))


def reference_preference(model, set_a, set_b, relevance, symmetric):
    agree = pairs = model_ties = oracle_ties = 0
    for q in range(len(model)):
        # sorted before summing, as set_scores does, so equal multisets give equal means
        ma = sum(sorted(model[q][i] for i in set_a[q])) / len(set_a[q])
        mb = sum(sorted(model[q][i] for i in set_b[q])) / len(set_b[q])
        oa = sum(sorted(relevance[q][i] for i in set_a[q])) / len(set_a[q])
        ob = sum(sorted(relevance[q][i] for i in set_b[q])) / len(set_b[q])
        model_ties += ma == mb
        oracle_ties += oa == ob
        if oa == ob or ma == mb or (not symmetric and ma < mb):
            continue
        pairs += 1
        agree += (ma > mb) == (oa > ob)
    rate = 100.0 * agree / pairs if pairs else math.nan
    return rate, pairs, model_ties, oracle_ties


@st.composite
def preference_cases(draw):
    q = draw(st.integers(1, 6))
    g = draw(st.integers(1, 8))
    s_a = draw(st.integers(1, 3))
    s_b = draw(st.integers(1, 3))
    # few distinct values, so that ties in both the model and the oracle are common
    model = draw(st.lists(st.sampled_from([-1.0, 0.0, 0.25, 1.0]), min_size=q * g, max_size=q * g))
    relevance = draw(st.lists(GRADES, min_size=q * g, max_size=q * g))
    idx = st.integers(0, g - 1)
    set_a = draw(st.lists(st.lists(idx, min_size=s_a, max_size=s_a), min_size=q, max_size=q))
    set_b = draw(st.lists(st.lists(idx, min_size=s_b, max_size=s_b), min_size=q, max_size=q))
    return (
        np.array(model).reshape(q, g),
        np.array(set_a),
        np.array(set_b),
        np.array(relevance).reshape(q, g),
    )


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(preference_cases(), st.booleans())
def test_preference_rate_matches_loop(case, symmetric):
    model, set_a, set_b, relevance = case
    got = preference_rate(model, set_a, set_b, relevance, symmetric=symmetric)
    rate, pairs, model_ties, oracle_ties = reference_preference(
        model.tolist(), set_a.tolist(), set_b.tolist(), relevance.tolist(), symmetric
    )
    assert (got["pairs"], got["model_ties"], got["oracle_ties"]) == (
        pairs,
        model_ties,
        oracle_ties,
    )
    if pairs:
        assert got["preference_rate"] == pytest.approx(rate)
    else:
        assert math.isnan(got["preference_rate"])
    np.testing.assert_allclose(
        set_scores(model, set_a), [np.mean(model[q, set_a[q]]) for q in range(len(model))]
    )


# --------------------------------------------------------------------------------------------
# torch tensors


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    assert recall_at_k(torch.tensor([0, 3, 12, 60])) == recall_at_k(np.array([0, 3, 12, 60]))
    ranked = torch.tensor([[2, 0, 3], [1, -1, -1]])
    relevance = torch.tensor([[3.0, 2.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]])
    relevance.requires_grad_(True)
    assert ndcg_at_k(ranked, relevance, k=3) == pytest.approx(
        ndcg_at_k(ranked.numpy(), relevance.detach().numpy(), k=3)
    )
    rows = [torch.tensor(r, dtype=torch.int64) for r in FN_ROWS]
    fn_relevance = torch.from_numpy(FN_RELEVANCE).to(torch.float32)
    assert false_negative_rate(rows, fn_relevance, 0.5) == pytest.approx(0.6)
    model = torch.from_numpy(PREF_MODEL).to(torch.bfloat16)
    out = preference_rate(
        model, torch.from_numpy(PREF_A), torch.from_numpy(PREF_B), torch.from_numpy(PREF_ORACLE)
    )
    assert out["pairs"] == 3 and out["preference_rate"] == pytest.approx(200.0 / 3)
    np.testing.assert_array_equal(
        set_scores(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[0, 3]])), [2.5]
    )
    assert summarize(torch.tensor([1.0, float("nan"), 3.0])) == pytest.approx((2.0, 1.0))


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: recall_at_k([0, 1], ks=(0,)), "at least 1"),
        (lambda: recall_at_k([0, -1]), ">= 0"),
        (lambda: recall_at_k([[0, 1]]), "1-D"),
        (lambda: recall_at_k([0, 1], ks=()), "at least one"),
        (lambda: ndcg_at_k([[0, 1]], [[1.0, 0.0]], k=0), "at least 1"),
        (lambda: ndcg_at_k([[0, 1]], [[1.0, 0.0], [0.0, 1.0]], k=1), "rows"),
        (lambda: ndcg_at_k([[0, 1]], [[1.0, 0.0]], k=3), "fewer than k"),
        (lambda: ndcg_at_k([[0, 1]], [[1.0, -0.5]], k=2), ">= 0"),
        (lambda: ndcg_at_k([[0, 1]], [[1.0, float("nan")]], k=2), "NaN"),
        (lambda: ndcg_at_k([[0, 2]], [[1.0, 0.0]], k=2), "outside"),
        (lambda: ndcg_at_k([[0, -2]], [[1.0, 0.0]], k=2), "outside"),
        (lambda: ndcg_at_k([[1, 1]], [[1.0, 0.0]], k=2), "twice"),
        (lambda: ndcg_at_k([0, 1], [[1.0, 0.0]], k=2), "2-D"),
        (lambda: false_negative_rate([[0]], np.ones((2, 3)), 0.5), "queries"),
        (lambda: false_negative_rate([[0]], [[1.0, -1.0]], 0.5), ">= 0"),
        (lambda: false_negative_rate([[5]], np.ones((1, 3)), 0.5), "outside"),
        (lambda: false_negative_rate([[0]], np.ones((1, 3)), float("nan")), "finite"),
        (lambda: set_scores(np.ones((2, 3)), [[0]]), "rows"),
        (lambda: set_scores(np.ones((1, 3)), np.zeros((1, 0), dtype=np.int64)), "at least"),
        (lambda: set_scores(np.ones((1, 3)), [[3]]), "outside"),
        (lambda: preference_rate(np.ones((2, 3)), [[0], [1]], [[1]], np.ones((2, 3))), "rows"),
        (lambda: preference_rate(np.ones((2, 3)), [[0]] * 2, [[1]] * 2, np.ones((2, 4))), "shape"),
        (lambda: preference_rate(np.ones((1, 2)), [[0]], [[1]], [[0.0, -1.0]]), ">= 0"),
        (lambda: summarize([[1.0, 2.0]]), "1-D"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="integers"):
        recall_at_k([0.0, 1.5])
    with pytest.raises(TypeError, match="integer"):
        recall_at_k([0, 1], ks=(1.5,))
    with pytest.raises(TypeError, match="integers"):
        ndcg_at_k([[0.0, 1.0]], [[1.0, 0.0]], k=1)
    with pytest.raises(TypeError, match="integer"):
        ndcg_at_k([[0, 1]], [[1.0, 0.0]], k=True)
    with pytest.raises(TypeError, match="HardNegatives"):
        false_negative_rate(3, np.ones((1, 3)), 0.5)


def test_inconsistent_csr_raises_value_error():
    class Csr:
        indptr = np.array([0, 3, 2])
        indices = np.array([0, 1])

    with pytest.raises(ValueError, match="indptr"):
        band_stats(Csr())


# --------------------------------------------------------------------------------------------
# the shared cores: ranking without the reference, preference agreement


def _ranked_by_sorting(scores: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Top-k by a full sort (score descending, ties by index), the reference left out."""
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for q, row in enumerate(scores):
        order = [
            i for i in sorted(range(row.size), key=lambda i: (-row[i], i)) if i != reference[q]
        ]
        out[q, : min(k, len(order))] = order[:k]
    return out


@pytest.mark.parametrize("k", [1, 3, 8, 12])
def test_ranked_without_reference_matches_a_full_sort(k):
    rng = np.random.default_rng(k)
    queries = rng.integers(-2, 3, size=(6, 4)).astype(np.float32)  # many tied scores
    gallery = rng.integers(-2, 3, size=(9, 2, 4)).astype(np.float32)
    reference = np.array([0, 3, 8, 9, 12, 4])  # 9 and 12 are not in the gallery
    scores = qure.score(queries, gallery)
    got = ranked_without_reference(queries, gallery, reference, k)
    assert got.dtype == np.int64 and got.shape == (6, k)
    np.testing.assert_array_equal(got, _ranked_by_sorting(scores, reference, k))


def test_ranked_without_reference_bad_input():
    with pytest.raises(ValueError, match="at least 1"):
        ranked_without_reference(np.ones((1, 2)), np.ones((3, 2)), [0], 0)
    with pytest.raises(TypeError, match="integers"):
        ranked_without_reference(np.ones((1, 2)), np.ones((3, 2)), [0.5], 2)


@pytest.mark.parametrize("symmetric", [True, False])
def test_preference_rate_is_preference_agreement_on_set_scores(symmetric):
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(50, 12)).astype(np.float64)
    relevance = rng.integers(0, 3, size=(50, 12)).astype(np.float64)
    a, b = rng.integers(0, 12, size=(50, 3)), rng.integers(0, 12, size=(50, 2))
    expected = preference_agreement(
        set_scores(scores, a),
        set_scores(scores, b),
        set_scores(relevance, a),
        set_scores(relevance, b),
        symmetric=symmetric,
    )
    assert preference_rate(scores, a, b, relevance, symmetric=symmetric) == expected


def test_preference_agreement_hand_worked():
    # model prefers A, B, A, tie; oracle prefers A, A, tie, B
    model_a, model_b = [2.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]
    oracle_a, oracle_b = [1.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.5, 1.0]
    sym = preference_agreement(model_a, model_b, oracle_a, oracle_b)
    assert sym == {"preference_rate": 50.0, "pairs": 2, "model_ties": 1, "oracle_ties": 1}
    eq9 = preference_agreement(model_a, model_b, oracle_a, oracle_b, symmetric=False)
    assert eq9 == {"preference_rate": 100.0, "pairs": 1, "model_ties": 1, "oracle_ties": 1}
    with pytest.raises(ValueError, match="one entry per query"):
        preference_agreement([1.0], [0.0, 1.0], [1.0], [0.0])
