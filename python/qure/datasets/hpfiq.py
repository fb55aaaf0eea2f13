"""HP-FashionIQ: the human-preference judgements released with QuRe (ICML 2025).

The released file (``hpfiq.json``) maps each of 61 users to two question sets
(``"question_set_1"``, ``"question_set_2"``); a question set holds 25 questions as parallel lists:

* ``"ref_img_paths"`` / ``"targ_img_paths"``: the reference and annotated target image,
* ``"sentences"``: the modification text (FashionIQ's two captions joined by ``" and "``),
* ``"retrieved_set1"`` / ``"retrieved_set2"``: ``{"img_path": [5 paths], "user_score": "1".."5"}``,
  the two retrieved top-5 sets and the user's Likert rating of each,
* ``"preferred set"``: ``"1"`` or ``"2"``, the set the user preferred.

Image paths start with the placeholder ``"/-/"`` (e.g. ``"/-/image_data/shirt/B000LUIBH8.jpg"``);
:func:`load_hpfiq` can replace it with the local FashionIQ root. :func:`hpfiq_preference_rate`
scores both sets with a model and reports the paper's preference rate (Eq. 8-9) and a symmetric
variant.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Union

import numpy as np

from ..metrics import preference_agreement

__all__ = [
    "PLACEHOLDER",
    "HPFIQJudgement",
    "hpfiq_counts",
    "hpfiq_preference_rate",
    "hpfiq_set_scores",
    "load_hpfiq",
]

PLACEHOLDER = "/-/"
"""Prefix of every image path in the released file, standing for the FashionIQ root."""

_LISTS = (
    "ref_img_paths",
    "targ_img_paths",
    "sentences",
    "retrieved_set1",
    "retrieved_set2",
    "preferred set",
)

ScoreFn = Callable[[str, str, Sequence[str]], Any]
"""``score_fn(reference_path, text, image_paths)`` -> one model score per image path."""


@dataclass(frozen=True)
class HPFIQJudgement:
    """One user's judgement of one HP-FashionIQ question.

    Attributes:
        user: the user key, e.g. ``"user_1"``.
        question: ``"{question set}/{index}"`` with a 0-based index, e.g. ``"question_set_1/0"``.
        category: the FashionIQ category (``"shirt"`` or ``"toptee"``), from the reference path.
        reference: path of the reference image.
        target: path of the annotated FashionIQ target image.
        text: the modification text.
        set1, set2: the paths of the two retrieved sets (5 images each in the released file).
        likert1, likert2: the user's ratings (1-5) of the two sets.
        preferred: ``1`` or ``2``, the set the user preferred.
    """

    user: str
    question: str
    category: str
    reference: str
    target: str
    text: str
    set1: tuple[str, ...]
    set2: tuple[str, ...]
    likert1: Union[int, float]
    likert2: Union[int, float]
    preferred: int


# --------------------------------------------------------------------------------------------
# loading


def _where(user: str, question: str) -> str:
    return f"user {user!r}, question {question!r}"


def _path(value: Any, what: str, where: str, image_root: str | None) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {what} must be a non-empty path string, got {value!r}")
    if image_root is None:
        return value
    if not value.startswith(PLACEHOLDER):
        raise ValueError(
            f"{where}: {what} {value!r} does not start with the placeholder {PLACEHOLDER!r}"
        )
    return os.path.join(image_root, value[len(PLACEHOLDER) :])


def _likert(value: Any, what: str, where: str) -> Union[int, float]:
    if isinstance(value, bool):
        raise ValueError(f"{where}: {what} must be a number from 1 to 5, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} must be a number from 1 to 5, got {value!r}") from None
    if not (1.0 <= number <= 5.0):  # also refuses NaN
        raise ValueError(f"{where}: {what} must be a number from 1 to 5, got {value!r}")
    return int(number) if number.is_integer() else number


def _retrieved(
    value: Any, what: str, where: str, image_root: str | None
) -> tuple[tuple[str, ...], Union[int, float]]:
    if not isinstance(value, dict) or "img_path" not in value or "user_score" not in value:
        raise ValueError(
            f"{where}: {what} must be an object with 'img_path' and 'user_score', got "
            f"{str(value)[:80]}"
        )
    paths = value["img_path"]
    if not isinstance(paths, list) or not paths:
        raise ValueError(f"{where}: {what}.img_path must be a non-empty list of paths")
    images = tuple(
        _path(p, f"{what}.img_path[{i}]", where, image_root) for i, p in enumerate(paths)
    )
    return images, _likert(value["user_score"], f"{what}.user_score", where)


def _preferred(value: Any, where: str) -> int:
    if isinstance(value, bool) or str(value).strip() not in ("1", "2"):
        raise ValueError(f"{where}: 'preferred set' must be 1 or 2, got {value!r}")
    return int(str(value).strip())


def _question_set(user: str, key: str, block: Any, image_root: str | None) -> list[HPFIQJudgement]:
    where = f"user {user!r}, question set {key!r}"
    if not isinstance(block, dict):
        raise ValueError(f"{where} must be an object of parallel lists, got {type(block).__name__}")
    missing = [name for name in _LISTS if name not in block]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(repr(m) for m in missing)}")
    for name in _LISTS:
        if not isinstance(block[name], list):
            raise ValueError(f"{where}: {name!r} must be a list, got {type(block[name]).__name__}")
    lengths = {name: len(block[name]) for name in _LISTS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{where}: the lists differ in length: {lengths}")
    out = []
    for i in range(lengths["sentences"]):
        question = f"{key}/{i}"
        at = _where(user, question)
        raw_reference = block["ref_img_paths"][i]
        reference = _path(raw_reference, "ref_img_paths", at, image_root)
        category = PurePosixPath(raw_reference).parent.name
        if category in ("", PLACEHOLDER.strip("/")):
            raise ValueError(f"{at}: no category directory in the reference {raw_reference!r}")
        text = block["sentences"][i]
        if not isinstance(text, str):
            raise ValueError(f"{at}: 'sentences' must hold strings, got {text!r}")
        set1, likert1 = _retrieved(block["retrieved_set1"][i], "retrieved_set1", at, image_root)
        set2, likert2 = _retrieved(block["retrieved_set2"][i], "retrieved_set2", at, image_root)
        out.append(
            HPFIQJudgement(
                user=user,
                question=question,
                category=category,
                reference=reference,
                target=_path(block["targ_img_paths"][i], "targ_img_paths", at, image_root),
                text=text,
                set1=set1,
                set2=set2,
                likert1=likert1,
                likert2=likert2,
                preferred=_preferred(block["preferred set"][i], at),
            )
        )
    return out


def load_hpfiq(
    path: str | os.PathLike[str], *, image_root: str | os.PathLike[str] | None = None
) -> list[HPFIQJudgement]:
    """Reads the released HP-FashionIQ file into one :class:`HPFIQJudgement` per judgement.

    Args:
        path: the ``hpfiq.json`` file.
        image_root: when given, the ``"/-/"`` placeholder at the start of every image path is
            replaced by this directory (e.g. ``"/data/fashioniq/"``); a path without the
            placeholder is then an error.

    Returns:
        The judgements in file order (users, then question sets, then questions).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not JSON or an entry is malformed (the message names the user
            and question).
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"HP-FashionIQ file not found: {file}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected an object mapping users to question sets")
    root = None if image_root is None else os.fspath(image_root)
    judgements: list[HPFIQJudgement] = []
    for user, sets in data.items():
        if not isinstance(sets, dict):
            raise ValueError(
                f"user {user!r} must map question-set names to question sets, got "
                f"{type(sets).__name__}"
            )
        for key, block in sets.items():
            judgements.extend(_question_set(str(user), str(key), block, root))
    return judgements


