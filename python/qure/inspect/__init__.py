"""``qure inspect``: a static page to look at rankings and mined bands, query by query.

:func:`write_page` takes plain arrays (scores or features, targets, a :class:`HardNegatives`,
images, texts, graded relevance) and writes a self-contained folder that any browser opens from
disk, with no server and no network::

    out/index.html          the viewer (HTML, CSS and JavaScript in one file)
    out/data/summary.js     one row per query (id, text, target rank, band size, false
                            negatives), columnar, for the list view's search, sorting and paging
    out/data/p00000.js      per query of one page of queries: the top-N ranking, the score curve,
                            the band, the drops and the grades (loaded when that page is shown)
    out/img/<k>/<i>.png     one thumbnail per image (image ``i``), written once however many
                            queries show it

The data files are JavaScript (``qureInspectPage(k, {...})``) rather than JSON because browsers
refuse to ``fetch`` JSON from ``file://`` pages, while a ``<script>`` tag loads from disk.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .._arrays import as_float32_matrix, as_ragged_indices, is_torch_tensor
from ..mining import HardNegatives

__all__ = ["InspectPage", "write_page"]

FORMAT_VERSION = 1
MARKER = "qure-inspect-page"
"""Written into every ``index.html``: an existing folder holding it may be overwritten."""
IMAGES_PER_FOLDER = 1000
_BLOCK_ELEMENTS = 1 << 23  # scores of a block of queries: 32 MiB of float32
_MAX_FN_LISTED = 100  # false negatives listed per query (all are counted)


@dataclass(frozen=True)
class InspectPage:
    """What :func:`write_page` wrote: ``index`` (open it in a browser) and counts."""

    index: Path
    queries: int
    pages: int
    thumbnails: int
    seconds: float


def write_page(
    out: str | os.PathLike[str],
    *,
    targets: Any = None,
    scores: Any = None,
    queries: Any = None,
    gallery: Any = None,
    negatives: HardNegatives | str | os.PathLike[str] | None = None,
    images: Any = None,
    reference: Any = None,
    texts: Sequence[str] | None = None,
    relevance: Any = None,
    query_ids: Sequence[Any] | None = None,
    image_names: Sequence[Any] | None = None,
    exclude: Any = None,
    top: int = 50,
    curve: int = 300,
    band_items: int = 24,
    false_negative_grade: float = 0.5,
    page_size: int = 100,
    thumbnail_size: int = 128,
    title: str = "qure inspect",
    notes: Mapping[str, Any] | None = None,
) -> InspectPage:
    """Writes the inspection site for a set of queries into the folder ``out``.

    Give the ranking as ``scores`` ``(Q, N)`` (NumPy, a memory map, or torch) or as features,
    ``queries`` ``(Q, d)`` and ``gallery`` ``(N, d)`` / ``(N, T, d)`` (scored as
    :func:`qure.score` does, a block of queries at a time, so no ``Q x N`` matrix is held).
    Ranks are 0-based, score descending, ties by ascending index, as the miner ranks.

    Args:
        out: the output folder (created; an earlier page there is replaced, any other
            non-empty folder is refused).
        targets: ``(Q,)`` gallery index of each query's target, ``-1`` where unknown.
        negatives: bands mined on these scores (a :class:`HardNegatives` or its ``.npz``
            file); each query's target rank must match the one computed here.
        images: the image pool: an ``(M, H, W[, C])`` array (uint8, or floats in [0, 1]) or
            ``M`` image file paths. The first ``N`` are the gallery; references not in the
            gallery may follow. One thumbnail is written per image shown.
        reference: ``(Q,)`` index into ``images`` of each query's reference image.
        texts: ``Q`` query texts.
        relevance: graded relevance, ``(Q, N)`` (dense), or per query a mapping
            ``{gallery index: grade}`` or a list of gallery indices (grade 1.0).
        query_ids: ``Q`` ids to show and search (default: the query's index).
        image_names: ``M`` names of the images (shown in tooltips and alt texts).
        exclude: items taken out of the ranking: ``(Q,)`` (one per query, e.g. CIRR's reference
            image) or one list per query. Not with ``negatives``, which index the full ranking.
        top: ranked items shown per query; curve: positions on the score curve.
        band_items: band members listed per query (all are counted).
        false_negative_grade: non-target items graded at least this count as false negatives.
        page_size: queries per data file; thumbnail_size: largest thumbnail side, pixels.
        title, notes: the page's title and ``key: value`` lines under it (model, split...).
    """
    started = time.perf_counter()
    spec = _Spec.check(
        targets=targets,
        scores=scores,
        queries=queries,
        gallery=gallery,
        negatives=negatives,
        images=images,
        reference=reference,
        texts=texts,
        relevance=relevance,
        query_ids=query_ids,
        image_names=image_names,
        exclude=exclude,
        top=top,
        curve=curve,
        band_items=band_items,
        false_negative_grade=false_negative_grade,
        page_size=page_size,
        thumbnail_size=thumbnail_size,
    )
    root = _prepare(Path(out))
    (root / "data").mkdir()
    builder = _Builder(spec, root)
    builder.run()
    shown = builder.shown_images()
    thumbnails = _write_thumbnails(root / "img", spec.images, shown, spec.thumbnail_size)
    if isinstance(spec.images, np.ndarray):
        image_size = min(max(spec.images.shape[1:3]), spec.thumbnail_size)
    else:
        image_size = spec.thumbnail_size
    summary = builder.summary(
        title=str(title),
        notes={str(k): str(v) for k, v in (notes or {}).items()},
        thumbnails=thumbnails,
        image_size=int(image_size),
    )
    _write_js(root / "data" / "summary.js", "qureInspectSummary", summary)
    (root / "index.html").write_text(_index_html(str(title)), encoding="utf-8")
    return InspectPage(
        index=root / "index.html",
        queries=spec.n_queries,
        pages=builder.pages_written,
        thumbnails=len(shown) if thumbnails else 0,
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------------------------
# Checking the inputs


def _count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _to_numpy(x: Any) -> Any:
    if is_torch_tensor(x):
        x = x.detach().cpu()
        return x.float().numpy() if x.is_floating_point() else x.numpy()
    return x


def _index_vector(x: Any, name: str, length: int, low: int, high: int) -> np.ndarray:
    array = np.asarray(_to_numpy(x))
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(array.shape)}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if length and (array.min() < low or array.max() >= high):
        bad = int(np.nonzero((array < low) | (array >= high))[0][0])
        raise ValueError(f"{name}[{bad}] = {array[bad]} is outside {low}..{high - 1}")
    return array


def _strings(values: Any, name: str, length: int) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a sequence of {length} strings")
    if len(values) != length:
        raise ValueError(f"{name} has {len(values)} entries for {length} items")
    return [str(v) for v in values]


@dataclass
class _Spec:
    """The checked inputs."""

    n_queries: int
    n_gallery: int
    scores: np.ndarray | None
    queries: np.ndarray | None
    gallery: np.ndarray | None
    targets: np.ndarray
    negatives: HardNegatives | None
    images: np.ndarray | list[Path] | None
    reference: np.ndarray | None
    texts: list[str] | None
    relevance: np.ndarray | list[dict[int, float]] | None
    query_ids: list[str] | None
    image_names: list[str] | None
    exclude: tuple[np.ndarray, np.ndarray] | None
    top: int
    window: int
    band_items: int
    fn_grade: float
    page_size: int
    thumbnail_size: int

    @classmethod
    def check(cls, **kw: Any) -> _Spec:
        scores, queries, gallery = kw["scores"], kw["queries"], kw["gallery"]
        if scores is not None:
            if queries is not None or gallery is not None:
                raise ValueError("give either scores or queries and gallery features, not both")
            scores = _to_numpy(scores)
            if not isinstance(scores, np.ndarray):
                scores = np.asarray(scores)
            if scores.ndim != 2:
                raise ValueError(f"scores must be 2-D (Q, N), got shape {tuple(scores.shape)}")
            if scores.dtype.kind not in "fiu":
                raise TypeError(f"scores must hold real numbers, got dtype {scores.dtype}")
            n_queries, n_gallery = (int(s) for s in scores.shape)
        elif queries is not None and gallery is not None:
            queries = as_float32_matrix(queries, "queries", ndim=2)
            g = _to_numpy(gallery)
            g_ndim = np.ndim(g)
            if g_ndim not in (2, 3):
                raise ValueError(f"gallery must be (N, d) or (N, T, d), got {g_ndim}-D")
            gallery = as_float32_matrix(g, "gallery", ndim=g_ndim)
            if queries.shape[1] != gallery.shape[-1]:
                raise ValueError(
                    f"queries have {queries.shape[1]} features but the gallery has "
                    f"{gallery.shape[-1]}"
                )
            n_queries, n_gallery = queries.shape[0], gallery.shape[0]
        else:
            raise ValueError("write_page needs scores, or queries and gallery features")
        if n_gallery < 1:
            raise ValueError("the gallery is empty")

        targets = kw["targets"]
        if targets is None:
            targets = np.full(n_queries, -1, dtype=np.int64)
        else:
            targets = _index_vector(targets, "targets", n_queries, -1, n_gallery)

        negatives = kw["negatives"]
        if negatives is not None:
            if not isinstance(negatives, HardNegatives):
                if not isinstance(negatives, (str, os.PathLike)):
                    raise TypeError(
                        "negatives must be a HardNegatives or the path of its .npz file, got "
                        f"{type(negatives).__name__}"
                    )
                negatives = HardNegatives.load(negatives)
            if len(negatives) != n_queries:
                raise ValueError(f"negatives hold {len(negatives)} queries, scores {n_queries}")
            if kw["targets"] is None:
                raise ValueError("negatives need the targets they were mined for")
            if kw["exclude"] is not None:
                raise ValueError(
                    "exclude cannot go with negatives: bands are mined over the full ranking"
                )
            if negatives.indices.size and int(negatives.indices.max()) >= n_gallery:
                raise ValueError(f"negatives index items beyond the gallery of {n_gallery}")

        images, names = kw["images"], kw["image_names"]
        n_images = np.iinfo(np.int64).max  # without images, references may lie beyond the gallery
        if images is not None:
            images = _check_images(images)
            n_images = len(images)
            if n_images < n_gallery:
                raise ValueError(f"{n_images} images for a gallery of {n_gallery}")
        if names is not None:
            sized = isinstance(names, (Sequence, np.ndarray)) and not isinstance(names, str)
            expected = len(names) if images is None and sized else n_images
            names = _strings(names, "image_names", expected)
            n_images = len(names)
            if n_images < n_gallery:
                raise ValueError(f"{n_images} image names for a gallery of {n_gallery}")
        reference = kw["reference"]
        if reference is not None:
            reference = _index_vector(reference, "reference", n_queries, 0, n_images)
        texts = None if kw["texts"] is None else _strings(kw["texts"], "texts", n_queries)
        query_ids = kw["query_ids"]
        if query_ids is not None:
            query_ids = _strings(query_ids, "query_ids", n_queries)
        relevance = _check_relevance(kw["relevance"], n_queries, n_gallery)
        exclude = None
        if kw["exclude"] is not None:
            ex = _to_numpy(kw["exclude"])
            if isinstance(ex, np.ndarray) and ex.ndim == 1:
                ex = _index_vector(ex, "exclude", n_queries, 0, n_gallery)
                exclude = (np.arange(n_queries + 1, dtype=np.int64), ex)
            else:
                exclude = as_ragged_indices(ex, "exclude", n_queries)
                if exclude[1].size and int(exclude[1].max()) >= n_gallery:
                    raise ValueError(f"exclude holds items beyond the gallery of {n_gallery}")

        top = min(_count(kw["top"], "top", 1), n_gallery)
        window = max(top, min(_count(kw["curve"], "curve", 2), n_gallery))
        grade = kw["false_negative_grade"]
        if isinstance(grade, bool) or not isinstance(grade, (int, float, np.number)):
            raise TypeError(f"false_negative_grade must be a number, got {grade!r}")
        if not math.isfinite(float(grade)):
            raise ValueError(f"false_negative_grade must be finite, got {grade}")
        return cls(
            n_queries=n_queries,
            n_gallery=n_gallery,
            scores=scores,
            queries=queries,
            gallery=gallery,
            targets=targets,
            negatives=negatives,
            images=images,
            reference=reference,
            texts=texts,
            relevance=relevance,
            query_ids=query_ids,
            image_names=names,
            exclude=exclude,
            top=top,
            window=window,
            band_items=_count(kw["band_items"], "band_items", 0),
            fn_grade=float(grade),
            page_size=_count(kw["page_size"], "page_size", 1),
            thumbnail_size=_count(kw["thumbnail_size"], "thumbnail_size", 8),
        )


def _check_images(images: Any) -> np.ndarray | list[Path]:
    images = _to_numpy(images)
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ValueError(
                "image arrays must be (M, H, W), (M, H, W, 1), (M, H, W, 3) or (M, H, W, 4) "
                f"(channels last), got shape {tuple(images.shape)}"
            )
        if images.dtype.kind not in "fiu":
            raise TypeError(f"images must hold numbers, got dtype {images.dtype}")
        return images
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(
            "images must be an (M, H, W[, C]) array or a sequence of image file paths, got "
            f"{type(images).__name__}"
        )
    paths = []
    for i, p in enumerate(images):
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"images[{i}] must be a path, got {type(p).__name__}")
        paths.append(Path(p))
    return paths


def _check_relevance(
    relevance: Any, n_queries: int, n_gallery: int
) -> np.ndarray | list[dict[int, float]] | None:
    if relevance is None:
        return None
    relevance = _to_numpy(relevance)
    if isinstance(relevance, np.ndarray) and relevance.dtype.kind in "fiub":
        if relevance.shape != (n_queries, n_gallery):
            raise ValueError(
                f"relevance must be (Q, N) = ({n_queries}, {n_gallery}), got "
                f"{tuple(relevance.shape)}"
            )
        return relevance
    if isinstance(relevance, (str, bytes)) or not isinstance(relevance, Sequence):
        raise TypeError(
            "relevance must be a (Q, N) array or one {gallery index: grade} mapping or index "
            f"list per query, got {type(relevance).__name__}"
        )
    if len(relevance) != n_queries:
        raise ValueError(f"relevance has {len(relevance)} entries for {n_queries} queries")
    rows: list[dict[int, float]] = []
    for q, row in enumerate(relevance):
        if isinstance(row, Mapping):
            items = [(int(k), float(v)) for k, v in row.items()]
        else:
            items = [(int(k), 1.0) for k in np.asarray(_to_numpy(row)).reshape(-1)]
        for k, v in items:
            if not 0 <= k < n_gallery:
                raise ValueError(f"relevance[{q}] names item {k} outside the gallery")
            if not math.isfinite(v):
                raise ValueError(f"relevance[{q}][{k}] is not finite")
        rows.append(dict(items))
    return rows


# ---------------------------------------------------------------------------------------------
# Output folder and files


def _prepare(root: Path) -> Path:
    """Creates ``root``, or empties an earlier page there; refuses any other non-empty folder."""
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"{root} exists and is not a folder")
        index = root / "index.html"
        contents = list(root.iterdir())
        if contents:
            if not index.is_file() or MARKER not in index.read_text(errors="replace")[:4000]:
                raise ValueError(
                    f"{root} is not empty and holds no earlier qure inspect page: choose an "
                    "empty or new folder"
                )
            for name in ("data", "img"):
                if (root / name).is_dir():
                    shutil.rmtree(root / name)
            index.unlink()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_js(path: Path, callback: str, payload: Any, *args: Any) -> None:
    head = "".join(f"{json.dumps(a)}," for a in args)
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    # "</" cannot end a script element when the data is loaded by a <script> tag.
    text = text.replace("</", "<\\/")
    path.write_text(f"{callback}({head}{text});\n", encoding="utf-8")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _index_html(title: str) -> str:
    assets = resources.files(__name__) / "assets"
    html = (assets / "index.html").read_text(encoding="utf-8")
    css = (assets / "style.css").read_text(encoding="utf-8")
    js = (assets / "app.js").read_text(encoding="utf-8")
    escaped = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        html.replace("/*STYLE*/", css)
        .replace("/*SCRIPT*/", js)
        .replace("{{TITLE}}", escaped)
        .replace("{{MARKER}}", MARKER)
    )


def image_path(index: int, ext: str) -> str:
    """Where image ``index``'s thumbnail lies, relative to the page folder."""
    return f"img/{index // IMAGES_PER_FOLDER}/{index}.{ext}"


def _write_thumbnails(
    folder: Path, images: np.ndarray | list[Path] | None, shown: np.ndarray, size: int
) -> str | None:
    """Writes one thumbnail per shown image; returns the file extension (None: no images)."""
    if images is None or not shown.size:
        return None
    ext = "png" if isinstance(images, np.ndarray) else "jpg"
    for sub in np.unique(shown // IMAGES_PER_FOLDER):
        (folder / str(int(sub))).mkdir(parents=True, exist_ok=True)
    writer = _thumbnail_writer(images, size)

    def job(chunk: np.ndarray) -> None:
        for i in chunk:
            writer(int(i), folder.parent / image_path(int(i), ext))

    workers = max(1, min(8, os.cpu_count() or 1))
    chunks = np.array_split(shown, max(1, min(len(shown), workers * 4)))
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(job, c) for c in chunks]:
            future.result()
    return ext


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind == "f":
        return (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


def _thumbnail_writer(images: np.ndarray | list[Path], size: int) -> Any:
    try:
        from PIL import Image as pil
    except ImportError:  # matplotlib (the demo extra) brings Pillow along
        raise ImportError("writing thumbnails needs Pillow: pip install pillow") from None

    def write_array(i: int, path: Path) -> None:
        image = _as_uint8(np.asarray(images[i]))
        picture = pil.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        if max(picture.size) > size:
            picture.thumbnail((size, size))
        picture.save(path, format="PNG", compress_level=1)

    def write_file(i: int, path: Path) -> None:
        source = images[i]
        if not Path(source).is_file():
            raise FileNotFoundError(f"image not found: {source}")
        with pil.open(source) as opened:
            opened.draft("RGB", (size, size))  # JPEGs decode at a reduced size
            picture = opened.convert("RGB")
        picture.thumbnail((size, size))
        picture.save(path, format="JPEG", quality=85)

    return write_array if isinstance(images, np.ndarray) else write_file


# ---------------------------------------------------------------------------------------------
# Per query data


def _row_ranks(
    row: np.ndarray, sorted_row: np.ndarray, items: np.ndarray, columns: np.ndarray
) -> np.ndarray:
    """Exact ranks of ``items`` in ``row`` (score descending, ties by ascending index)."""
    values = row[items]
    above = row.shape[0] - np.searchsorted(sorted_row, values, side="right")
    ties = np.searchsorted(sorted_row, values, side="right") - np.searchsorted(
        sorted_row, values, side="left"
    )
    ranks = above.astype(np.int64)
    for j in np.nonzero(ties > 1)[0]:
        g = items[j]
        ranks[j] += int(np.count_nonzero((row == values[j]) & (columns < g)))
    return ranks


class _Builder:
    """Computes every query's data, a block of queries at a time, and writes the pages."""

    def __init__(self, spec: _Spec, root: Path) -> None:
        self.spec = spec
        self.root = root
        q = spec.n_queries
        self.columns = np.arange(spec.n_gallery)
        self.rank = np.full(q, -1, dtype=np.int64)
        self.band_size = np.full(q, -1, dtype=np.int64)
        self.band_start = np.full(q, -1, dtype=np.int64)
        self.fn_top = np.full(q, -1, dtype=np.int64)
        self.fn_above = np.full(q, -1, dtype=np.int64)
        self.fn_band = np.full(q, -1, dtype=np.int64)
        self.fn_total = np.full(q, -1, dtype=np.int64)
        self.used: list[np.ndarray] = []
        self.pages_written = 0
        self._page: list[dict[str, Any]] = []
        self._curves: list[np.ndarray] = []
        self._grades: list[np.ndarray] = []

    # -- scores

    def _block_scores(self, start: int, stop: int) -> np.ndarray:
        spec = self.spec
        if spec.scores is not None:
            block = np.array(spec.scores[start:stop], dtype=np.float32)
        else:
            from ..retrieval import score

            assert spec.queries is not None and spec.gallery is not None
            block = np.asarray(score(spec.queries[start:stop], spec.gallery))
        bad = ~np.isfinite(block)
        if bad.any():
            row = start + int(np.nonzero(bad.any(axis=1))[0][0])
            raise ValueError(f"scores of query {row} hold NaN or infinity")
        return block

    def run(self) -> None:
        spec = self.spec
        rows = max(1, min(spec.page_size, _BLOCK_ELEMENTS // spec.n_gallery))
        for start in range(0, spec.n_queries, rows):
            stop = min(spec.n_queries, start + rows)
            self._block(start, self._block_scores(start, stop))
        if self._page:
            self._flush()

    def _block(self, start: int, block: np.ndarray) -> None:
        spec = self.spec
        b, n = block.shape
        excluded = np.zeros(block.shape, dtype=bool)
        if spec.exclude is not None:
            indptr, indices = spec.exclude
            for r in range(b):
                q = start + r
                excluded[r, indices[indptr[q] : indptr[q + 1]]] = True
            block[excluded] = -np.inf
        k = spec.window
        if k < n:
            part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(self.columns, (b, n)).copy()
        values = np.take_along_axis(block, part, axis=1)
        order = np.lexsort((part, -values), axis=-1)
        ranked = np.take_along_axis(part, order, axis=1)
        ranked_values = np.take_along_axis(values, order, axis=1)
        if k < n:  # ties at the window's edge: argpartition may have kept the wrong ones
            last = ranked_values[:, -1:]
            tied = (block == last).sum(axis=1) > (ranked_values == last).sum(axis=1)
            for r in np.nonzero(tied)[0].tolist():
                full = np.lexsort((self.columns, -block[r]))[:k]
                ranked[r], ranked_values[r] = full, block[r, full]
        gone = np.isneginf(ranked_values)  # excluded items, only when few are left
        ranked[gone] = -1
        ranked_values[gone] = np.nan

        targets = spec.targets[start : start + b]
        has_target = targets >= 0
        safe = np.where(has_target, targets, 0)
        t_scores = block[np.arange(b), safe][:, None]
        ahead = (block > t_scores) | ((block == t_scores) & (self.columns < safe[:, None]))
        ranks = np.where(has_target, ahead.sum(axis=1), -1)
        bad = has_target & excluded[np.arange(b), safe]
        if bad.any():
            raise ValueError(f"query {start + int(np.nonzero(bad)[0][0])} excludes its own target")
        self.rank[start : start + b] = ranks
        negatives = spec.negatives
        if negatives is not None:
            mined = negatives.target_rank[start : start + b]
            wrong = has_target & (mined >= 0) & (mined != ranks)
            if wrong.any():
                r = int(np.nonzero(wrong)[0][0])
                raise ValueError(
                    f"the bands were not mined on these scores: query {start + r}'s target "
                    f"ranks {ranks[r]} here and {mined[r]} in the bands"
                )

        needs_sort = negatives is not None or spec.relevance is not None
        sorted_block = np.sort(block, axis=1) if needs_sort else None
        for r in range(b):
            self._query(start + r, block[r], ranked[r], ranked_values[r], sorted_block, r)

    def _query(
        self,
        q: int,
        row: np.ndarray,
        ranked: np.ndarray,
        ranked_values: np.ndarray,
        sorted_block: np.ndarray | None,
        r: int,
    ) -> None:
        spec = self.spec
        top = ranked[: spec.top]
        target = int(spec.targets[q])
        rank = int(self.rank[q])
        record: dict[str, Any] = {
            "q": q,
            "ref": -1 if spec.reference is None else int(spec.reference[q]),
            "target": target,
            "rank": rank,
            "top": top.tolist(),
        }
        used = [top[top >= 0]]
        if target >= 0:
            used.append(np.array([target]))
        if spec.reference is not None:
            used.append(np.array([spec.reference[q]]))
        sorted_row = None if sorted_block is None else sorted_block[r]

        def value_at(position: int) -> float:
            """The score at a 0-based rank (the same whatever the tie order)."""
            if position < len(ranked_values):
                return float(ranked_values[position])
            assert sorted_row is not None
            return float(sorted_row[row.shape[0] - 1 - position])

        band_row = None
        band_start = band_end = -1
        whole_band = False  # the band is every item of its ranks (nothing was removed from it)

        def in_band(items: np.ndarray, item_ranks: np.ndarray) -> np.ndarray:
            if band_row is None or not band_row.size:
                return np.zeros(len(items), dtype=bool)
            if whole_band:
                return (item_ranks >= band_start) & (item_ranks <= band_end)
            return np.isin(items, band_row)

        if spec.negatives is not None:
            assert sorted_row is not None
            neg = spec.negatives
            band_row = neg.indices[neg.indptr[q] : neg.indptr[q + 1]]
            a, b = (int(v) for v in neg.drops[q])
            size = int(band_row.shape[0])
            self.band_size[q] = size
            band: dict[str, Any] = {"size": size, "drops": [a, b], "tail": None}
            if neg.tail_length is not None:
                band["tail"] = int(neg.tail_length[q])
            if a >= 0 and rank >= 0:
                band_start, band_end = rank + a + 2, rank + b + 1
                self.band_start[q] = band_start
                band["start"], band["end"] = band_start, band_end
                whole_band = size == b - a
                band["dropsize"] = [
                    round(value_at(band_start - 1) - value_at(band_start), 6),
                    round(value_at(band_end) - value_at(band_end + 1), 6)
                    if band_end + 1 < row.shape[0]
                    else None,
                ]
            listed = band_row[: spec.band_items]
            item_ranks = _row_ranks(row, sorted_row, listed, self.columns)
            band["items"] = [
                [int(g), int(rk), round(float(row[g]), 6), gr]
                for g, rk, gr in zip(listed, item_ranks, self._grades_of(q, listed))
            ]
            positions = np.arange(len(top))
            band["intop"] = positions[in_band(top, positions) & (top >= 0)].tolist()
            record["band"] = band
            used.append(listed)
        if spec.relevance is not None:
            assert sorted_row is not None
            fn = self._false_negatives(q, target, row)
            fn_ranks = _row_ranks(row, sorted_row, fn, self.columns)
            if spec.exclude is not None:
                keep = np.isfinite(row[fn])
                fn, fn_ranks = fn[keep], fn_ranks[keep]
            by_rank = np.argsort(fn_ranks, kind="stable")
            fn, fn_ranks = fn[by_rank], fn_ranks[by_rank]
            self.fn_total[q] = len(fn)
            self.fn_top[q] = int((fn_ranks < spec.top).sum())
            info: dict[str, Any] = {"count": len(fn), "top": int(self.fn_top[q])}
            fn_in_band = in_band(fn, fn_ranks)
            if band_row is not None:
                self.fn_band[q] = int(fn_in_band.sum())
                info["band"] = int(self.fn_band[q])
                if band_start >= 0:
                    above = (fn_ranks > rank) & (fn_ranks < band_start)
                    self.fn_above[q] = int(above.sum())
                    info["above"] = int(self.fn_above[q])
            listed = fn[:_MAX_FN_LISTED]
            info["items"] = [
                [int(g), int(rk), gr, round(float(row[g]), 6), int(ib)]
                for g, rk, gr, ib in zip(
                    listed, fn_ranks[:_MAX_FN_LISTED], self._grades_of(q, listed), fn_in_band
                )
            ]
            record["fn"] = info
            used.append(listed)
            top_grades = np.full(spec.top, np.nan, dtype=np.float32)
            shown = top >= 0
            top_grades[shown] = self._grades_array(q, top[shown])
            self._grades.append(top_grades)
        self.used.append(np.concatenate(used).astype(np.int64))
        curve = np.full(spec.window, np.nan, dtype=np.float32)
        curve[: len(ranked_values)] = ranked_values
        self._curves.append(curve)
        if spec.image_names is not None:
            names = np.unique(np.concatenate(used).astype(np.int64))
            record["names"] = {str(int(i)): spec.image_names[int(i)] for i in names if i >= 0}
        self._page.append(record)
        if len(self._page) == spec.page_size:
            self._flush()

    def _grades_array(self, q: int, items: np.ndarray) -> np.ndarray:
        relevance = self.spec.relevance
        if relevance is None:
            return np.full(len(items), np.nan, dtype=np.float32)
        if isinstance(relevance, np.ndarray):
            return np.asarray(relevance[q, items], dtype=np.float32)
        row = relevance[q]
        return np.array([row.get(int(i), 0.0) for i in items], dtype=np.float32)

    def _grades_of(self, q: int, items: np.ndarray) -> list[float | None]:
        if self.spec.relevance is None:
            return [None] * len(items)
        return [round(float(v), 4) for v in self._grades_array(q, items)]

    def _false_negatives(self, q: int, target: int, row: np.ndarray) -> np.ndarray:
        relevance, grade = self.spec.relevance, self.spec.fn_grade
        if isinstance(relevance, np.ndarray):
            items = np.nonzero(relevance[q] >= grade)[0]
        else:
            assert relevance is not None
            items = np.array(sorted(k for k, v in relevance[q].items() if v >= grade))
        items = items.astype(np.int64)
        return items[items != target]

    def _flush(self) -> None:
        page = self.pages_written
        payload: dict[str, Any] = {
            "start": self._page[0]["q"],
            "queries": self._page,
            "curve": _b64(np.stack(self._curves)),
        }
        if self._grades:
            payload["grades"] = _b64(np.stack(self._grades))
        _write_js(self.root / "data" / f"p{page:05d}.js", "qureInspectPage", payload, page)
        self.pages_written += 1
        self._page, self._curves, self._grades = [], [], []

    # -- summary

    def shown_images(self) -> np.ndarray:
        if not self.used:
            return np.zeros(0, dtype=np.int64)
        shown = np.unique(np.concatenate(self.used))
        return shown[shown >= 0]

    def summary(
        self, *, title: str, notes: dict[str, str], thumbnails: str | None, image_size: int
    ) -> dict[str, Any]:
        spec = self.spec
        columns: dict[str, Any] = {"rank": self.rank.tolist()}
        if spec.query_ids is not None:
            columns["id"] = spec.query_ids
        if spec.texts is not None:
            columns["text"] = spec.texts
        if spec.negatives is not None:
            columns["band_size"] = self.band_size.tolist()
            columns["band_start"] = self.band_start.tolist()
        if spec.relevance is not None:
            columns["fn_total"] = self.fn_total.tolist()
            columns["fn_top"] = self.fn_top.tolist()
            if spec.negatives is not None:
                columns["fn_band"] = self.fn_band.tolist()
                columns["fn_above"] = self.fn_above.tolist()
        return {
            "version": FORMAT_VERSION,
            "title": title,
            "notes": notes,
            "queries": spec.n_queries,
            "gallery": spec.n_gallery,
            "page_size": spec.page_size,
            "pages": self.pages_written,
            "top": spec.top,
            "window": spec.window,
            "fn_grade": spec.fn_grade if spec.relevance is not None else None,
            "bands": spec.negatives is not None,
            "relevance": spec.relevance is not None,
            "images": thumbnails,
            "images_per_folder": IMAGES_PER_FOLDER,
            "image_size": image_size,
            "columns": columns,
        }
