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
inversion); the shared concept is kept in ``extra["shared_concept"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    CIRSplit,
    PathLike,
    _check_split,
    _entries,
    _integer,
    _read_json,
    _require_images,
    _string,
)

__all__ = ["CIRCO_SPLITS", "load_circo"]

CIRCO_SPLITS = ("val", "test")


def _gallery(root: Path) -> tuple[list[Path], list[str], dict[int, int]]:
    info_file = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info = _read_json(info_file, "COCO 2017 unlabeled image info")
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
        image_id = _integer(item.get("id"), "'id'", where)
        if index.setdefault(image_id, n) != n:
            raise ValueError(f"{where}: image id {image_id} is listed twice")
        images.append(folder / _string(item.get("file_name"), "'file_name'", where))
        names.append(str(image_id))
    return images, names, index


def load_circo(root: PathLike, split: str, *, check_images: bool = True) -> CIRSplit:
    """Loads one CIRCO split.

    Args:
        root: the CIRCO folder (holding ``annotations/`` and ``COCO2017_unlabeled/``).
        split: ``"val"`` or ``"test"``.
        check_images: check that every gallery image exists (one listing of the folder).

    Returns:
        A :class:`CIRSplit` named ``"circo/{split}"``: the gallery is every COCO unlabeled
        image (``image_names`` are the COCO ids as strings; ``int(name)`` for a submission),
        ``texts`` the relative captions, ``query_ids`` the query ids, ``target`` the gallery
        index of ``target_img_id`` (``-1`` on test), ``extra["shared_concept"]`` per query,
        and on val ``extra["gt"]``: per query the int64 gallery indices of ``gt_img_ids``
        (in file order, the target first; a repeated id is kept once).

    Raises:
        FileNotFoundError: the annotation or image info file, or a gallery image, is missing.
        ValueError: a malformed file or entry, or an image id that is not in the unlabeled set
            (the message names the file and the query id).
    """
    _check_split(split, CIRCO_SPLITS, "CIRCO")
    root = Path(root)
    ann_file = root / "annotations" / f"{split}.json"
    entries = _entries(_read_json(ann_file, "CIRCO annotation file"), ann_file)
    images, names, index = _gallery(root)

    def lookup(value: Any, what: str, where: str) -> int:
        image_id = _integer(value, what, where)
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
        query_id = _integer(entry.get("id"), "'id'", where)
        where = f"{ann_file}: query id {query_id}"
        query_ids.append(str(query_id))
        reference[i] = lookup(entry.get("reference_img_id"), "reference_img_id", where)
        texts.append(_string(entry.get("relative_caption"), "'relative_caption'", where))
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
        _require_images(images, "CIRCO (COCO 2017 unlabeled) image")
    extra: dict[str, Any] = {"shared_concept": concepts}
    if split == "val":
        extra["gt"] = gt
    return CIRSplit(
        name=f"circo/{split}",
        images=images,
        image_names=names,
        n_gallery=len(images),
        reference=reference,
        texts=texts,
        target=target,
        query_ids=query_ids,
        extra=extra,
    )
