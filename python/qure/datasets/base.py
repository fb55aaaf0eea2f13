"""The split type shared by the FashionIQ, CIRR and CIRCO loaders, the benchmark plug-in
protocol, and the loaders' file helpers.

A :class:`CIRSplit` is one split of a composed image retrieval benchmark as index arrays over a
list of image files: the first ``n_gallery`` images are the gallery (the retrieval corpus, or
the mining pool of a training split); reference images that are not in the gallery come after
it. Each benchmark subclasses it with its own typed fields
(:class:`~qure.datasets.fashioniq.FashionIQSplit`, :class:`~qure.datasets.cirr.CIRRSplit`,
:class:`~qure.datasets.circo.CIRCOSplit`). Nothing here reads image pixels except
:func:`read_images`, which imports Pillow when called.

A :class:`Benchmark` is what ``qure train`` / ``qure evaluate`` (:mod:`qure.experiments`) need of
a benchmark: ``load``, ``evaluate`` and ``write_submission``; each benchmark module is one
(``qure.datasets.BENCHMARKS`` lists them by name).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np

__all__ = ["Benchmark", "CIRSplit", "Encoder", "query_field", "read_images"]

PathLike = Union[str, "os.PathLike[str]"]

Encoder = Callable[["CIRSplit"], "tuple[np.ndarray, np.ndarray]"]
"""``encode(split) -> (queries, gallery)``: the ``(Q, d)`` query features and the
``(n_gallery, T, d)`` gallery features of a split, from the model being evaluated."""

_PER_QUERY = "per_query"


def query_field(**kwargs: Any) -> Any:
    """A :class:`CIRSplit` field holding one entry per query (a list, tuple or array of length
    ``Q``, or ``None``): ``__init__`` checks its length and :meth:`CIRSplit.subset` selects it
    along with the queries. Takes the arguments of :func:`dataclasses.field`."""
    return dataclasses.field(metadata={_PER_QUERY: True}, **kwargs)


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

    Dataset-specific data are typed fields of a subclass: FashionIQ's ``category`` and
    ``captions``, CIRR's ``members`` (the image sets of Recall_subset), CIRCO's
    ``shared_concepts`` and ``ground_truth``. Fields declared with :func:`query_field` hold one
    entry per query; the others belong to the whole split.
    """

    name: str
    images: list[Path]
    image_names: list[str]
    n_gallery: int
    reference: np.ndarray = query_field()
    texts: list[str] = query_field()
    target: np.ndarray = query_field()
    query_ids: list[str] = query_field()
    gallery_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.reference = np.asarray(self.reference, dtype=np.int64).reshape(-1)
        self.target = np.asarray(self.target, dtype=np.int64).reshape(-1)
        n_images = len(self.images)
        q = len(self.texts)
        where = f"{type(self).__name__} {self.name!r}"
        if len(self.image_names) != n_images:
            raise ValueError(f"{where}: {len(self.image_names)} image names for {n_images} images")
        if not 0 <= self.n_gallery <= n_images:
            raise ValueError(f"{where}: n_gallery {self.n_gallery} outside 0..{n_images}")
        for label in self._query_fields():
            value = getattr(self, label)
            if label != "texts" and value is not None and len(value) != q:
                raise ValueError(f"{where}: {label} has {len(value)} entries for {q} texts")
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

    @classmethod
    def _query_fields(cls) -> list[str]:
        """The names of the fields with one entry per query (see :func:`query_field`)."""
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get(_PER_QUERY)]

    def __len__(self) -> int:
        """The number of queries."""
        return len(self.texts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, queries={len(self)}, "
            f"gallery={self.n_gallery}, images={len(self.images)})"
        )

    def subset(self, queries: Any) -> CIRSplit:
        """The same images with only the selected queries (for quick runs), of the same type.

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
        selected: dict[str, Any] = {}
        for label in self._query_fields():
            value = getattr(self, label)
            if isinstance(value, np.ndarray):
                selected[label] = value[sel]
            elif isinstance(value, (list, tuple)):
                selected[label] = type(value)(value[i] for i in picked)
            else:
                selected[label] = value  # None: not known for this split
        return dataclasses.replace(self, **selected)


class Benchmark(Protocol):
    """A benchmark plug-in, as :mod:`qure.experiments` runs it (each of
    :mod:`~qure.datasets.fashioniq`, :mod:`~qure.datasets.cirr`, :mod:`~qure.datasets.circo`
    is one, as a module).

    * ``load(root, split, options)``: the splits of an experiment split (``"train"``,
      ``"val"`` or ``"test"``) by name, each one mining group when training (FashionIQ: one per
      category); ``options`` is the config's ``dataset`` section.
    * ``evaluate(splits, encode)``: the benchmark's metrics for splits with known targets.
    * ``write_submission(splits, encode, out)``: the evaluation server's files for a test split,
      written into the folder ``out``; returns their paths.
    """

    def load(
        self, root: PathLike, split: str, options: Mapping[str, Any] | None = None
    ) -> Mapping[str, CIRSplit]: ...

    def evaluate(self, splits: Mapping[str, CIRSplit], encode: Encoder) -> dict[str, float]: ...

    def write_submission(
        self, splits: Mapping[str, CIRSplit], encode: Encoder, out: Path
    ) -> list[str]: ...


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
# helpers for the loaders (shared by the benchmark modules)


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON file ``path``; ``FileNotFoundError`` naming ``what`` when it is missing,
    ``ValueError`` when it is not JSON."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def require_images(paths: Sequence[Path], what: str) -> None:
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


def as_string(value: Any, what: str, where: str) -> str:
    """A file entry's ``value`` as a non-empty string, else ``ValueError`` naming ``where``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {what} must be a non-empty string, got {value!r}")
    return value


def as_integer(value: Any, what: str, where: str) -> int:
    """A file entry's ``value`` as an int (a string of digits is accepted), else ``ValueError``
    naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ValueError(f"{where}: {what} must be an integer, got {value!r}")
    return value


def as_entries(data: Any, file: Path) -> list[dict[str, Any]]:
    """A file's parsed JSON as a list of objects, else ``ValueError`` naming the file."""
    if not isinstance(data, list):
        raise ValueError(f"{file}: expected a list of entries, got {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"{file}: entry {i} must be an object, got {type(entry).__name__}")
    return data
