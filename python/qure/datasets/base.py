"""The split type shared by the FashionIQ, CIRR and CIRCO loaders, and their file helpers.

A :class:`CIRSplit` is one split of a composed image retrieval benchmark as index arrays over a
list of image files: the first ``n_gallery`` images are the gallery (the retrieval corpus, or
the mining pool of a training split); reference images that are not in the gallery come after
it. Nothing here reads image pixels except :func:`read_images`, which imports Pillow when called.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

__all__ = ["CIRSplit", "read_images"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class CIRSplit:
    """One split of a composed image retrieval benchmark.

    Attributes:
        name: e.g. ``"fashioniq/dress/train"``, ``"cirr/val"``, ``"circo/test"``.
        images: image files; the first ``n_gallery`` are the gallery (the mining pool of a
            training split), references that are not in the gallery are appended after it.
        image_names: the dataset's id of each image (FashionIQ asin, CIRR name, CIRCO/COCO id as
            a string); this is what submission files are written with.
        n_gallery: how many of ``images`` form the gallery.
        reference: ``(Q,)`` int64 index into ``images`` of each query's reference image.
        texts: ``(Q,)`` query texts.
        target: ``(Q,)`` int64 gallery index (``< n_gallery``) of each query's target; ``-1``
            when unknown (test splits).
        query_ids: ``(Q,)`` the dataset's query ids as strings (CIRR pairid, CIRCO query id,
            FashionIQ ``"<category>/<index in the captions file>"``).
        gallery_ids: ``(n_gallery,)`` int64 or ``None``: equal ids mark the same image listed
            more than once in the gallery (a FashionIQ training pool); for
            ``qure.mine_negatives(..., gallery_ids=...)``.
        extra: dataset-specific fields. Values that are lists, tuples or arrays of length ``Q``
            are per query (:meth:`subset` selects them along with the queries); anything else
            (e.g. ``"category"``) belongs to the whole split.
    """

    name: str
    images: list[Path]
    image_names: list[str]
    n_gallery: int
    reference: np.ndarray
    texts: list[str]
    target: np.ndarray
    query_ids: list[str]
    gallery_ids: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reference = np.asarray(self.reference, dtype=np.int64).reshape(-1)
        self.target = np.asarray(self.target, dtype=np.int64).reshape(-1)
        n_images = len(self.images)
        q = len(self.texts)
        where = f"CIRSplit {self.name!r}"
        if len(self.image_names) != n_images:
            raise ValueError(f"{where}: {len(self.image_names)} image names for {n_images} images")
        if not 0 <= self.n_gallery <= n_images:
            raise ValueError(f"{where}: n_gallery {self.n_gallery} outside 0..{n_images}")
        for label, size in (
            ("reference", len(self.reference)),
            ("target", len(self.target)),
            ("query_ids", len(self.query_ids)),
        ):
            if size != q:
                raise ValueError(f"{where}: {label} has {size} entries for {q} texts")
        if q and (self.reference.min() < 0 or self.reference.max() >= n_images):
            raise ValueError(f"{where}: reference holds indices outside the {n_images} images")
        if q and (self.target.min() < -1 or self.target.max() >= self.n_gallery):
            raise ValueError(
                f"{where}: target holds indices outside the gallery of {self.n_gallery} "
                "(or -1 for unknown)"
            )
        if self.gallery_ids is not None:
            self.gallery_ids = np.asarray(self.gallery_ids, dtype=np.int64).reshape(-1)
            if len(self.gallery_ids) != self.n_gallery:
                raise ValueError(
                    f"{where}: gallery_ids has {len(self.gallery_ids)} entries for a gallery "
                    f"of {self.n_gallery}"
                )

    def __len__(self) -> int:
        """The number of queries."""
        return len(self.texts)

    def __repr__(self) -> str:
        return (
            f"CIRSplit({self.name!r}, queries={len(self)}, gallery={self.n_gallery}, "
            f"images={len(self.images)})"
        )

    def subset(self, queries: Any) -> CIRSplit:
        """The same images with only the selected queries (for quick runs).

        Args:
            queries: query indices (any integer sequence or array, in the order wanted), or a
                boolean mask of length ``len(self)``.
        """
        q = len(self)
        sel = np.asarray(queries)
        if sel.dtype == bool:
            if sel.shape != (q,):
                raise ValueError(f"a boolean query mask must have shape ({q},), got {sel.shape}")
            sel = np.flatnonzero(sel)
        elif sel.size == 0:
            sel = np.zeros(0, dtype=np.int64)
        elif sel.dtype.kind not in "iu":
            raise TypeError(f"queries must be integer indices or a boolean mask, not {sel.dtype}")
        sel = sel.astype(np.int64).reshape(-1)
        if sel.size and (sel.min() < -q or sel.max() >= q):
            raise IndexError(f"query indices outside 0..{q - 1}")
        sel = np.where(sel < 0, sel + q, sel)
        picked = sel.tolist()
        extra: dict[str, Any] = {}
        for key, value in self.extra.items():
            if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == q:
                extra[key] = value[sel]
            elif isinstance(value, (list, tuple)) and len(value) == q:
                extra[key] = type(value)(value[i] for i in picked)
            else:
                extra[key] = value
        return CIRSplit(
            name=self.name,
            images=self.images,
            image_names=self.image_names,
            n_gallery=self.n_gallery,
            reference=self.reference[sel],
            texts=[self.texts[i] for i in picked],
            target=self.target[sel],
            query_ids=[self.query_ids[i] for i in picked],
            gallery_ids=self.gallery_ids,
            extra=extra,
        )


def read_images(paths: Sequence[PathLike], size: int | None = None) -> np.ndarray:
    """Reads image files as one ``(N, H, W, 3)`` uint8 array (imports Pillow when called).

    Args:
        paths: the image files (e.g. ``split.images``).
        size: resize every image to ``size x size`` (bicubic); ``None`` keeps the sizes, which
            must then all agree.
    """
    from PIL import Image  # lazy: only needed when pixels are read

    out: list[np.ndarray] = []
    for path in paths:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if size is not None:
                rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
            array = np.asarray(rgb, dtype=np.uint8)
        if out and array.shape != out[0].shape:
            raise ValueError(
                f"{path}: image shape {array.shape} differs from {out[0].shape}; pass size="
            )
        out.append(array)
    if not out:
        edge = size or 0
        return np.zeros((0, edge, edge, 3), dtype=np.uint8)
    return np.stack(out)


# --------------------------------------------------------------------------------------------
# helpers for the loaders


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _require_images(paths: Sequence[Path], what: str) -> None:
    """Raises ``FileNotFoundError`` naming the first missing file (one listing per folder)."""
    listings: dict[Path, set[str]] = {}
    for path in paths:
        folder = path.parent
        names = listings.get(folder)
        if names is None:
            try:
                names = set(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                raise FileNotFoundError(f"{what} folder not found: {folder}") from None
            listings[folder] = names
        if path.name not in names:
            raise FileNotFoundError(f"{what} not found: {path}")


def _string(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {what} must be a non-empty string, got {value!r}")
    return value


def _integer(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ValueError(f"{where}: {what} must be an integer, got {value!r}")
    return value


def _entries(data: Any, file: Path) -> list[dict[str, Any]]:
    if not isinstance(data, list):
        raise ValueError(f"{file}: expected a list of entries, got {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"{file}: entry {i} must be an object, got {type(entry).__name__}")
    return data


def _check_split(split: str, allowed: tuple[str, ...], dataset: str) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset} split must be one of {allowed}, got {split!r}")
