"""Tests of the benchmarks' official metrics (``qure.datasets.cirr``, ``qure.datasets.circo``,
``qure.datasets.fashioniq``): CIRR, CIRCO and FashionIQ.

Every case is worked by hand (the expected fractions are written out); a small brute-force
comparison checks the CIRR ranks with ties.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qure.datasets.circo import circo_map
from qure.datasets.cirr import cirr_average, cirr_recall, cirr_subset_recall
from qure.datasets.fashioniq import fashioniq_recall
from qure.metrics import recall_at_k

# --------------------------------------------------------------------------------------------
# CIRR Recall@K


def test_cirr_recall_removes_the_reference() -> None:
    # query 0: the reference (0) scores highest, the target (2) is 2nd overall -> 1st after removal
    # query 1: the reference (3) is below the target (4), which has 0, 1, 2 ahead -> rank 3
    scores = np.array(
        [
            [0.9, 0.1, 0.8, 0.3, 0.2],
            [0.5, 0.6, 0.7, 0.1, 0.4],
        ]
    )
    target, reference = np.array([2, 4]), np.array([0, 3])
    got = cirr_recall(scores, target, reference, ks=(1, 2, 3, 4))
    assert got == {"R@1": 50.0, "R@2": 50.0, "R@3": 50.0, "R@4": 100.0}
    # without the removal query 0's target would be 2nd: R@1 = 0
    assert recall_at_k(np.array([1, 3]), (1,)) == {"R@1": 0.0}
    assert list(cirr_recall(scores, target, reference)) == ["R@1", "R@5", "R@10", "R@50"]
    assert cirr_recall(scores, target, reference, ks=1) == {"R@1": 50.0}


def test_cirr_recall_ties_by_ascending_index() -> None:
    scores = np.array(
        [
            [0.5, 0.5, 0.5],  # target 1, reference 2: index 0 ties and comes first -> rank 1
            [0.5, 0.5, 0.5],  # target 0, reference 2: rank 0
            [0.5, 0.5, 0.1],  # target 1, reference 0 (tied, ahead) is removed -> rank 0
        ]
    )
    got = cirr_recall(scores, [1, 0, 1], [2, 2, 0], ks=(1, 2))
    assert got["R@1"] == pytest.approx(100.0 * 2 / 3)
    assert got["R@2"] == 100.0


def test_cirr_recall_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    n_queries, n_gallery = 40, 30
    scores = rng.integers(0, 6, size=(n_queries, n_gallery)).astype(np.float32)  # many ties
    target = rng.integers(0, n_gallery, size=n_queries)
    reference = (target + rng.integers(1, n_gallery, size=n_queries)) % n_gallery
    ranks = []
    for q in range(n_queries):
        order = sorted(range(n_gallery), key=lambda i, q=q: (-scores[q, i], i))
        order.remove(int(reference[q]))
        ranks.append(order.index(int(target[q])))
    ks = (1, 3, 10)
    assert cirr_recall(scores, target, reference, ks) == recall_at_k(np.array(ranks), ks)


def test_cirr_recall_no_queries_is_nan() -> None:
    got = cirr_recall(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.int64), ks=(1,))
    assert math.isnan(got["R@1"])


@pytest.mark.parametrize(
    ("scores", "target", "reference", "ks", "match"),
    [
        (np.zeros((2, 3)), [0, 1], [0, 2], (1,), "target .* is the reference"),
        (np.zeros((2, 3)), [0], [1, 2], (1,), "target has 1 entries"),
        (np.zeros((2, 3)), [0, 1], [1], (1,), "reference has 1 entries"),
        (np.zeros((2, 3)), [0, 3], [1, 2], (1,), "target holds 3"),
        (np.zeros((2, 3)), [0, 1], [-1, 2], (1,), "reference holds -1"),
        (np.array([[0.0, np.nan, 1.0]]), [0], [1], (1,), "NaN"),
        (np.zeros(3), [0], [1], (1,), "scores must be 2-D"),
        (np.zeros((1, 3)), [0], [1], (), "at least one cut-off"),
        (np.zeros((1, 3)), [0], [1], (0,), "at least 1"),
    ],
)
def test_cirr_recall_bad_input(scores, target, reference, ks, match) -> None:
    with pytest.raises(ValueError, match=match):
        cirr_recall(scores, np.asarray(target), np.asarray(reference), ks)


# --------------------------------------------------------------------------------------------
# CIRR Recall_subset@K


def subset_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    scores = np.array(
        [
            # members 0..5, reference 0 (highest), target 3 (0.5): only 4 (0.6) is ahead -> 1;
            # 6 and 7 score higher still but are not members (rank 3 over the whole gallery)
            [0.9, 0.1, 0.2, 0.5, 0.6, 0.3, 0.95, 0.99],
            # members 2..7, reference 2, target 7 (0.7): nothing among 3..6 is ahead -> 0
            [0.9, 0.9, 0.8, 0.1, 0.2, 0.3, 0.4, 0.7],
        ]
    )
    return scores, np.array([3, 7]), np.array([0, 2]), [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7]]


def test_cirr_subset_recall_inside_members() -> None:
    scores, target, reference, members = subset_case()
    got = cirr_subset_recall(scores, target, reference, members)
    assert got == {"Rsubset@1": 50.0, "Rsubset@2": 100.0, "Rsubset@3": 100.0}
    # the same members as a (Q, 6) array
    assert cirr_subset_recall(scores, target, reference, np.array(members)) == got
    # over the whole gallery the targets are 4th (7, 6, 4 ahead) and 3rd (0, 1 ahead)
    assert cirr_recall(scores, target, reference, ks=(1, 3, 4)) == {
        "R@1": 0.0,
        "R@3": 50.0,
        "R@4": 100.0,
    }


def test_cirr_subset_recall_reference_removed_and_ties() -> None:
    # reference 0 scores highest; the target 1 would be 2nd if it were kept
    scores = np.array([[0.9, 0.8, 0.1, 0.2]])
    assert cirr_subset_recall(scores, [1], [0], [[0, 1, 2, 3]], ks=1) == {"Rsubset@1": 100.0}
    # members need not contain the reference; a tie with a lower index comes first
    scores = np.array([[0.5, 0.5, 0.5, 0.1]])
    assert cirr_subset_recall(scores, [2], [3], [[1, 2]], ks=(1, 2)) == {
        "Rsubset@1": 0.0,
        "Rsubset@2": 100.0,
    }
    # ragged member lists
    got = cirr_subset_recall(
        np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]), [0, 0], [2, 1], [[0], [0, 2]], ks=1
    )
    assert got == {"Rsubset@1": 100.0}


@pytest.mark.parametrize(
    ("members", "target", "match"),
    [
        ([[0, 1, 2, 4, 4, 5], [2, 3, 4, 5, 6, 7]], [3, 7], "query 0 list the same gallery index"),
        ([[0, 1, 2, 4, 5], [2, 3, 4, 5, 6, 7]], [3, 7], "query 0: the target .3. is not one"),
        ([[0, 1, 2, 3, 4, 5]], [3, 7], "members has 1 rows but scores has 2"),
        ([[0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 8]], [3, 7], "members holds 8"),
    ],
)
def test_cirr_subset_recall_bad_input(members, target, match) -> None:
    scores, _, reference, _ = subset_case()
    with pytest.raises(ValueError, match=match):
        cirr_subset_recall(scores, np.array(target), reference, members)


def test_cirr_average() -> None:
    assert cirr_average({"R@1": 50.0, "R@5": 80.0}, {"Rsubset@1": 70.0}) == 75.0
    # the paper's QuRe row: (82.53 + 78.51) / 2 = 80.52
    assert cirr_average({"R@5": 82.53}, {"Rsubset@1": 78.51}) == pytest.approx(80.52)
    with pytest.raises(ValueError, match="recall has no 'R@5'"):
        cirr_average({"R@1": 1.0}, {"Rsubset@1": 1.0})
    with pytest.raises(ValueError, match="subset has no 'Rsubset@1'"):
        cirr_average({"R@5": 1.0}, {"Rsubset@2": 1.0})


# --------------------------------------------------------------------------------------------
# CIRCO mAP@K


def test_circo_map_hand_worked() -> None:
    ranked = np.array(
        [
            [3, 1, 7, 2, 9, 5],  # gt {3, 7, 9}: relevant at 1, 3, 5
            [0, 4, 1, 2, 3, 5],  # gt {4}: relevant at 2
            [0, 1, 2, 3, 4, 5],  # gt {0..6} (7 ground truths): all relevant
        ]
    )
    gt = [[3, 7, 9], np.array([4]), list(range(7))]
    got = circo_map(ranked, gt, ks=(1, 2, 5))
    # AP@1: 1/min(1,3) * 1 = 1;  0;  1/1 * 1 = 1                       -> mean 2/3
    # AP@2: 1/min(2,3) * 1 = 1/2;  1/min(2,1) * 1/2 = 1/2;  (1+1)/2 = 1 -> mean 2/3
    # AP@5: 1/min(5,3) * (1 + 2/3 + 3/5) = 34/45;  (1/2)/1 = 1/2;  5/min(5,7) = 1
    #       -> mean (34/45 + 1/2 + 1) / 3 = 203/270
    assert list(got) == ["mAP@1", "mAP@2", "mAP@5"]
    assert got["mAP@1"] == pytest.approx(100 * 2 / 3)
    assert got["mAP@2"] == pytest.approx(100 * 2 / 3)  # dividing by |gt| would give 11/18
    assert got["mAP@5"] == pytest.approx(100 * 203 / 270)


def test_circo_map_defaults_padding_and_perfect() -> None:
    ranked = np.arange(50)[None, :]
    assert circo_map(ranked, [[0, 1]]) == {
        "mAP@5": 100.0,
        "mAP@10": 100.0,
        "mAP@25": 100.0,
        "mAP@50": 100.0,
    }
    # padding never counts: gt {2} found at position 3 -> AP@3 = 1/3
    got = circo_map(np.array([[-1, -1, 2]]), [[2]], ks=(2, 3))
    assert got == pytest.approx({"mAP@2": 0.0, "mAP@3": 100 / 3})
    assert math.isnan(circo_map(np.zeros((0, 5), np.int64), [], ks=5)["mAP@5"])


@pytest.mark.parametrize(
    ("ranked", "gt", "match"),
    [
        ([[0, 1, 2]], [[0]], "3 columns, fewer than the largest k=5"),
        ([[0, 1, 1, 3, 4]], [[0]], "row 0 lists the same gallery index twice"),
        ([[0, 1, 2, 3, 4]], [[]], r"gt\[0\] is empty"),
        ([[0, 1, 2, 3, 4]], [[0], [1]], "gt has 2 entries but ranked has 1"),
        ([[0, 1, 2, 3, 4]], [[0, 0]], r"gt\[0\] lists the same gallery index twice"),
        ([[0, 1, 2, 3, 4]], [[-2]], r"gt\[0\] holds a negative"),
        ([[0, -3, 2, 3, 4]], [[0]], "below -1"),
    ],
)
def test_circo_map_bad_input(ranked, gt, match) -> None:
    with pytest.raises(ValueError, match=match):
        circo_map(np.array(ranked), gt, ks=5)


# --------------------------------------------------------------------------------------------
# FashionIQ


def test_fashioniq_recall_hand_worked() -> None:
    got = fashioniq_recall(
        {
            "dress": np.array([0, 12, 60, 5]),  # R@10 2/4, R@50 3/4
            "shirt": [49, 50],  # R@10 0, R@50 1/2
            "toptee": np.array([0]),  # R@10 1, R@50 1
        }
    )
    assert got == {
        "dress_R@10": 50.0,
        "dress_R@50": 75.0,
        "shirt_R@10": 0.0,
        "shirt_R@50": 50.0,
        "toptee_R@10": 100.0,
        "toptee_R@50": 100.0,
        "average_R@10": 50.0,  # (50 + 0 + 100) / 3: categories weigh the same
        "average_R@50": 75.0,  # (75 + 50 + 100) / 3
        "average": 62.5,  # (50 + 75) / 2
    }
    assert fashioniq_recall({"dress": [3]}, ks=1) == {
        "dress_R@1": 0.0,
        "average_R@1": 0.0,
        "average": 0.0,
    }


@pytest.mark.parametrize(
    ("ranks", "match"),
    [
        ({}, "is empty"),
        ({"dress": []}, "'dress' has no queries"),
        ({"dress": [-1]}, "must be >= 0"),
        ({"average": [1]}, "'average' cannot be a category"),
        ({"": [1]}, "non-empty strings"),
    ],
)
def test_fashioniq_recall_bad_input(ranks, match) -> None:
    with pytest.raises(ValueError, match=match):
        fashioniq_recall({k: np.asarray(v, dtype=np.int64) for k, v in ranks.items()})


def test_target_ranks_break_ties_by_index_and_skip_excluded_items():
    from qure.metrics import target_ranks

    scores = np.array([[0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.3]])
    # Row 0: item 1 is ahead of target 2, and so is item 0 (same score, lower index).
    # Row 1: target 1 ties with item 0 (lower index, ahead) and trails item 3.
    np.testing.assert_array_equal(target_ranks(scores, [2, 1]), [2, 2])
    np.testing.assert_array_equal(target_ranks(scores, [2, 1], exclude=[1, 3]), [1, 1])
