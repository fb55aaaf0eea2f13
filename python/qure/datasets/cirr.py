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
"""

from __future__ import annotations

from pathlib import Path

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

__all__ = ["CIRR_SPLITS", "load_cirr"]

CIRR_SPLITS = ("train", "val", "test1")


def _annotation_root(root: Path, split: str) -> Path:
    """``root``, or ``root/cirr`` when only that one holds the captions file."""
    name = Path("captions") / f"cap.rc2.{split}.json"
    if not (root / name).is_file() and (root / "cirr" / name).is_file():
        return root / "cirr"
    return root


def load_cirr(root: PathLike, split: str, *, check_images: bool = True) -> CIRSplit:
    """Loads one CIRR split.

    Args:
        root: the CIRR folder (``captions/`` and ``image_splits/`` in it or in ``cirr/``; the
            image paths of the image split are relative to it).
        split: ``"train"``, ``"val"`` or ``"test1"``.
        check_images: check that every image file exists (one listing per folder).

    Returns:
        A :class:`CIRSplit` named ``"cirr/{split}"``: the gallery is the split's images sorted
        by name (``image_names`` are CIRR names, as submissions want), ``texts`` the captions,
        ``query_ids`` the pairids, ``target`` the ``target_hard`` image (``-1`` on test1) and
        ``extra["members"]`` per query the ``(M,)`` int64 gallery indices of its
        ``img_set.members`` (the reference included, as released) for Recall_subset.

    Raises:
        FileNotFoundError: a captions or image split file, or an image, is missing.
        ValueError: a malformed file or entry, or a name missing from the image split (the
            message names the file and the pairid).
    """
    _check_split(split, CIRR_SPLITS, "CIRR")
    root = Path(root)
    base = _annotation_root(root, split)
    caps_file = base / "captions" / f"cap.rc2.{split}.json"
    split_file = base / "image_splits" / f"split.rc2.{split}.json"
    entries = _entries(_read_json(caps_file, "CIRR captions file"), caps_file)
    relpaths = _read_json(split_file, "CIRR image split file")
    if not isinstance(relpaths, dict):
        raise ValueError(
            f"{split_file}: expected an object mapping names to image paths, got "
            f"{type(relpaths).__name__}"
        )
    names = sorted(relpaths)
    images = [
        root / _string(relpaths[name], "the image path", f"{split_file}: image {name!r}")
        for name in names
    ]
    index = {name: n for n, name in enumerate(names)}

    def lookup(name: object, what: str, where: str) -> int:
        found = index.get(_string(name, what, where))
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
        pairid = _integer(entry.get("pairid"), "'pairid'", where)
        where = f"{caps_file}: pairid {pairid}"
        query_ids.append(str(pairid))
        reference[i] = lookup(entry.get("reference"), "reference", where)
        if split != "test1":  # test1 has no target
            target[i] = lookup(entry.get("target_hard"), "target_hard", where)
        texts.append(_string(entry.get("caption"), "'caption'", where))
        img_set = entry.get("img_set")
        group = img_set.get("members") if isinstance(img_set, dict) else None
        if not isinstance(group, list):
            raise ValueError(f"{where}: 'img_set' must hold a 'members' list, got {img_set!r}")
        members.append(
            np.array([lookup(m, "img_set member", where) for m in group], dtype=np.int64)
        )

    if check_images:
        _require_images(images, "CIRR image")
    return CIRSplit(
        name=f"cirr/{split}",
        images=images,
        image_names=names,
        n_gallery=len(names),
        reference=reference,
        texts=texts,
        target=target,
        query_ids=query_ids,
        extra={"members": members},
    )
