"""FashionIQ (Wu et al., CVPR 2021) in its released layout.

::

    root/captions/cap.{category}.{split}.json       [{"candidate": asin, "target": asin,
                                                       "captions": [c1, c2]}, ...]
    root/image_splits/split.{category}.{split}.json [asin, ...]
    root/images/{asin}.png                          (.jpg also accepted)

Categories ``dress``, ``shirt``, ``toptee``; splits ``train``, ``val``, ``test`` (test captions
have no target). The query text is the CLIP4Cir/SPRC/QuRe convention
``f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"`` (:func:`fashioniq_text`).

Galleries, as in QuRe's released code:

* ``train``: the mining pool is the category's training *targets* in caption order, duplicates
  kept (``gallery_ids`` gives equal asins equal ids, so mining can drop the target's
  duplicates); a query's target is the first occurrence of its asin in the pool.
* ``val`` / ``test``: the category's image split (``image_splits/split.{category}.{split}.json``);
  every target must be in it.

In both, a reference (``candidate``) is the first occurrence of its asin in the gallery, or
appended after the gallery (once per asin) when it is not in it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import CIRSplit, PathLike, _check_split, _entries, _read_json, _string

__all__ = ["FASHIONIQ_CATEGORIES", "FASHIONIQ_SPLITS", "fashioniq_text", "load_fashioniq"]

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
FASHIONIQ_SPLITS = ("train", "val", "test")
_SUFFIXES = (".png", ".jpg", ".jpeg")  # preference order when an asin has several files


def fashioniq_text(captions: Sequence[str]) -> str:
    """The query text of a FashionIQ caption pair: ``"<C1> and <c2>"``.

    Both captions lose ``.``, ``?``, ``,`` and spaces at both ends; the first is capitalised
    with ``str.capitalize`` (first letter upper case, the rest lower case), as CLIP4Cir, SPRC
    and QuRe do.
    """
    c1, c2 = captions
    return f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"


def _image_index(folder: Path) -> dict[str, str]:
    """``{asin: file name}`` from one listing of the image folder (``.png`` preferred)."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"FashionIQ image folder not found: {folder}") from None
    rank = {suffix: n for n, suffix in enumerate(_SUFFIXES)}
    best: dict[str, str] = {}
    for name in names:
        stem, suffix = os.path.splitext(name)
        order = rank.get(suffix.lower())
        if order is None:
            continue
        held = best.get(stem)
        if held is None or order < rank[os.path.splitext(held)[1].lower()]:
            best[stem] = name
    return best


def _captions(value: Any, where: str) -> tuple[str, str]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(c, str) for c in value)
    ):
        raise ValueError(f"{where}: 'captions' must be a list of two strings, got {value!r}")
    return value[0], value[1]


def _dense_ids(names: Sequence[str]) -> np.ndarray:
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(name, len(ids)) for name in names], dtype=np.int64)


def _load_category(root: Path, split: str, category: str, files: dict[str, str] | None) -> CIRSplit:
    caps_file = root / "captions" / f"cap.{category}.{split}.json"
    entries = _entries(_read_json(caps_file, "FashionIQ captions file"), caps_file)
    candidates: list[str] = []
    targets: list[str] = []
    pairs: list[tuple[str, str]] = []
    for i, entry in enumerate(entries):
        where = f"{caps_file}: entry {i}"
        candidates.append(_string(entry.get("candidate"), "'candidate'", where))
        pairs.append(_captions(entry.get("captions"), where))
        if split != "test":  # test captions have no target
            targets.append(_string(entry.get("target"), "'target'", where))

    if split == "train":
        gallery = list(targets)
        gallery_ids: np.ndarray | None = _dense_ids(gallery)
        source = f"the training targets of {caps_file}"
    else:
        split_file = root / "image_splits" / f"split.{category}.{split}.json"
        data = _read_json(split_file, "FashionIQ image split file")
        if not isinstance(data, list):
            raise ValueError(f"{split_file}: expected a list of asins, got {type(data).__name__}")
        gallery = [_string(a, "an asin", f"{split_file}: entry {i}") for i, a in enumerate(data)]
        gallery_ids = _dense_ids(gallery) if len(set(gallery)) < len(gallery) else None
        source = str(split_file)

    index: dict[str, int] = {}
    for n, asin in enumerate(gallery):
        index.setdefault(asin, n)
    n_gallery = len(gallery)
    names = list(gallery)
    target = np.full(len(entries), -1, dtype=np.int64)
    for i, asin in enumerate(targets):
        found = index.get(asin)
        if found is None:
            raise ValueError(f"{caps_file}: entry {i}: target {asin!r} is not in {source}")
        target[i] = found
    reference = np.empty(len(entries), dtype=np.int64)
    for i, asin in enumerate(candidates):
        found = index.get(asin)
        if found is None:
            found = index[asin] = len(names)
            names.append(asin)
        reference[i] = found

    folder = root / "images"
    images: list[Path] = []
    for asin in names:
        if files is None:
            images.append(folder / f"{asin}.png")
            continue
        file = files.get(asin)
        if file is None:
            raise FileNotFoundError(f"FashionIQ image not found: {folder / asin}.png (or .jpg)")
        images.append(folder / file)

    return CIRSplit(
        name=f"fashioniq/{category}/{split}",
        images=images,
        image_names=names,
        n_gallery=n_gallery,
        reference=reference,
        texts=[fashioniq_text(pair) for pair in pairs],
        target=target,
        query_ids=[f"{category}/{i}" for i in range(len(entries))],
        gallery_ids=gallery_ids,
        extra={"category": category, "captions": pairs},
    )


def load_fashioniq(
    root: PathLike,
    split: str,
    categories: Iterable[str] = FASHIONIQ_CATEGORIES,
    *,
    check_images: bool = True,
) -> dict[str, CIRSplit]:
    """Loads one FashionIQ split, one :class:`CIRSplit` per category.

    Args:
        root: the FashionIQ folder (holding ``captions/``, ``image_splits/``, ``images/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        categories: the categories to load (a single name is accepted too).
        check_images: find every image file (``.png``, else ``.jpg``/``.jpeg``) with one
            listing of ``images/``; with ``False`` nothing is listed and every path is
            ``images/{asin}.png``.

    Returns:
        ``{category: CIRSplit}`` in the order of ``categories``, each named
        ``"fashioniq/{category}/{split}"``, with ``query_ids`` ``"{category}/{index}"`` (the
        position in the captions file), ``extra["category"]`` and ``extra["captions"]`` (the
        raw caption pairs). ``target`` is ``-1`` on the test split.

    Raises:
        FileNotFoundError: a captions or image split file, the image folder or an image is
            missing (the message names it).
        ValueError: a malformed file or entry, or a val target missing from the image split
            (the message names the file and entry).
    """
    _check_split(split, FASHIONIQ_SPLITS, "FashionIQ")
    root = Path(root)
    cats = (categories,) if isinstance(categories, str) else tuple(categories)
    if not cats:
        raise ValueError("categories is empty")
    files = _image_index(root / "images") if check_images else None
    return {category: _load_category(root, split, category, files) for category in cats}