# --------------------------------------------------------------------------------------------
# statistics


def _contradicts(j: HPFIQJudgement) -> bool:
    """The Likert ratings strictly order the sets against the stated preference."""
    if j.preferred == 1:
        return j.likert1 < j.likert2
    return j.likert1 > j.likert2


def _consistent(j: HPFIQJudgement) -> bool:
    """Neither a Likert tie nor a contradiction: the ratings agree with the preference."""
    return j.likert1 != j.likert2 and not _contradicts(j)


def hpfiq_counts(judgements: Sequence[HPFIQJudgement]) -> dict[str, Any]:
    """Summary counts of a list of judgements.

    Returns:
        ``"judgements"``, ``"users"`` (distinct), ``"categories"`` (``{category: count}``),
        ``"set1_preferred"``, ``"set2_preferred"``, ``"likert_ties"`` (``likert1 == likert2``),
        ``"likert_contradictions"`` (the Likert order contradicts the preference: Set 1
        preferred but ``likert1 < likert2``, or Set 2 preferred but ``likert1 > likert2``) and
        ``"consistent"`` (neither a tie nor a contradiction).
    """
    return {
        "judgements": len(judgements),
        "users": len({j.user for j in judgements}),
        "categories": dict(sorted(Counter(j.category for j in judgements).items())),
        "set1_preferred": sum(j.preferred == 1 for j in judgements),
        "set2_preferred": sum(j.preferred == 2 for j in judgements),
        "likert_ties": sum(j.likert1 == j.likert2 for j in judgements),
        "likert_contradictions": sum(_contradicts(j) for j in judgements),
        "consistent": sum(_consistent(j) for j in judgements),
    }


# --------------------------------------------------------------------------------------------
# preference rate


def _set_score(score_fn: ScoreFn, j: HPFIQJudgement, images: tuple[str, ...], name: str) -> float:
    raw = score_fn(j.reference, j.text, list(images))
    if hasattr(raw, "detach"):  # torch tensor
        raw = raw.detach().cpu().float().numpy()
    values = np.asarray(raw)
    where = _where(j.user, j.question)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{where}: score_fn returned non-numeric scores (dtype {values.dtype})")
    if values.shape != (len(images),):
        raise ValueError(
            f"{where}: score_fn returned shape {tuple(np.shape(raw))} for the {len(images)} "
            f"images of {name}; expected ({len(images)},)"
        )
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{where}: score_fn returned NaN or infinite scores for {name}")
    # sorted before averaging: the same scores in another order give a bit-identical mean
    return float(np.sort(values).mean())


