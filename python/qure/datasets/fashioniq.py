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

As a benchmark plug-in (:class:`~qure.datasets.base.Benchmark`): :func:`load` gives one split
per category, :func:`evaluate` the Recall@10/50 of :func:`fashioniq_recall` on the val split;
the test split's targets are not public, so there is no submission (:func:`write_submission`
says so).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._arrays import check_choice, to_numpy
from ..metrics import as_cutoffs, recall_at_k
from ..retrieval import target_rank
from .base import CIRSplit, Encoder, PathLike, as_entries, as_string, query_field, read_json

__all__ = [
    "FASHIONIQ_CATEGORIES",
    "FASHIONIQ_SPLITS",
    "FashionIQSplit",
    "evaluate",
    "fashioniq_recall",
    "fashioniq_text",
    "load",
    "load_fashioniq",
    "write_submission",
]

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
FASHIONIQ_SPLITS = ("train", "val", "test")
_SUFFIXES = (".png", ".jpg", ".jpeg")  # preference order when an asin has several files


@dataclass(repr=False)
class FashionIQSplit(CIRSplit):
    """One FashionIQ category split (a :class:`~qure.datasets.base.CIRSplit`).

    Attributes:
        category: ``"dress"``, ``"shirt"`` or ``"toptee"``.
        captions: per query the raw caption pair, as released (``texts`` joins them with
            :func:`fashioniq_text`).
    """

    category: str = ""
    captions: list[tuple[str, str]] = query_field(default_factory=list)


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


def _load_category(
    root: Path, split: str, category: str, files: dict[str, str] | None
) -> FashionIQSplit:
    caps_file = root / "captions" / f"cap.{category}.{split}.json"
    entries = as_entries(read_json(caps_file, "FashionIQ captions file"), caps_file)
    candidates: list[str] = []
    targets: list[str] = []
    pairs: list[tuple[str, str]] = []
    for i, entry in enumerate(entries):
        where = f"{caps_file}: entry {i}"
        candidates.append(as_string(entry.get("candidate"), "'candidate'", where))
        pairs.append(_captions(entry.get("captions"), where))
        if split != "test":  # test captions have no target
            targets.append(as_string(entry.get("target"), "'target'", where))

    if split == "train":
        gallery = list(targets)
        gallery_ids: np.ndarray | None = _dense_ids(gallery)
        source = f"the training targets of {caps_file}"
    else:
        split_file = root / "image_splits" / f"split.{category}.{split}.json"
        data = read_json(split_file, "FashionIQ image split file")
        if not isinstance(data, list):
            raise ValueError(f"{split_file}: expected a list of asins, got {type(data).__name__}")
        gallery = [as_string(a, "an asin", f"{split_file}: entry {i}") for i, a in enumerate(data)]
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

    return FashionIQSplit(
        name=f"fashioniq/{category}/{split}",
        images=images,
        image_names=names,
        n_gallery=n_gallery,
        reference=reference,
        texts=[fashioniq_text(pair) for pair in pairs],
        target=target,
        query_ids=[f"{category}/{i}" for i in range(len(entries))],
        gallery_ids=gallery_ids,
        category=category,
        captions=pairs,
    )


def load_fashioniq(
    root: PathLike,
    split: str,
    categories: Iterable[str] = FASHIONIQ_CATEGORIES,
    *,
    check_images: bool = True,
) -> dict[str, FashionIQSplit]:
    """Loads one FashionIQ split, one :class:`FashionIQSplit` per category.

    Args:
        root: the FashionIQ folder (holding ``captions/``, ``image_splits/``, ``images/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        categories: the categories to load (a single name is accepted too).
        check_images: find every image file (``.png``, else ``.jpg``/``.jpeg``) with one
            listing of ``images/``; with ``False`` nothing is listed and every path is
            ``images/{asin}.png``.

    Returns:
        ``{category: FashionIQSplit}`` in the order of ``categories``, each named
        ``"fashioniq/{category}/{split}"``, with ``query_ids`` ``"{category}/{index}"`` (the
        position in the captions file), ``category`` and ``captions`` (the raw caption pairs).
        ``target`` is ``-1`` on the test split.

    Raises:
        FileNotFoundError: a captions or image split file, the image folder or an image is
            missing (the message names it).
        ValueError: a malformed file or entry, or a val target missing from the image split
            (the message names the file and entry).
    """
    check_choice(split, "FashionIQ split", FASHIONIQ_SPLITS)
    root = Path(root)
    cats = (categories,) if isinstance(categories, str) else tuple(categories)
    if not cats:
        raise ValueError("categories is empty")
    files = _image_index(root / "images") if check_images else None
    return {category: _load_category(root, split, category, files) for category in cats}


