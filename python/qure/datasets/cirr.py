"""CIRR (Liu et al., ICCV 2021) in its released layout.

::

    root/captions/cap.rc2.{split}.json       [{"pairid": int, "reference": name,
                                               "target_hard": name,        (not in test1)
                                               "caption": str,
                                               "img_set": {"members": [names], ...}}, ...]
    root/image_splits/split.rc2.{split}.json {name: "./train/34/<name>.png", ...}
    root/train/<n>/*.png, root/dev/*.png, root/test1/*.png

The annotation folders may also sit one level down, in ``root/cirr/`` (the layout of the
official repository, CLIP4Cir, SPRC and QuRe); image paths are always relative to ``root``.
Splits: ``train``, ``val``, ``test1``. The gallery is every image of the split's image split,
sorted by name; for ``train`` it is the mining pool (all training images, as in QuRe).

As a benchmark plug-in (:class:`~qure.datasets.base.Benchmark`): :func:`load` maps the
experiment split ``"test"`` to ``test1``; :func:`evaluate` gives Recall@1/5/10/50 with the
reference image removed (:func:`cirr_recall`), Recall_subset@1/2/3 within the image set
(:func:`cirr_subset_recall`) and ``(R@5 + Rsubset@1) / 2`` (:func:`cirr_average`);
:func:`write_submission` writes the test server's two files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._arrays import as_ragged_indices, as_real_array, check_choice
from ..metrics import (
    as_cutoffs,
    as_query_indices,
    check_index_range,
    ranked_without_reference,
    recall_at_k,
    target_ranks,
)
from ..retrieval import score
from .base import (
    CIRSplit,
    Encoder,
    PathLike,
    as_entries,
    as_integer,
    as_string,
    query_field,
    read_json,
    require_images,
)

__all__ = [
    "CIRR_SPLITS",
    "CIRRSplit",
    "cirr_average",
    "cirr_recall",
    "cirr_subset_recall",
    "evaluate",
    "load",
    "load_cirr",
    "write_submission",
]

CIRR_SPLITS = ("train", "val", "test1")


@dataclass(repr=False)
class CIRRSplit(CIRSplit):
    """One CIRR split (a :class:`~qure.datasets.base.CIRSplit`).

    Attributes:
        members: per query the ``(M,)`` int64 gallery indices of its ``img_set.members`` (the
            reference included, as released), the candidates of Recall_subset.
    """

    members: list[np.ndarray] = query_field(default_factory=list)


def _annotation_root(root: Path, split: str) -> Path:
    """``root``, or ``root/cirr`` when only that one holds the captions file."""
    name = Path("captions") / f"cap.rc2.{split}.json"
    if not (root / name).is_file() and (root / "cirr" / name).is_file():
        return root / "cirr"
    return root


def load_cirr(root: PathLike, split: str, *, check_images: bool = True) -> CIRRSplit:
    """Loads one CIRR split.

    Args:
        root: the CIRR folder (``captions/`` and ``image_splits/`` in it or in ``cirr/``; the
            image paths of the image split are relative to it).
        split: ``"train"``, ``"val"`` or ``"test1"``.
        check_images: check that every image file exists (one listing per folder).

    Returns:
        A :class:`CIRRSplit` named ``"cirr/{split}"``: the gallery is the split's images sorted
        by name (``image_names`` are CIRR names, as submissions want), ``texts`` the captions,
        ``query_ids`` the pairids, ``target`` the ``target_hard`` image (``-1`` on test1) and
        ``members`` per query the ``(M,)`` int64 gallery indices of its
        ``img_set.members`` (the reference included, as released) for Recall_subset.

    Raises:
        FileNotFoundError: a captions or image split file, or an image, is missing.
        ValueError: a malformed file or entry, or a name missing from the image split (the
            message names the file and the pairid).
    """
    check_choice(split, "CIRR split", CIRR_SPLITS)
    root = Path(root)
    base = _annotation_root(root, split)
    caps_file = base / "captions" / f"cap.rc2.{split}.json"
    split_file = base / "image_splits" / f"split.rc2.{split}.json"
    entries = as_entries(read_json(caps_file, "CIRR captions file"), caps_file)
    relpaths = read_json(split_file, "CIRR image split file")
    if not isinstance(relpaths, dict):
        raise ValueError(
            f"{split_file}: expected an object mapping names to image paths, got "
            f"{type(relpaths).__name__}"
        )
    names = sorted(relpaths)
    images = [
        root / as_string(relpaths[name], "the image path", f"{split_file}: image {name!r}")
        for name in names
    ]
    index = {name: n for n, name in enumerate(names)}

    def lookup(name: object, what: str, where: str) -> int:
        found = index.get(as_string(name, what, where))
        if found is None:
            raise ValueError(f"{where}: {what} {name!r} is not in {split_file}")
        return found

    q = len(entries)
    reference = np.empty(q, dtype=np.int64)
    target = np.full(q, -1, dtype=np.int64)
    texts: list[str] = []
    query_ids: list[str] = []
    members: list[np.ndarray] = []
    for i, entry in enumerate(entries):
        where = f"{caps_file}: entry {i}"
        pairid = as_integer(entry.get("pairid"), "'pairid'", where)
        where = f"{caps_file}: pairid {pairid}"
        query_ids.append(str(pairid))
        reference[i] = lookup(entry.get("reference"), "reference", where)
        if split != "test1":  # test1 has no target
            target[i] = lookup(entry.get("target_hard"), "target_hard", where)
        texts.append(as_string(entry.get("caption"), "'caption'", where))
        img_set = entry.get("img_set")
        group = img_set.get("members") if isinstance(img_set, dict) else None
        if not isinstance(group, list):
            raise ValueError(f"{where}: 'img_set' must hold a 'members' list, got {img_set!r}")
        members.append(
            np.array([lookup(m, "img_set member", where) for m in group], dtype=np.int64)
        )

    if check_images:
        require_images(images, "CIRR image")
    return CIRRSplit(
        name=f"cirr/{split}",
        images=images,
        image_names=names,
        n_gallery=len(names),
        reference=reference,
        texts=texts,
        target=target,
        query_ids=query_ids,
        members=members,
    )


# --------------------------------------------------------------------------------------------
# the benchmark plug-in


def load(
    root: PathLike, split: str, options: Mapping[str, Any] | None = None
) -> dict[str, CIRRSplit]:
    """``{"cirr": split}`` for the experiment split ``split`` (``"test"`` is ``test1``)."""
    return {"cirr": load_cirr(root, "test1" if split == "test" else split)}


def _the_split(splits: Mapping[str, CIRSplit]) -> CIRRSplit:
    split = splits["cirr"]
    if not isinstance(split, CIRRSplit):
        raise TypeError(f"CIRR needs a CIRRSplit (with members), got {type(split).__name__}")
    return split


def evaluate(splits: Mapping[str, CIRSplit], encode: Encoder) -> dict[str, float]:
    """R@1/5/10/50, Rsubset@1/2/3 and ``"(R@5+Rsubset@1)/2"`` of ``splits["cirr"]``."""
    split = _the_split(splits)
    queries, gallery = encode(split)
    scores = score(queries, gallery)
    recall = cirr_recall(scores, split.target, split.reference, ks=(1, 5, 10, 50))
    subset = cirr_subset_recall(scores, split.target, split.reference, split.members, ks=(1, 2, 3))
    return {**recall, **subset, "(R@5+Rsubset@1)/2": cirr_average(recall, subset)}


def write_submission(splits: Mapping[str, CIRSplit], encode: Encoder, out: Path) -> list[str]:
    """The CIRR evaluation server's two files, top-50 and subset top-3 names per pairid (the
    reference image removed from both), written into ``out``; returns their paths."""
    split = _the_split(splits)
    queries, gallery = encode(split)
    ranked = ranked_without_reference(queries, gallery, split.reference, 50)
    names = split.image_names
    recall: dict[str, Any] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, Any] = {"version": "rc2", "metric": "recall_subset"}
    scores = score(queries, gallery)
    for i, pairid in enumerate(split.query_ids):
        recall[pairid] = [names[g] for g in ranked[i] if g >= 0]
        members = [m for m in split.members[i] if m != split.reference[i]]
        order = sorted(members, key=lambda m: (-scores[i, m], m))
        subset[pairid] = [names[m] for m in order[:3]]
    written = []
    for filename, payload in (
        ("cirr_test1_recall_submission.json", recall),
        ("cirr_test1_recall_subset_submission.json", subset),
    ):
        target = out / filename
        target.write_text(json.dumps(payload))
        written.append(str(target))
    return written


# --------------------------------------------------------------------------------------------
# the official metrics


def _cirr_inputs(
    scores: Any, target: Any, reference: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = as_real_array(scores, "scores", 2)
    n_queries, n_gallery = values.shape
    tgt = as_query_indices(target, "target", n_queries, n_gallery)
    ref = as_query_indices(reference, "reference", n_queries, n_gallery)
    same = tgt == ref
    if same.any():
        q = int(np.argmax(same))
        raise ValueError(
            f"query {q}: the target ({int(tgt[q])}) is the reference image, which CIRR removes "
            "from the ranking"
        )
    return values, tgt, ref


def cirr_recall(
    scores: Any,
    target: Any,
    reference: Any,
    ks: int | Iterable[int] = (1, 5, 10, 50),
) -> dict[str, float]:
    """CIRR Recall@K in percent, with each query's reference image removed from its ranking.

    Each query's gallery is ordered by score, descending, ties by ascending gallery index (as in
    :func:`qure.topk`); the reference image is taken out and the target's 0-based position in
    what is left is compared with each K.

    Args:
        scores: ``(Q, G)`` scores of every query against the whole gallery.
        target: ``(Q,)`` gallery index of each query's target.
        reference: ``(Q,)`` gallery index of each query's reference image (never the target).
        ks: one cut-off or several (each ``>= 1``).

    Returns:
        ``{"R@1": ..., "R@5": ..., ...}`` in ``[0, 100]``, in the order of ``ks``; NaN when there
        are no queries.
    """
    cutoffs = as_cutoffs(ks)
    values, tgt, ref = _cirr_inputs(scores, target, reference)
    return recall_at_k(target_ranks(values, tgt, exclude=ref), cutoffs)


def cirr_subset_recall(
    scores: Any,
    target: Any,
    reference: Any,
    members: Any,
    ks: int | Iterable[int] = (1, 2, 3),
) -> dict[str, float]:
    """CIRR Recall_subset@K in percent: the target's rank among its image set's members.

    Each query is ranked only against the members of its ``img_set`` (CIRR's
    ``img_set.members``, six images including the reference) minus the reference image, by
    score, descending, ties by ascending gallery index.

    Args:
        scores: ``(Q, G)`` scores of every query against the whole gallery.
        target: ``(Q,)`` gallery index of each query's target; it must be one of its members.
        reference: ``(Q,)`` gallery index of each query's reference image (never the target);
            removed from the members when it is one of them.
        members: per query the gallery indices of its image set: a ``(Q, M)`` array or a
            sequence of 1-D index lists; no index may repeat within a query.
        ks: one cut-off or several (each ``>= 1``).

    Returns:
        ``{"Rsubset@1": ..., "Rsubset@2": ..., ...}`` in ``[0, 100]``, in the order of ``ks``;
        NaN when there are no queries.
    """
    cutoffs = as_cutoffs(ks)
    values, tgt, ref = _cirr_inputs(scores, target, reference)
    n_queries, n_gallery = values.shape
    indptr, indices = as_ragged_indices(members, "members")
    if indptr.shape[0] - 1 != n_queries:
        raise ValueError(
            f"members has {indptr.shape[0] - 1} rows but scores has {n_queries} (one per query)"
        )
    check_index_range(indices, "members", n_gallery)
    ranks = np.empty(n_queries, dtype=np.int64)
    for q in range(n_queries):
        group = indices[indptr[q] : indptr[q + 1]]
        if np.unique(group).size != group.size:
            raise ValueError(f"members of query {q} list the same gallery index twice")
        t = tgt[q]
        if not (group == t).any():
            raise ValueError(f"query {q}: the target ({int(t)}) is not one of its members")
        group = group[group != ref[q]]
        s = values[q, group]
        t_score = values[q, t]
        ranks[q] = int(np.sum((s > t_score) | ((s == t_score) & (group < t))))
    out = recall_at_k(ranks, cutoffs)
    return {f"Rsubset@{k}": out[f"R@{k}"] for k in cutoffs}


def cirr_average(recall: dict[str, float], subset: dict[str, float]) -> float:
    """CIRR's headline number, ``(R@5 + Rsubset@1) / 2``.

    Args:
        recall: the output of :func:`cirr_recall` (must hold ``"R@5"``).
        subset: the output of :func:`cirr_subset_recall` (must hold ``"Rsubset@1"``).
    """
    if "R@5" not in recall:
        raise ValueError(f"recall has no 'R@5' entry (keys: {sorted(recall)})")
    if "Rsubset@1" not in subset:
        raise ValueError(f"subset has no 'Rsubset@1' entry (keys: {sorted(subset)})")
    return (float(recall["R@5"]) + float(subset["Rsubset@1"])) / 2.0