def hpfiq_set_scores(judgements: Sequence[HPFIQJudgement], score_fn: ScoreFn) -> np.ndarray:
    """Model scores of both sets of every judgement (QuRe Eq. 8: the mean over a set's images).

    Args:
        judgements: from :func:`load_hpfiq`.
        score_fn: ``score_fn(reference_path, text, image_paths)`` returning one finite score per
            path (a sequence, NumPy array or torch tensor); called once per set.

    Returns:
        ``(N, 2)`` float64: column 0 the score of Set 1, column 1 of Set 2.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    out = np.empty((len(judgements), 2), dtype=np.float64)
    for n, j in enumerate(judgements):
        out[n, 0] = _set_score(score_fn, j, j.set1, "set1")
        out[n, 1] = _set_score(score_fn, j, j.set2, "set2")
    return out


def _rates(
    s1: np.ndarray, s2: np.ndarray, preferred: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """Eq. 9 and the symmetric rate (:func:`qure.metrics.preference_agreement`): the human
    preference is an oracle scoring the preferred set 1 and the other 0 (never a tie)."""
    human_1 = (preferred == 1).astype(np.float64)
    human_2 = 1.0 - human_1
    eq9 = preference_agreement(s1, s2, human_1, human_2, symmetric=False)
    sym = preference_agreement(s1, s2, human_1, human_2, symmetric=True)
    return eq9, sym


def hpfiq_preference_rate(
    judgements: Sequence[HPFIQJudgement], score_fn: ScoreFn | Any
) -> dict[str, float]:
    """How often a model's set ordering agrees with the human preference (QuRe Eq. 8-9).

    A set's score is the mean model score of its images (:func:`hpfiq_set_scores`).

    Args:
        judgements: from :func:`load_hpfiq`.
        score_fn: ``score_fn(reference_path, text, image_paths)`` -> one score per path, or the
            precomputed ``(N, 2)`` set scores.

    Returns:
        * ``"preference_rate"``: Eq. 9 as published (and as the released evaluator counts),
          ``P(Set 1 preferred | s(Set 1) > s(Set 2))`` in percent, over the ``"pairs_eq9"``
          judgements the model orders Set 1 first;
        * ``"symmetric_rate"``: the share (percent) of the ``"pairs_symmetric"`` judgements the
          model orders strictly where its higher-scored set is the preferred one;
        * ``"model_ties"``: judgements with ``s(Set 1) == s(Set 2)`` (in neither rate);
        * ``"preference_rate_consistent"``, ``"symmetric_rate_consistent"`` (with
          ``"pairs_eq9_consistent"``, ``"pairs_symmetric_consistent"``): the same on the
          judgements whose Likert ratings are neither tied nor contradict the preference;
        * ``"judgements"``, ``"consistent"``: how many judgements there are of each.

        A rate with no pairs is NaN.
    """
    if callable(score_fn):
        scores = hpfiq_set_scores(judgements, score_fn)
    else:
        scores = np.asarray(score_fn)
        if scores.dtype.kind not in "biuf":
            raise TypeError(
                "score_fn must be callable or an (N, 2) array of set scores, got "
                f"{type(score_fn).__name__}"
            )
        scores = scores.astype(np.float64)
        if scores.shape != (len(judgements), 2):
            raise ValueError(
                f"precomputed set scores have shape {scores.shape}, expected "
                f"({len(judgements)}, 2) (one row per judgement)"
            )
        if not np.isfinite(scores).all():
            row = int(np.argwhere(~np.isfinite(scores))[0][0])
            raise ValueError(f"precomputed set scores hold NaN or infinite values (row {row})")
    preferred = np.array([j.preferred for j in judgements], dtype=np.int64)
    consistent = np.array([_consistent(j) for j in judgements], dtype=bool)
    s1, s2 = scores[:, 0], scores[:, 1]
    eq9, sym = _rates(s1, s2, preferred)
    eq9_c, sym_c = _rates(s1[consistent], s2[consistent], preferred[consistent])
    return {
        "preference_rate": eq9["preference_rate"],
        "symmetric_rate": sym["preference_rate"],
        "pairs_eq9": eq9["pairs"],
        "pairs_symmetric": sym["pairs"],
        "model_ties": sym["model_ties"],
        "preference_rate_consistent": eq9_c["preference_rate"],
        "symmetric_rate_consistent": sym_c["preference_rate"],
        "pairs_eq9_consistent": eq9_c["pairs"],
        "pairs_symmetric_consistent": sym_c["pairs"],
        "judgements": len(judgements),
        "consistent": int(consistent.sum()),
    }
