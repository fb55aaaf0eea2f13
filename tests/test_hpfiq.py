"""Tests of ``qure.datasets.hpfiq``: the released HP-FashionIQ file, its counts and the
preference rate (QuRe Eq. 8-9) for oracle, constant, random and hand-made scorers."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from qure.datasets import (
    PLACEHOLDER,
    HPFIQJudgement,
    hpfiq_counts,
    hpfiq_preference_rate,
    hpfiq_set_scores,
    load_hpfiq,
)

# The released file is not shipped: its checks run when QURE_HPFIQ names it.
HPFIQ_FILE = Path(os.environ.get("QURE_HPFIQ", "/nonexistent/hpfiq.json"))
# A synthetic file in the released format (tests/fixtures/make_fixtures.py), always here.
SMALL_FILE = Path(__file__).resolve().parent / "fixtures" / "hpfiq" / "hpfiq.json"


@pytest.fixture(scope="module")
def judgements() -> list[HPFIQJudgement]:
    if "QURE_HPFIQ" not in os.environ:
        pytest.skip("set QURE_HPFIQ=/path/to/hpfiq.json to check the released HP-FashionIQ file")
    if not HPFIQ_FILE.exists():
        pytest.fail(f"QURE_HPFIQ names {HPFIQ_FILE}, which does not exist")
    return load_hpfiq(HPFIQ_FILE)


@pytest.fixture(scope="module")
def small() -> list[HPFIQJudgement]:
    return load_hpfiq(SMALL_FILE)


# --------------------------------------------------------------------------------------------
# the synthetic fixture: 4 users x 2 question sets x 5 questions, a fixed cycle of
# (Likert 1, Likert 2, preferred): (4, 2, 1), (2, 5, 2), (3, 3, 1), (3, 3, 2), (5, 1, 2)


def test_small_counts(small) -> None:
    assert hpfiq_counts(small) == {
        "judgements": 40,
        "users": 4,
        "categories": {"shirt": 20, "toptee": 20},
        "set1_preferred": 16,
        "set2_preferred": 24,
        "likert_ties": 16,
        "likert_contradictions": 8,
        "consistent": 16,
    }
    assert [j.question for j in small[:6]] == [
        *(f"question_set_1/{i}" for i in range(5)),
        "question_set_2/0",
    ]


def test_small_oracle_and_constant_rates(small) -> None:
    likert = np.array([[j.likert1, j.likert2] for j in small], dtype=np.float64)
    got = hpfiq_preference_rate(small, likert)
    # Likert 1 > 2 in the (4, 2, 1) and (5, 1, 2) judgements, 8 each: 8 of 16 agree (Eq. 9);
    # strictly ordered: those and (2, 5, 2), 24 in all, of which 16 agree
    assert (got["pairs_eq9"], got["preference_rate"]) == (16, 50.0)
    assert got["pairs_symmetric"] == 24
    assert got["symmetric_rate"] == pytest.approx(100 * 16 / 24)
    assert got["model_ties"] == 16
    assert got["preference_rate_consistent"] == got["symmetric_rate_consistent"] == 100.0
    flat = hpfiq_preference_rate(small, lambda reference, text, paths: [1.0] * len(paths))
    assert flat["model_ties"] == 40 and math.isnan(flat["preference_rate"])


def test_small_image_root(small) -> None:
    rooted = load_hpfiq(SMALL_FILE, image_root="/data/fiq")
    assert rooted[0].reference == "/data/fiq/image_data/shirt/R10.jpg"
    assert rooted[-1].set2[4] == "/data/fiq/image_data/toptee/B244.jpg"
    assert [j.text for j in rooted] == [j.text for j in small]


# --------------------------------------------------------------------------------------------
# the released file


def test_released_counts(judgements) -> None:
    assert hpfiq_counts(judgements) == {
        "judgements": 3050,
        "users": 61,
        "categories": {"shirt": 1800, "toptee": 1250},
        "set1_preferred": 1641,
        "set2_preferred": 1409,
        "likert_ties": 774,
        "likert_contradictions": 32,
        "consistent": 3050 - 774 - 32,
    }


def test_released_fields(judgements) -> None:
    first = judgements[0]
    assert (first.user, first.question, first.category) == ("user_1", "question_set_1/0", "shirt")
    assert first.reference == "/-/image_data/shirt/B000LUIBH8.jpg"
    assert first.target == "/-/image_data/shirt/B007RJG5BU.jpg"
    assert first.text == "is blue colored and a logo  and has short sleeves"
    assert first.set1[0] == "/-/image_data/shirt/B000WNEK7Y.jpg"
    assert (first.likert1, first.likert2, first.preferred) == (4, 5, 2)
    # 61 users x 2 question sets x 25 questions, in file order
    assert Counter(j.user for j in judgements) == {f"user_{u}": 50 for u in range(1, 62)}
    assert judgements[-1].question == "question_set_2/24"
    for j in judgements:
        assert len(j.set1) == len(j.set2) == 5
        assert {j.likert1, j.likert2} <= {1, 2, 3, 4, 5}
        # every image of a question lies in its category's folder
        for path in (j.reference, j.target, *j.set1, *j.set2):
            assert path.startswith(f"{PLACEHOLDER}image_data/{j.category}/")


def test_image_root_replaces_the_placeholder(judgements) -> None:
    for root in ("/data/fashioniq/", "/data/fashioniq"):
        rooted = load_hpfiq(HPFIQ_FILE, image_root=root)
        assert len(rooted) == len(judgements)
        first = rooted[0]
        assert first.reference == "/data/fashioniq/image_data/shirt/B000LUIBH8.jpg"
        assert first.target == "/data/fashioniq/image_data/shirt/B007RJG5BU.jpg"
        assert all(p.startswith("/data/fashioniq/image_data/") for p in first.set1 + first.set2)
        assert (first.category, first.likert2) == ("shirt", 5)
    assert load_hpfiq(HPFIQ_FILE, image_root=Path("/x"))[0].set2[0].startswith("/x/image_data/")


# --------------------------------------------------------------------------------------------
# preference rate on the released file


def likert_array(judgements) -> np.ndarray:
    return np.array([[j.likert1, j.likert2] for j in judgements], dtype=np.float64)


def test_oracle_rates(judgements) -> None:
    got = hpfiq_preference_rate(judgements, likert_array(judgements))
    # Likert 1 > Likert 2 in 1,149 judgements, 15 of them with Set 2 preferred (contradictions);
    # Likert strictly ordered in 3,050 - 774 = 2,276, contradicting the preference in 32
    assert got["pairs_eq9"] == 1149
    assert got["preference_rate"] == pytest.approx(100 * 1134 / 1149)
    assert got["pairs_symmetric"] == 2276
    assert got["symmetric_rate"] == pytest.approx(100 * 2244 / 2276)
    assert got["model_ties"] == 774
    # consistent judgements agree with the Likert order by definition
    assert got["pairs_eq9_consistent"] == 1134
    assert got["pairs_symmetric_consistent"] == 2244
    assert got["preference_rate_consistent"] == got["symmetric_rate_consistent"] == 100.0
    assert (got["judgements"], got["consistent"]) == (3050, 2244)


def test_oracle_scorer_matches_precomputed(judgements) -> None:
    # an image scorer returning a set's Likert rating for each of its images; a few queries
    # recur with other ratings (other users, or the same images in both sets), leave those out
    ratings: dict[tuple, set] = {}
    for j in judgements:
        ratings.setdefault((j.reference, j.text, j.set1), set()).add(j.likert1)
        ratings.setdefault((j.reference, j.text, j.set2), set()).add(j.likert2)
    clear = [
        j
        for j in judgements
        if len(ratings[j.reference, j.text, j.set1])
        == len(ratings[j.reference, j.text, j.set2])
        == 1
    ]
    assert len(judgements) - len(clear) == 2

    def oracle(reference, text, paths):
        (rating,) = ratings[reference, text, tuple(paths)]
        return np.full(len(paths), rating, dtype=np.float32)

    np.testing.assert_array_equal(hpfiq_set_scores(clear, oracle), likert_array(clear))
    got = hpfiq_preference_rate(clear, oracle)
    assert got == hpfiq_preference_rate(clear, likert_array(clear))
    assert got["preference_rate"] > 98 and got["symmetric_rate"] > 98


def test_constant_scorer_ties_everything(judgements) -> None:
    got = hpfiq_preference_rate(judgements, lambda reference, text, paths: [0.5] * len(paths))
    assert got["model_ties"] == 3050
    assert got["pairs_eq9"] == got["pairs_symmetric"] == 0
    assert got["pairs_eq9_consistent"] == got["pairs_symmetric_consistent"] == 0
    for key in ("preference_rate", "symmetric_rate"):
        assert math.isnan(got[key]) and math.isnan(got[f"{key}_consistent"])


def hashed(reference: str, text: str, paths) -> list[float]:
    """A deterministic pseudo-random score in [0, 1) per (query, image)."""
    return [
        int.from_bytes(
            hashlib.blake2b(f"{reference}|{text}|{p}".encode(), digest_size=8).digest(), "big"
        )
        / 2.0**64
        for p in paths
    ]


def test_random_scorer_is_near_chance(judgements) -> None:
    got = hpfiq_preference_rate(judgements, hashed)
    assert got == hpfiq_preference_rate(judgements, hashed)  # deterministic
    # 11 questions show the same five images in both sets: any image-level scorer ties them
    same = sum(set(j.set1) == set(j.set2) for j in judgements)
    assert same == 11 and got["model_ties"] == 11
    assert got["pairs_symmetric"] == 3050 - 11
    assert 45 < got["symmetric_rate"] < 55
    assert 45 < got["symmetric_rate_consistent"] < 55
    # Eq. 9 conditions on the model picking Set 1, so a random model scores the share of
    # judgements preferring Set 1 (1,641 / 3,050 = 53.8 %), not 50 %
    assert abs(got["preference_rate"] - 100 * 1641 / 3050) < 5
    assert 45 < got["preference_rate_consistent"] < 58


# --------------------------------------------------------------------------------------------
# hand-made judgements


def judgement(n: int, preferred: int, likert: tuple[int, int], s1, s2) -> HPFIQJudgement:
    """A judgement whose image paths carry their model score after a colon ("a:0.9")."""
    return HPFIQJudgement(
        user=f"u{n % 2}",
        question=f"q/{n}",
        category="shirt" if n < 4 else "toptee",
        reference=f"ref{n}",
        target=f"tgt{n}",
        text="is red",
        set1=tuple(f"a{n}:{v}" for v in s1),
        set2=tuple(f"b{n}:{v}" for v in s2),
        likert1=likert[0],
        likert2=likert[1],
        preferred=preferred,
    )


HAND = [
    judgement(1, 1, (5, 2), (1.0, 0.8), (0.0, 0.2)),  # model 1st, agrees
    judgement(2, 1, (3, 3), (0.6, 0.6), (0.5, 0.5)),  # model 1st, agrees; Likert tie
    judgement(3, 2, (2, 4), (0.7, 0.7), (0.1, 0.3)),  # model 1st, disagrees
    judgement(4, 2, (1, 5), (0.1, 0.1), (0.9, 0.9)),  # model 2nd, agrees
    judgement(5, 1, (4, 5), (0.2, 0.2), (0.4, 0.4)),  # model 2nd, disagrees; contradiction
    judgement(6, 1, (5, 1), (0.25, 0.75), (0.75, 0.25)),  # model tie (same values, other order)
]


def from_path(reference: str, text: str, paths) -> np.ndarray:
    return np.array([float(p.split(":")[1]) for p in paths])


def test_hand_made_counts_and_rates() -> None:
    assert hpfiq_counts(HAND) == {
        "judgements": 6,
        "users": 2,
        "categories": {"shirt": 3, "toptee": 3},
        "set1_preferred": 4,
        "set2_preferred": 2,
        "likert_ties": 1,
        "likert_contradictions": 1,
        "consistent": 4,
    }
    np.testing.assert_allclose(
        hpfiq_set_scores(HAND, from_path),
        [[0.9, 0.1], [0.6, 0.5], [0.7, 0.2], [0.1, 0.9], [0.2, 0.4], [0.5, 0.5]],
    )
    got = hpfiq_preference_rate(HAND, from_path)
    assert got == pytest.approx(
        {
            "preference_rate": 100
            * 2
            / 3,  # model Set 1 first: #1, #2, #3; Set 1 preferred: #1, #2
            "symmetric_rate": 100 * 3 / 5,  # strict: #1-#5; agree: #1, #2, #4
            "pairs_eq9": 3,
            "pairs_symmetric": 5,
            "model_ties": 1,
            "preference_rate_consistent": 100 * 1 / 2,  # without #2, #5: #1, #3 -> #1
            "symmetric_rate_consistent": 100 * 2 / 3,  # #1, #3, #4 -> #1, #4
            "pairs_eq9_consistent": 2,
            "pairs_symmetric_consistent": 3,
            "judgements": 6,
            "consistent": 4,
        }
    )
    assert hpfiq_preference_rate(HAND, hpfiq_set_scores(HAND, from_path)) == got
    empty = hpfiq_preference_rate([], from_path)
    assert empty["pairs_eq9"] == 0 and math.isnan(empty["preference_rate"])


@pytest.mark.parametrize(
    ("score_fn", "error", "match"),
    [
        (
            lambda r, t, p: [0.0] * (len(p) + 1),
            ValueError,
            r"user 'u1', question 'q/1'.*shape \(3,\)",
        ),
        (lambda r, t, p: np.zeros((len(p), 1)), ValueError, "expected"),
        (lambda r, t, p: [math.nan] * len(p), ValueError, "NaN"),
        (lambda r, t, p: ["x"] * len(p), ValueError, "non-numeric"),
        (np.zeros((5, 2)), ValueError, r"shape \(5, 2\), expected \(6, 2\)"),
        (np.full((6, 2), np.inf), ValueError, "NaN or infinite"),
        ("scores", TypeError, "callable"),
    ],
)
def test_preference_rate_bad_scores(score_fn, error, match) -> None:
    with pytest.raises(error, match=match):
        hpfiq_preference_rate(HAND, score_fn)


# --------------------------------------------------------------------------------------------
# malformed files


def question_set(n: int = 2) -> dict:
    return {
        "ref_img_paths": [f"/-/image_data/toptee/R{i}.jpg" for i in range(n)],
        "targ_img_paths": [f"/-/image_data/toptee/T{i}.jpg" for i in range(n)],
        "sentences": ["is red  and has a logo"] * n,
        "retrieved_set1": [
            {"img_path": [f"/-/image_data/toptee/A{i}{k}.jpg" for k in range(5)], "user_score": "4"}
            for i in range(n)
        ],
        "retrieved_set2": [
            {"img_path": [f"/-/image_data/toptee/B{i}{k}.jpg" for k in range(5)], "user_score": 2}
            for i in range(n)
        ],
        "preferred set": ["1", 2][:n],
    }


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "hpfiq.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_small_file(tmp_path: Path) -> None:
    got = load_hpfiq(write(tmp_path, {"alice": {"qs": question_set()}}), image_root="/fiq")
    assert [j.question for j in got] == ["qs/0", "qs/1"]
    assert [(j.likert1, j.likert2, j.preferred) for j in got] == [(4, 2, 1), (4, 2, 2)]
    assert got[1].reference == "/fiq/image_data/toptee/R1.jpg" and got[1].category == "toptee"


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_hpfiq(missing)


def broken(change) -> dict:
    block = question_set()
    change(block)
    return {"alice": {"qs": block}}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "mapping users"),
        ({"alice": []}, "user 'alice' must map"),
        ({"alice": {"qs": []}}, "user 'alice', question set 'qs' must be an object"),
        (broken(lambda b: b.pop("sentences")), "question set 'qs' lacks 'sentences'"),
        (broken(lambda b: b["sentences"].pop()), "lists differ in length"),
        (broken(lambda b: b.__setitem__("preferred set", "12")), "'preferred set' must be a list"),
        (broken(lambda b: b["preferred set"].__setitem__(1, "3")), "question 'qs/1'.*1 or 2"),
        (
            broken(lambda b: b["retrieved_set2"][0].__setitem__("user_score", "7")),
            "user 'alice', question 'qs/0': retrieved_set2.user_score must be a number from 1",
        ),
        (
            broken(lambda b: b["retrieved_set1"][1].__setitem__("user_score", "good")),
            "question 'qs/1': retrieved_set1.user_score",
        ),
        (broken(lambda b: b["retrieved_set1"][0].pop("img_path")), "'img_path' and 'user_score'"),
        (broken(lambda b: b["retrieved_set1"][0].__setitem__("img_path", [])), "non-empty list"),
        (broken(lambda b: b["sentences"].__setitem__(0, None)), "'sentences' must hold strings"),
        (
            broken(lambda b: b["ref_img_paths"].__setitem__(0, 3)),
            "ref_img_paths must be a non-empty",
        ),
        (broken(lambda b: b["ref_img_paths"].__setitem__(0, "/-/R.jpg")), "no category directory"),
        (
            broken(lambda b: b["targ_img_paths"].__setitem__(1, "/data/toptee/T.jpg")),
            "question 'qs/1': targ_img_paths '/data/toptee/T.jpg' does not start with",
        ),
    ],
)
def test_malformed_file(tmp_path: Path, data, match) -> None:
    with pytest.raises(ValueError, match=match):
        load_hpfiq(write(tmp_path, data), image_root="/fiq")