# --------------------------------------------------------------------------------------------
# the benchmark plug-in


def load(
    root: PathLike, split: str, options: Mapping[str, Any] | None = None
) -> dict[str, FashionIQSplit]:
    """The experiment split ``split`` (``"train"``, ``"val"`` or ``"test"``), one split per
    category: ``options["categories"]`` (default all three) as in :func:`load_fashioniq`."""
    categories = tuple((options or {}).get("categories", FASHIONIQ_CATEGORIES))
    return load_fashioniq(root, split, categories=categories)


def evaluate(splits: Mapping[str, CIRSplit], encode: Encoder) -> dict[str, float]:
    """:func:`fashioniq_recall` at K = 10 and 50 over the categories of ``splits`` (each
    category's gallery its image split; target ranks without a ``Q x N`` score matrix)."""
    ranks = {}
    for category, split in splits.items():
        queries, gallery = encode(split)
        ranks[category] = target_rank(queries, gallery, split.target)
    return fashioniq_recall(ranks, ks=(10, 50))


def write_submission(splits: Mapping[str, CIRSplit], encode: Encoder, out: Path) -> list[str]:
    """FashionIQ has no evaluation server: always ``ValueError``."""
    raise ValueError("FashionIQ's test targets are not public: evaluate on val")


# --------------------------------------------------------------------------------------------
# the official metric


def fashioniq_recall(
    target_rank_by_category: dict[str, Any],
    ks: int | Iterable[int] = (10, 50),
) -> dict[str, float]:
    """FashionIQ Recall@K in percent per category, their means and the overall average.

    Args:
        target_rank_by_category: category name (e.g. ``"dress"``, ``"shirt"``, ``"toptee"``) to
            the ``(Q_c,)`` 0-based target ranks of its validation queries (non-empty).
        ks: one cut-off or several (each ``>= 1``).

    Returns:
        ``"{category}_R@{k}"`` for every category and cut-off, ``"average_R@{k}"`` the mean over
        categories (each category weighs the same, whatever its size) and ``"average"`` the mean
        of the ``average_R@{k}`` over ``ks`` (the paper's "overall" column for ``ks=(10, 50)``).
    """
    cutoffs = as_cutoffs(ks)
    if not isinstance(target_rank_by_category, dict):
        raise TypeError(
            "target_rank_by_category must be a dict from category name to target ranks, got "
            f"{type(target_rank_by_category).__name__}"
        )
    if not target_rank_by_category:
        raise ValueError("target_rank_by_category is empty: give at least one category")
    out: dict[str, float] = {}
    per_k: dict[int, list[float]] = {k: [] for k in cutoffs}
    for category, ranks in target_rank_by_category.items():
        if not isinstance(category, str) or not category:
            raise ValueError(f"category names must be non-empty strings, got {category!r}")
        if category == "average":
            raise ValueError("'average' cannot be a category name (it names the mean)")
        if to_numpy(ranks).size == 0:
            raise ValueError(f"category {category!r} has no queries")
        recall = recall_at_k(ranks, cutoffs)
        for k in cutoffs:
            out[f"{category}_R@{k}"] = recall[f"R@{k}"]
            per_k[k].append(recall[f"R@{k}"])
    averages = [float(np.mean(per_k[k])) for k in cutoffs]
    for k, value in zip(cutoffs, averages):
        out[f"average_R@{k}"] = value
    out["average"] = float(np.mean(averages))
    return out
