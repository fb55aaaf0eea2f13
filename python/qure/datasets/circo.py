"""CIRCO (Baldrati et al., ICCV 2023) in its released layout.

::

    root/annotations/{split}.json    [{"reference_img_id": int, "relative_caption": str,
                                       "shared_concept": str, "id": int,
                                       "target_img_id": int, "gt_img_ids": [int]}, ...]
                                      (target_img_id and gt_img_ids: val only)
    root/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json
                                     {"images": [{"id": int, "file_name": str}, ...], ...}
    root/COCO2017_unlabeled/unlabeled2017/{file_name}

Splits ``val`` and ``test``. The gallery is the whole COCO 2017 unlabeled set, in the order of
``image_info_unlabeled2017.json``. The query text is the relative caption alone (the input of a
composed retrieval model; SEARLE's ``"a photo of $ that ..."`` prompt belongs to textual
inversion); the shared concept is kept in ``CIRCOSplit.shared_concepts``.

As a benchmark plug-in (:class:`~qure.datasets.base.Benchmark`): :func:`evaluate` gives
mAP@5/10/25/50 over the ground truths (:func:`circo_map`) of a ranking without the reference
image; :func:`write_submission` writes the test server's file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._arrays import as_int_array, check_choice
from ..metrics import as_cutoffs, ranked_without_reference
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
    "CIRCO_SPLITS",
    "CIRCOSplit",
    "circo_map",
    "evaluate",
    "load",
    "load_circo",
    "write_submission",
]

CIRCO_SPLITS = ("val", "test")


@dataclass(repr=False)
class CIRCOSplit(CIRSplit):
    """One CIRCO split (a :class:`~qure.datasets.base.CIRSplit`).

    Attributes:
        shared_concepts: per query the annotated concept the reference and the targets share.
        ground_truth: per query the int64 gallery indices of every ground truth
            (``gt_img_ids``, in file order, the target first; a repeated id is kept once);
            ``None`` on the test split, whose ground truths are not public.
    """

    shared_concepts: list[str] = query_field(default_factory=list)
    ground_truth: list[np.ndarray] | None = query_field(default=None)


def _gallery(root: Path) -> tuple[list[Path], list[str], dict[int, int]]:
    info_file = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info = read_json(info_file, "COCO 2017 unlabeled image info")
    listing: Any = info.get("images") if isinstance(info, dict) else None
    if not isinstance(listing, list):
        raise ValueError(f"{info_file}: expected an object with an 'images' list")
    folder = root / "COCO2017_unlabeled" / "unlabeled2017"
    images: list[Path] = []
    names: list[str] = []
    index: dict[int, int] = {}
    for n, item in enumerate(listing):
        where = f"{info_file}: images[{n}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object, got {type(item).__name__}")
        image_id = as_integer(item.get("id"), "'id'", where)
        if index.setdefault(image_id, n) != n:
            raise ValueError(f"{where}: image id {image_id} is listed twice")
        images.append(folder / as_string(item.get("file_name"), "'file_name'", where))
        names.append(str(image_id))
    return images, names, index


def load_circo(root: PathLike, split: str, *, check_images: bool = True) -> CIRCOSplit:
    """Loads one CIRCO split.

    Args:
        root: the CIRCO folder (holding ``annotations/`` and ``COCO2017_unlabeled/``).
        split: ``"val"`` or ``"test"``.
        check_images: check that every gallery image exists (one listing of the folder).

    Returns:
        A :class:`CIRCOSplit` named ``"circo/{split}"``: the gallery is every COCO unlabeled
        image (``image_names`` are the COCO ids as strings; ``int(name)`` for a submission),
        ``texts`` the relative captions, ``query_ids`` the query ids, ``target`` the gallery
        index of ``target_img_id`` (``-1`` on test), ``shared_concepts`` per query, and on val
        ``ground_truth``: per query the int64 gallery indices of ``gt_img_ids`` (in file order,
        the target first; a repeated id is kept once).

    Raises:
        FileNotFoundError: the annotation or image info file, or a gallery image, is missing.
        ValueError: a malformed file or entry, or an image id that is not in the unlabeled set
            (the message names the file and the query id).
    """
    check_choice(split, "CIRCO split", CIRCO_SPLITS)
    root = Path(root)
    ann_file = root / "annotations" / f"{split}.json"
    entries = as_entries(read_json(ann_file, "CIRCO annotation file"), ann_file)
    images, names, index = _gallery(root)

    def lookup(value: Any, what: str, where: str) -> int:
        image_id = as_integer(value, what, where)
        found = index.get(image_id)
        if found is None:
            raise ValueError(
                f"{where}: {what} {image_id} is not in the COCO 2017 unlabeled image info"
            )
        return found

    q = len(entries)
    reference = np.empty(q, dtype=np.int64)
    target = np.full(q, -1, dtype=np.int64)
    texts: list[str] = []
    concepts: list[str] = []
    query_ids: list[str] = []
    gt: list[np.ndarray] = []
    for i, entry in enumerate(entries):
        where = f"{ann_file}: entry {i}"
        query_id = as_integer(entry.get("id"), "'id'", where)
        where = f"{ann_file}: query id {query_id}"
        query_ids.append(str(query_id))
        reference[i] = lookup(entry.get("reference_img_id"), "reference_img_id", where)
        texts.append(as_string(entry.get("relative_caption"), "'relative_caption'", where))
        concept = entry.get("shared_concept", "")
        if not isinstance(concept, str):
            raise ValueError(f"{where}: 'shared_concept' must be a string, got {concept!r}")
        concepts.append(concept)
        if split == "val":
            target[i] = lookup(entry.get("target_img_id"), "target_img_id", where)
            ids = entry.get("gt_img_ids")
            if not isinstance(ids, list) or not ids:
                raise ValueError(f"{where}: 'gt_img_ids' must be a non-empty list, got {ids!r}")
            found = [lookup(g, "gt_img_ids entry", where) for g in ids]
            gt.append(np.array(list(dict.fromkeys(found)), dtype=np.int64))

    if check_images:
        require_images(images, "CIRCO (COCO 2017 unlabeled) image")
    return CIRCOSplit(
        name=f"circo/{split}",
        images=images,
        image_names=names,
        n_gallery=len(images),
        reference=reference,
        texts=texts,
        target=target,
        query_ids=query_ids,
        shared_concepts=concepts,
        ground_truth=gt if split == "val" else None,
    )


# --------------------------------------------------------------------------------------------
# the benchmark plug-in

_TOP = 50  # the ranking's length: CIRCO's largest cut-off and the submission's length


def load(
    root: PathLike, split: str, options: Mapping[str, Any] | None = None
) -> dict[str, CIRCOSplit]:
    """``{"circo": split}`` for the experiment split ``split`` (``"val"`` or ``"test"``)."""
    return {"circo": load_circo(root, split)}


def _the_split(splits: Mapping[str, CIRSplit]) -> CIRCOSplit:
    split = splits["circo"]
    if not isinstance(split, CIRCOSplit):
        raise TypeError(f"CIRCO needs a CIRCOSplit, got {type(split).__name__}")
    return split


def evaluate(splits: Mapping[str, CIRSplit], encode: Encoder) -> dict[str, float]:
    """mAP@5/10/25/50 of ``splits["circo"]`` (a split with ground truths: val)."""
    split = _the_split(splits)
    if split.ground_truth is None:
        raise ValueError(f"{split.name} has no ground truths to evaluate against")
    queries, gallery = encode(split)
    ranked = ranked_without_reference(queries, gallery, split.reference, _TOP)
    return circo_map(ranked, split.ground_truth, ks=(5, 10, 25, _TOP))


def write_submission(splits: Mapping[str, CIRSplit], encode: Encoder, out: Path) -> list[str]:
    """The CIRCO evaluation server's file, the top-50 COCO ids per query id (the reference
    image removed), written into ``out``; returns its path."""
    split = _the_split(splits)
    queries, gallery = encode(split)
    ranked = ranked_without_reference(queries, gallery, split.reference, _TOP)
    submission = {
        qid: [int(split.image_names[g]) for g in row if g >= 0]
        for qid, row in zip(split.query_ids, ranked)
    }
    target = out / "circo_test_submission.json"
    target.write_text(json.dumps(submission))
    return [str(target)]


# --------------------------------------------------------------------------------------------
# the official metric


def circo_map(
    ranked: Any,
    gt: Sequence[Any],
    ks: int | Iterable[int] = (5, 10, 25, 50),
) -> dict[str, float]:
    """CIRCO mAP@K in percent, with several ground truths per query.

    For a query with ground-truth set ``G`` and ``rel(k) = 1`` when the item at 1-based
    position ``k`` is in ``G``::

        AP@K = 1 / min(K, |G|) * sum_{k <= K} P@k * rel(k),   P@k = |G in top k| / k

    (the CIRCO paper and its official evaluation), averaged over queries. CIRCO removes each
    query's reference image from the ranking: pass ``ranked`` from a ranking that excludes it
    (e.g. :func:`qure.topk` with ``exclude=``).

    Args:
        ranked: ``(Q, >= max(ks))`` gallery indices in rank order; ``-1`` is padding (never
            relevant). The first ``max(ks)`` columns must not repeat an index.
        gt: per query a non-empty 1-D list of distinct ground-truth gallery indices (``>= 0``).
        ks: one cut-off or several (each ``>= 1``).

    Returns:
        ``{"mAP@5": ..., "mAP@10": ..., ...}`` in ``[0, 100]``, in the order of ``ks``; NaN when
        there are no queries.
    """
    cutoffs = as_cutoffs(ks)
    order = as_int_array(ranked, "ranked", 2)
    n_queries, n_columns = order.shape
    k_max = max(cutoffs)
    if n_columns < k_max:
        raise ValueError(f"ranked has {n_columns} columns, fewer than the largest k={k_max}")
    if isinstance(gt, (str, bytes)) or not isinstance(gt, Iterable):
        raise TypeError(f"gt must be a sequence with one index list per query, got {type(gt)}")
    truths = [as_int_array(g, f"gt[{q}]", 1) for q, g in enumerate(gt)]
    if len(truths) != n_queries:
        raise ValueError(f"gt has {len(truths)} entries but ranked has {n_queries} rows")
    top = order[:, :k_max]
    if top.size and top.min() < -1:
        row = int(np.argwhere(top < -1)[0][0])
        raise ValueError(f"ranked row {row} holds an index below -1 (only -1 may pad)")
    srt = np.sort(top, axis=1)
    repeated = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    if repeated.any():
        row = int(np.argwhere(repeated)[0][0])
        raise ValueError(f"ranked row {row} lists the same gallery index twice in its top {k_max}")
    if n_queries == 0:
        return {f"mAP@{k}": math.nan for k in cutoffs}
    positions = np.arange(1, k_max + 1, dtype=np.float64)
    ap = np.empty((n_queries, len(cutoffs)), dtype=np.float64)
    for q, truth in enumerate(truths):
        if truth.size == 0:
            raise ValueError(f"gt[{q}] is empty: every CIRCO query needs a ground truth")
        if truth.min() < 0:
            raise ValueError(f"gt[{q}] holds a negative index ({int(truth.min())})")
        if np.unique(truth).size != truth.size:
            raise ValueError(f"gt[{q}] lists the same gallery index twice")
        hits = np.isin(top[q], truth).astype(np.float64)
        precision_hits = np.cumsum(hits) / positions * hits
        for j, k in enumerate(cutoffs):
            ap[q, j] = precision_hits[:k].sum() / min(k, truth.size)
    means = ap.mean(axis=0) * 100.0
    return {f"mAP@{k}": float(means[j]) for j, k in enumerate(cutoffs)}
