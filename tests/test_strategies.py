"""The miner toolkit: candidate sets, positive-aware filters and selections, against the plain
reference in ``tests/reference.py``, from score matrices and from features."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_strategy

import qure
from qure import HardNegatives, mine_from_features, mine_negatives

PROPERTY_SETTINGS = settings(
    deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
LEVELS = [-3.0, -1.0, -0.5, 0.0, 0.25, 2.0, 2.5, 7.0]


@st.composite
def strategy_cases(draw):
    q = draw(st.integers(1, 5))
    n = draw(st.integers(2, 40))
    levels = st.sampled_from(LEVELS)
    jitter = st.sampled_from([0.0, 0.0, 1e-3, -1e-3, 0.01, 0.3])
    values = draw(st.lists(st.tuples(levels, jitter).map(sum), min_size=q * n, max_size=q * n))
    scores = np.array(values, dtype=np.float32).reshape(q, n)
    targets = np.array(draw(st.lists(st.integers(0, n - 1), min_size=q, max_size=q)))
    strategy = draw(st.sampled_from(["band", "topk", "window"]))
    kwargs: dict = {"strategy": strategy}
    if strategy != "topk" and draw(st.booleans()):
        kwargs["max_rank"] = draw(st.integers(1, n + 2))
    if strategy == "band":
        kwargs["consecutive_threshold"] = draw(st.integers(0, 3))
        kwargs["pairing"] = draw(st.sampled_from(["consecutive", "anchored"]))
    elif draw(st.booleans()):
        start = draw(st.integers(0, n))
        end = draw(st.one_of(st.none(), st.integers(start + 1, n + 3)))
        kwargs["rank_range"] = (start, end)
    for name in ("margin", "relative_margin", "max_score", "min_score"):
        if draw(st.booleans()):
            kwargs[name] = draw(st.sampled_from([-1.0, 0.0, 0.05, 0.1, 0.5, 2.0]))
    kwargs["reference"] = draw(st.sampled_from(["target", "lowest_positive"]))
    if draw(st.booleans()):
        kwargs["num_negatives"] = draw(st.integers(1, 8))
    if draw(st.booleans()):
        kwargs["positives"] = draw(
            st.lists(st.lists(st.integers(0, n - 1), max_size=3), min_size=q, max_size=q)
        )
    if draw(st.booleans()):
        kwargs["gallery_ids"] = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    return scores, targets, kwargs


def expected(scores, targets, kwargs):
    rows = []
    for i, (row, t) in enumerate(zip(scores, targets)):
        one = dict(kwargs)
        if "positives" in one:
            one["positives"] = one["positives"][i]
        rows.append(reference_strategy(row, int(t), **one))
    return rows


def assert_matches(result: HardNegatives, scores, targets, kwargs):
    rows = expected(scores, targets, kwargs)
    assert len(result) == len(rows)
    removed = dict.fromkeys(result.removed, 0)
    for i, row in enumerate(rows):
        assert result[i].tolist() == row["kept"], i
        np.testing.assert_array_equal(
            result.scores[result.indptr[i] : result.indptr[i + 1]],
            scores[i, row["kept"]] + np.float32(0.0),
        )
        assert result.target_rank[i] == row["rank"]
        assert result.target_score[i] == scores[i, targets[i]]
        for key, count in row["removed"].items():
            removed[key] += count
    assert result.removed == removed
    if kwargs["strategy"] != "band":
        assert (result.drops == -1).all()


@settings(PROPERTY_SETTINGS, max_examples=500)
@given(strategy_cases())
def test_strategies_match_the_reference(case):
    scores, targets, kwargs = case
    assert_matches(mine_negatives(scores, targets, **kwargs), scores, targets, kwargs)


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(strategy_cases(), st.integers(1, 7), st.sampled_from([1, 2, 3]))
def test_features_match_the_matrix_for_any_block_and_threads(case, block, threads):
    scores, targets, kwargs = case
    q, n = scores.shape
    # Features whose scores are exact: one-hot queries against a gallery holding the scores.
    queries = np.eye(q, dtype=np.float32)
    gallery = np.ascontiguousarray(scores.T)
    assert np.array_equal(qure.score(queries, gallery), scores)
    before = qure.get_num_threads()
    try:
        qure.set_num_threads(threads)
        got = mine_from_features(queries, gallery, targets, block_size=block, **kwargs)
    finally:
        qure.set_num_threads(before)
    assert_matches(got, scores, targets, kwargs)
    assert got == mine_negatives(scores, targets, **kwargs)


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(strategy_cases(), st.sampled_from(["random", "simans"]), st.integers(0, 3))
def test_random_selections_are_seeded_subsets_of_the_survivors(case, sampling, seed):
    scores, targets, kwargs = case
    k = kwargs.pop("num_negatives", 3)
    everything = expected(scores, targets, kwargs)
    got = mine_negatives(
        scores, targets, num_negatives=k, sampling=sampling, seed=seed, simans=(3.0, -0.5), **kwargs
    )
    again = mine_negatives(
        scores, targets, num_negatives=k, sampling=sampling, seed=seed, simans=(3.0, -0.5), **kwargs
    )
    assert got == again
    for i, row in enumerate(everything):
        kept = got[i].tolist()
        assert len(kept) == min(k, len(row["kept"]))
        assert set(kept) <= set(row["kept"])
        order = [row["kept"].index(g) for g in kept]
        assert order == sorted(order), "kept items stay in rank order"


def test_uniform_sampling_is_uniform_and_simans_prefers_its_peak():
    # One query, 10 survivors at distinct scores; over seeds, "random" picks each equally often
    # and "simans" picks those near the target score minus b most often.
    scores = np.array([[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]], np.float32)
    counts = np.zeros(11)
    peak = np.zeros(11)
    for seed in range(3000):
        counts[
            mine_negatives(
                scores, [0], strategy="topk", num_negatives=2, sampling="random", seed=seed
            )[0]
        ] += 1
        peak[
            mine_negatives(
                scores,
                [0],
                strategy="topk",
                num_negatives=1,
                sampling="simans",
                simans=(50.0, -0.5),
                seed=seed,
            )[0]
        ] += 1
    observed = counts[1:]
    chi2 = ((observed - 600.0) ** 2 / 600.0).sum()
    assert chi2 < 27.9, observed  # 99.9% quantile of chi-square with 9 degrees of freedom
    assert peak.argmax() == 5  # score 0.5 = target 1.0 + b (-0.5)
    weights = np.exp(-50.0 * (scores[0, 1:] - 0.5) ** 2)
    np.testing.assert_allclose(peak[1:] / 3000, weights / weights.sum(), atol=0.03)


def test_percpos_like_sentence_transformers():
    """TopK-PercPos: the first survivors of ``s <= r - |r| * 0.05``, sign-safe."""
    scores = np.array(
        [[1.0, 0.99, 0.96, 0.94, 0.5, -2.0], [-1.0, -1.02, -1.06, -0.5, -3.0, 0.0]], np.float32
    )
    got = mine_negatives(scores, [0, 0], strategy="topk", relative_margin=0.05, num_negatives=2)
    assert got[0].tolist() == [3, 4]  # 0.99 and 0.96 are within 5% of 1.0
    # r = -1: threshold -1.05, so -0.5, 0.0 and -1.02 go; -1.06 and -3.0 stay.
    assert got[1].tolist() == [2, 4]
    assert got.removed["relative_margin"] == 2 + 3


def test_stats_and_records():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((6, 30)).astype(np.float32)
    targets = np.arange(6)
    mined = mine_negatives(scores, targets, strategy="topk", num_negatives=3, relative_margin=0.1)
    stats = mined.stats()
    assert stats["queries"] == 6
    assert stats["scores"]["negative"]["count"] == len(mined.indices)
    assert stats["scores"]["positive"]["count"] == 6
    rows = np.repeat(np.arange(6), mined.sizes)
    np.testing.assert_allclose(
        stats["scores"]["difference"]["mean"],
        float(np.mean(mined.target_score[rows] - mined.scores)),
        rtol=1e-6,
    )
    assert stats["removed"]["relative_margin"] == mined.removed["relative_margin"]
    assert "Difference" in mined.format_stats()
    names = [f"doc{i}" for i in range(30)]
    anchors = [f"q{i}" for i in range(6)]
    triplets = mined.to_records("triplet", targets, anchors=anchors, documents=names)
    assert len(triplets["negative"]) == len(mined.indices)
    assert triplets["positive"][0] == "doc0" and triplets["anchor"][0] == "q0"
    tuples = mined.to_records("n-tuple", targets, scores=True)
    full = mined.sizes >= 3
    assert len(tuples["anchor"]) == int(full.sum()) and "negative_3" in tuples
    assert len(tuples["scores"][0]) == 4
    pairs = mined.to_records("labeled-pair", targets)
    assert sum(pairs["label"]) == 6 and len(pairs["label"]) == 6 + len(mined.indices)
    lists = mined.to_records("labeled-list", targets, scores=True)
    assert all(len(d) == len(s) for d, s in zip(lists["positive"], lists["scores"]))
    with pytest.raises(ValueError, match="format"):
        mined.to_records("quadruplet", targets)


def test_scores_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((4, 20)).astype(np.float32)
    mined = mine_negatives(scores, [0, 1, 2, 3], max_score=0.5)
    mined.save(tmp_path / "b.npz")
    back = HardNegatives.load(tmp_path / "b.npz")
    assert back == mined
    np.testing.assert_array_equal(back.scores, mined.scores)
    np.testing.assert_array_equal(back.target_score, mined.target_score)
    assert back.removed == mined.removed


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"strategy": "bm25"}, ValueError, "strategy"),
        ({"strategy": "band", "rank_range": (0, 3)}, ValueError, "rank_range"),
        ({"strategy": "topk", "max_rank": 3}, ValueError, "max_rank"),
        ({"strategy": "topk", "rank_range": (3, 3)}, ValueError, "rank_range end"),
        ({"strategy": "topk", "rank_range": 3}, TypeError, "rank_range"),
        ({"margin": float("nan")}, ValueError, "margin"),
        ({"relative_margin": "5%"}, TypeError, "relative_margin"),
        ({"num_negatives": 0}, ValueError, "num_negatives"),
        ({"sampling": "hardest"}, ValueError, "sampling"),
        ({"simans": (0.0, 0.0)}, ValueError, "simans"),
        ({"reference": "mean"}, ValueError, "reference"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_settings(kwargs, error, match):
    scores = np.zeros((2, 5), np.float32)
    with pytest.raises(error, match=match):
        mine_negatives(scores, [0, 1], **kwargs)


def test_a_split_query_set_draws_what_the_whole_set_draws():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((9, 50)).astype(np.float32)
    targets = rng.integers(0, 50, 9)
    kwargs = {"strategy": "topk", "num_negatives": 3, "sampling": "random", "seed": 5}
    whole = mine_negatives(scores, targets, **kwargs)
    tail = mine_negatives(scores[4:], targets[4:], first_query=4, **kwargs)
    for i in range(5):
        assert tail[i].tolist() == whole[4 + i].tolist()
    shifted = mine_negatives(scores[4:], targets[4:], **kwargs)
    assert any(shifted[i].tolist() != whole[4 + i].tolist() for i in range(5))


@pytest.mark.parametrize("strategy", ["topk", "window"])
def test_short_windows_of_long_rows(strategy):
    """A window much shorter than the row keeps only a running buffer of candidates."""
    rng = np.random.default_rng(4)
    scores = np.round(rng.standard_normal((6, 3000)) * 20).astype(np.float32)  # many ties
    targets = rng.integers(0, 3000, 6)
    kwargs = {"strategy": strategy, "rank_range": (3, 40), "relative_margin": 0.02}
    if strategy == "window":
        kwargs["max_rank"] = 35
    assert_matches(mine_negatives(scores, targets, **kwargs), scores, targets, kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_rank": 30},
        {"max_rank": 30, "relative_margin": 0.01, "num_negatives": 5, "sampling": "random"},
        {"max_rank": 30, "strategy": "window", "rank_range": (2, 20), "margin": 0.0},
        {"strategy": "topk", "rank_range": (0, 25), "reference": "lowest_positive"},
        {"strategy": "topk", "rank_range": (3, 25), "relative_margin": 0.05, "num_negatives": 4},
        {"strategy": "topk", "rank_range": (0, 43), "num_negatives": 4, "sampling": "simans"},
    ],
)
def test_streamed_windows_from_features_equal_the_matrix(kwargs):
    """With a short window ``mine_from_features`` streams each query's window instead of its
    score row; every miner must still equal mining the whole matrix."""
    rng = np.random.default_rng(7)
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    gallery = rng.standard_normal((2000, 2, 16)).astype(np.float32)
    targets = rng.integers(0, 2000, 40)
    positives = [rng.integers(0, 2000, 2) for _ in range(40)]
    got = mine_from_features(queries, gallery, targets, positives=positives, **kwargs)
    want = mine_negatives(qure.score(queries, gallery), targets, positives=positives, **kwargs)
    assert got == want
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.target_score, want.target_score)
    assert got.removed == want.removed
