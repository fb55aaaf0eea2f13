"""Two-steep-drop hard-negative mining (QuRe) on score matrices."""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from . import _core
from ._arrays import (
    as_float32_matrix,
    as_ids,
    as_index_vector,
    as_int_array,
    as_ragged_indices,
    check_choice,
    check_int,
)

__all__ = [
    "FILTER_NAMES",
    "PAIRINGS",
    "RECORD_FORMATS",
    "SAMPLINGS",
    "STRATEGIES",
    "HardNegatives",
    "MiningArguments",
    "mine_negatives",
    "tail_lengths",
]

BOTTOM_FRACTION = 0.1
"""A band that starts in the last ``BOTTOM_FRACTION`` of its tail sits "at the bottom"."""
SPAN_FRACTION = 0.5
"""A band covering more than ``SPAN_FRACTION`` of its tail "spans" it."""
DEGENERATE_SHARE = 0.5
"""Above this share of degenerate bands (at the bottom or spanning), mining warns."""
MIN_WARN_TAIL = 100
"""No warning when the median tail is shorter than this: a band spanning half of a few dozen
items is no sign of trouble."""

Pairing = Literal["consecutive", "anchored"]
PAIRINGS = ("consecutive", "anchored")
Strategy = Literal["band", "topk", "window"]
STRATEGIES = ("band", "topk", "window")
"""Candidate sets: QuRe's two-drop band, a window from the top of the ranking, or after the
target."""
Sampling = Literal["top", "random", "simans"]
SAMPLINGS = ("top", "random", "simans")
"""How ``num_negatives`` survivors are chosen: the first ones, uniformly, or SimANS-weighted."""
REFERENCES = ("target", "lowest_positive")
FILTER_NAMES = ("excluded", "margin", "relative_margin", "max_score", "min_score")
"""The steps that remove candidates, in order (``excluded``: known positives and duplicate ids)."""
RECORD_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
"""sentence-transformers' output formats (:meth:`HardNegatives.to_records`)."""
_FIELDS = ("indptr", "indices", "target_rank", "drops")
_OPTIONAL_FIELDS = ("tail_length", "scores", "target_score", "removed")
_FLOAT_FIELDS = ("scores", "target_score")
_REMOVED_KEYS = ("candidates", *FILTER_NAMES)


@dataclass(frozen=True, eq=False)
class HardNegatives:
    """Mined hard-negative bands, one per query, in CSR form.

    ``negatives[i]`` is query ``i``'s band (gallery indices, int64, best-ranked first).
    ``target_rank[i]`` is the target's 0-based rank and ``drops[i]`` the tail positions
    ``(a, b)`` of the two chosen drops (``(-1, -1)`` when no pair qualified): the band is tail
    positions ``a + 1 ..= b``. ``tail_length[i]`` (when known; the miners fill it in) is how many
    items the rule looked at after the target: ``N - 1 - target_rank``, at most ``max_rank``.
    It locates the band within the tail (:meth:`diagnostics`) and is not part of ``==``.

    The miners also keep ``scores`` (float32, aligned with ``indices``: each mined item's
    score), ``target_score`` (each query's target score) and ``removed`` (how many candidates
    were examined, ``"candidates"``, and how many each step removed: see ``FILTER_NAMES``);
    :meth:`stats` summarises them. For candidate sets other than the band, ``drops`` is -1.
    """

    indptr: np.ndarray
    indices: np.ndarray
    target_rank: np.ndarray
    drops: np.ndarray
    tail_length: np.ndarray | None = None
    scores: np.ndarray | None = None
    target_score: np.ndarray | None = None
    removed: dict[str, int] | None = None

    def __post_init__(self) -> None:
        q = self.target_rank.shape[0]
        if self.indptr.shape != (q + 1,) or self.drops.shape != (q, 2):
            raise ValueError(
                f"inconsistent HardNegatives: indptr {self.indptr.shape}, "
                f"target_rank {self.target_rank.shape}, drops {self.drops.shape}"
            )
        if self.tail_length is not None and self.tail_length.shape != (q,):
            raise ValueError(
                f"inconsistent HardNegatives: tail_length {self.tail_length.shape} for {q} queries"
            )
        if q and (self.indptr[0] != 0 or self.indptr[-1] != self.indices.shape[0]):
            raise ValueError("inconsistent HardNegatives: indptr does not span indices")
        if self.scores is not None and self.scores.shape != self.indices.shape:
            raise ValueError(
                f"inconsistent HardNegatives: scores {self.scores.shape} for indices "
                f"{self.indices.shape}"
            )
        if self.target_score is not None and self.target_score.shape != (q,):
            raise ValueError(
                f"inconsistent HardNegatives: target_score {self.target_score.shape} for {q} "
                "queries"
            )

    @classmethod
    def from_bands(
        cls,
        bands: Any,
        *,
        target_rank: Any = None,
        drops: Any = None,
        tail_length: Any = None,
    ) -> HardNegatives:
        """Bands given as one gallery-index list per query (or anything with ``indptr`` and
        ``indices``), in CSR form. ``target_rank`` and ``drops`` default to -1 (unknown: bands
        that no two-drop rule chose, e.g. top-k negatives); ``tail_length`` to unknown."""
        indptr, indices = as_ragged_indices(bands, "bands")
        q = indptr.shape[0] - 1
        rank = np.full(q, -1, dtype=np.int64)
        if target_rank is not None:
            rank = as_index_vector(target_rank, "target_rank", length=q)
        pair = np.full((q, 2), -1, dtype=np.int64)
        if drops is not None:
            pair = as_int_array(drops, "drops", ndim=2)
        tails = None if tail_length is None else as_index_vector(tail_length, "tail_length", q)
        return cls(indptr=indptr, indices=indices, target_rank=rank, drops=pair, tail_length=tails)

    @property
    def sizes(self) -> np.ndarray:
        """Band size per query (after exclusions)."""
        return np.diff(self.indptr)

    @property
    def empty(self) -> np.ndarray:
        """Boolean mask of queries whose band is empty."""
        return self.sizes == 0

    def __len__(self) -> int:
        return int(self.target_rank.shape[0])

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"query {i} out of range for {n} queries")
        i %= n
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HardNegatives):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f), getattr(other, f))
            for f in ("indptr", "indices", "target_rank", "drops")
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        sizes = self.sizes
        if len(self) == 0:
            return "HardNegatives(queries=0)"
        return (
            f"HardNegatives(queries={len(self)}, band size mean={sizes.mean():.1f} "
            f"median={np.median(sizes):g}, empty={int((sizes == 0).sum())})"
        )

    def diagnostics(self) -> dict[str, float]:
        """Where the bands sit in their tails: the numbers that show a degenerate rule.

        On a smooth score curve the largest gaps between sorted scores sit at its extremes, so
        the whole-tail rule often puts the band among the lowest-scored items (the easiest
        negatives there are) or makes it span the tail. Keys: ``queries``, ``with_band`` (share of
        non-empty bands), ``band_mean``, ``band_median``, ``tail_median``, ``start_q10/50/90``
        and ``end_q10/50/90`` (quantiles of the band's first and last tail position, as a
        fraction of the tail: 0 is just after the target, 1 its end), ``at_bottom`` (share of
        bands starting in the last ``BOTTOM_FRACTION`` of the tail), ``spanning`` (share
        covering more than ``SPAN_FRACTION`` of it) and ``degenerate`` (either). Shares are over
        queries with a non-empty band; NaN where there is none. Needs ``tail_length``.
        """
        if self.tail_length is None:
            raise ValueError(
                "these bands carry no tail_length (mined by an older qure or built by hand): "
                "mine again to get diagnostics"
            )
        sizes = self.sizes
        picked = self.drops[:, 0] >= 0
        tails = self.tail_length[picked].astype(np.float64)
        start = (self.drops[picked, 0] + 1) / tails  # first band position, as a tail fraction
        end = self.drops[picked, 1] / tails
        width = (self.drops[picked, 1] - self.drops[picked, 0]) / tails
        at_bottom = start >= 1.0 - BOTTOM_FRACTION
        spanning = width > SPAN_FRACTION
        nan = math.nan

        def share(mask: np.ndarray) -> float:
            return float(mask.mean()) if mask.size else nan

        def quantile(values: np.ndarray, q: float) -> float:
            return float(np.quantile(values, q)) if values.size else nan

        q = len(self)
        return {
            "queries": float(q),
            "with_band": float((sizes > 0).mean()) if q else nan,
            "band_mean": float(sizes.mean()) if q else nan,
            "band_median": float(np.median(sizes)) if q else nan,
            "tail_median": float(np.median(self.tail_length)) if q else nan,
            **{f"start_q{int(p * 100)}": quantile(start, p) for p in (0.1, 0.5, 0.9)},
            **{f"end_q{int(p * 100)}": quantile(end, p) for p in (0.1, 0.5, 0.9)},
            "at_bottom": share(at_bottom),
            "spanning": share(spanning),
            "degenerate": share(at_bottom | spanning),
        }

    def degenerate_warning(self) -> str | None:
        """A warning naming the fix when most bands are degenerate (see :meth:`diagnostics`)
        and the median tail holds at least ``MIN_WARN_TAIL`` items, else None (None too when
        ``tail_length`` is unknown)."""
        if self.tail_length is None or len(self) == 0:
            return None
        d = self.diagnostics()
        if not d["degenerate"] > DEGENERATE_SHARE or d["tail_median"] < MIN_WARN_TAIL:
            return None
        return (
            f"{100 * d['degenerate']:.0f}% of the hard-negative bands are degenerate "
            f"({100 * d['at_bottom']:.0f}% start in the bottom {100 * BOTTOM_FRACTION:.0f}% of "
            f"the ranking after the target, {100 * d['spanning']:.0f}% span more than half of "
            f"it; median band start at {100 * d['start_q50']:.0f}% of a tail of "
            f"{d['tail_median']:g} items): the two steepest drops are not near the target. "
            "Set max_rank to look for them only among the items ranked just after the target "
            "(qure's training default is 400; use a smaller window if the tails are already "
            "that short)."
        )

    def stats(self) -> dict[str, Any]:
        """What was mined, in numbers: ``queries``, ``empty`` (queries with nothing mined),
        ``band_size`` (distribution), ``scores`` (the ``positive`` (target), ``negative`` and
        ``difference`` (target minus negative, one per mined item) score distributions, when the
        scores are known) and ``removed`` (candidates examined and removed per step, with
        ``*_ratio`` shares of the candidates examined). Each distribution holds ``count``,
        ``mean``, ``std``, ``min``, ``25%``, ``50%``, ``75%`` and ``max`` (NaN when empty)."""
        sizes = self.sizes
        out: dict[str, Any] = {
            "queries": len(self),
            "empty": int((sizes == 0).sum()),
            "band_size": _describe(sizes),
        }
        if self.scores is not None and self.target_score is not None:
            rows = np.repeat(np.arange(len(self)), sizes)
            target = self.target_score.astype(np.float64)
            negative = self.scores.astype(np.float64)
            out["scores"] = {
                "positive": _describe(target),
                "negative": _describe(negative),
                "difference": _describe(target[rows] - negative),
            }
        if self.removed is not None:
            removed: dict[str, float] = dict(self.removed)
            seen = max(self.removed["candidates"], 1)
            for name in FILTER_NAMES:
                removed[f"{name}_ratio"] = self.removed[name] / seen
            out["removed"] = removed
        return out

    def format_stats(self) -> str:
        """:meth:`stats` as a table (as sentence-transformers prints it), and a line per
        filter that removed candidates."""
        stats = self.stats()
        lines = [
            f"{stats['queries']:,} queries, {stats['empty']:,} with nothing mined; "
            f"mined per query: mean {stats['band_size']['mean']:.2f}, "
            f"median {stats['band_size']['50%']:g}"
        ]
        if "scores" in stats:
            table = stats["scores"]
            lines.append(f"{'Metric':<8}{'Positive':>12}{'Negative':>12}{'Difference':>12}")
            for key in ("count", "mean", "std", "min", "25%", "50%", "75%", "max"):
                cells = [table[c][key] for c in ("positive", "negative", "difference")]
                text = [f"{v:,.0f}" if key == "count" else f"{v:.4f}" for v in cells]
                lines.append(f"{key.capitalize():<8}" + "".join(f"{t:>12}" for t in text))
        if "removed" in stats:
            removed = stats["removed"]
            for name in FILTER_NAMES:
                if removed[name]:
                    lines.append(
                        f"{name}: removed {removed[name]:,} of {removed['candidates']:,} "
                        f"candidates examined ({100 * removed[name + '_ratio']:.2f}%)"
                    )
        return "\n".join(lines)

    def to_records(
        self,
        format: str,
        target_idx: Any,
        *,
        anchors: Any = None,
        documents: Any = None,
        scores: bool = False,
        num_negatives: int | None = None,
        as_dataset: bool = False,
    ) -> Any:
        """The mined negatives in one of sentence-transformers' formats, as columns.

        ``format``: ``"triplet"`` (``anchor``, ``positive``, ``negative``: a row per mined
        item), ``"n-tuple"`` (``anchor``, ``positive``, ``negative_1`` .. ``negative_n``: a row
        per query with at least ``n`` negatives, ``n = num_negatives`` or the largest band),
        ``"labeled-pair"`` (``anchor``, ``positive``, ``label``: the positive with 1, each
        negative with 0) or ``"labeled-list"`` (``anchor``, ``positive`` (the positive and the
        negatives), ``labels``). ``target_idx``: each query's positive (gallery index);
        ``anchors`` (per query) and ``documents`` (per gallery item) name them (default: the
        indices). ``scores=True`` adds the scores (``scores``, or ``score`` in place of
        ``label``). Returns a dict of lists, or a ``datasets.Dataset`` with ``as_dataset``.
        """
        check_choice(format, "format", RECORD_FORMATS)
        targets = as_index_vector(target_idx, "target_idx", length=len(self))
        if scores and (self.scores is None or self.target_score is None):
            raise ValueError("these bands carry no scores: mine them again to export scores")
        names = list(range(len(self))) if anchors is None else list(anchors)
        if len(names) != len(self):
            raise ValueError(f"anchors has {len(names)} entries for {len(self)} queries")

        def doc(g: int) -> Any:
            return int(g) if documents is None else documents[int(g)]

        pos_scores = [] if self.target_score is None else self.target_score.tolist()
        neg_scores = [] if self.scores is None else self.scores.tolist()
        columns: dict[str, list[Any]] = {"anchor": [], "positive": []}
        bounds = self.indptr.tolist()
        if format == "triplet":
            columns["negative"] = []
            if scores:
                columns["scores"] = []
            for i, name in enumerate(names):
                for j in range(bounds[i], bounds[i + 1]):
                    columns["anchor"].append(name)
                    columns["positive"].append(doc(targets[i]))
                    columns["negative"].append(doc(self.indices[j]))
                    if scores:
                        columns["scores"].append([pos_scores[i], neg_scores[j]])
        elif format == "n-tuple":
            n = int(self.sizes.max(initial=0)) if num_negatives is None else num_negatives
            n = check_int(n, "num_negatives", 1)
            for k in range(1, n + 1):
                columns[f"negative_{k}"] = []
            if scores:
                columns["scores"] = []
            for i, name in enumerate(names):
                if bounds[i + 1] - bounds[i] < n:
                    continue
                columns["anchor"].append(name)
                columns["positive"].append(doc(targets[i]))
                for k in range(n):
                    columns[f"negative_{k + 1}"].append(doc(self.indices[bounds[i] + k]))
                if scores:
                    columns["scores"].append(
                        [pos_scores[i], *neg_scores[bounds[i] : bounds[i] + n]]
                    )
        elif format == "labeled-pair":
            label = "score" if scores else "label"
            columns[label] = []
            for i, name in enumerate(names):
                rows = [(targets[i], pos_scores[i] if scores else 1)]
                rows += [
                    (self.indices[j], neg_scores[j] if scores else 0)
                    for j in range(bounds[i], bounds[i + 1])
                ]
                for g, value in rows:
                    columns["anchor"].append(name)
                    columns["positive"].append(doc(g))
                    columns[label].append(value)
        else:  # labeled-list
            label = "scores" if scores else "labels"
            columns[label] = []
            for i, name in enumerate(names):
                if bounds[i + 1] == bounds[i]:
                    continue
                band = range(bounds[i], bounds[i + 1])
                columns["anchor"].append(name)
                columns["positive"].append([doc(targets[i]), *(doc(self.indices[j]) for j in band)])
                columns[label].append(
                    [pos_scores[i], *(neg_scores[j] for j in band)]
                    if scores
                    else [1, *([0] * len(band))]
                )
        if not as_dataset:
            return columns
        try:
            from datasets import Dataset
        except ImportError:
            raise ImportError(
                "as_dataset=True needs the datasets package: pip install datasets"
            ) from None
        return Dataset.from_dict(columns)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the bands (and what else is known of them) to a ``.npz`` file."""
        extra: dict[str, np.ndarray] = {}
        for name in ("tail_length", "scores", "target_score"):
            if getattr(self, name) is not None:
                extra[name] = getattr(self, name)
        if self.removed is not None:
            extra["removed"] = np.array([self.removed[k] for k in _REMOVED_KEYS], dtype=np.int64)
        np.savez(
            path,
            indptr=self.indptr,
            indices=self.indices,
            target_rank=self.target_rank,
            drops=self.drops,
            **extra,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HardNegatives:
        """Reads bands written by :meth:`save` (with or without ``tail_length``).

        Nothing is ever unpickled, and no array is allocated before its size has been checked
        against the file. Raises ``FileNotFoundError`` when ``path`` does not exist, and
        ``ValueError`` naming the path and the problem for anything else: an unreadable,
        truncated, corrupt or foreign file, or arrays that do not form consistent bands.
        """
        name = os.fspath(path)
        if not os.path.exists(name):
            raise FileNotFoundError(f"bands file not found: {name}")
        try:
            arrays = _read_npz(name, _FIELDS + _OPTIONAL_FIELDS)
            missing = [f for f in _FIELDS if f not in arrays]
            if missing:
                raise ValueError(f"it is not a HardNegatives file (missing {missing})")
            columns: dict[str, Any] = {
                f: (_as_float32(arrays[f], f) if f in _FLOAT_FIELDS else _as_int64(arrays[f], f))
                for f in arrays
            }
            removed = columns.pop("removed", None)
            if removed is not None:
                if removed.shape != (len(_REMOVED_KEYS),) or (removed < 0).any():
                    raise ValueError(f"removed must hold {len(_REMOVED_KEYS)} counts >= 0")
                columns["removed"] = dict(zip(_REMOVED_KEYS, removed.tolist()))
            _check_bands(columns)
            return cls(**columns)
        except (
            ValueError,  # what the checks raise, and NumPy for a malformed .npy header
            OSError,  # unreadable: permissions, a directory, an I/O error
            EOFError,
            zipfile.BadZipFile,  # a corrupt archive or a failed CRC
            zlib.error,  # corrupt compressed data
            NotImplementedError,  # an unsupported compression method
            RuntimeError,  # an encrypted archive
        ) as exc:
            raise ValueError(f"cannot load bands from {name}: {exc}") from None


def _read_npz(name: str, wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``wanted`` of the ``.npz`` file ``name`` (others are not read). Each member's
    ``.npy`` header is parsed first and its declared size checked against the member's size, so a
    truncated or forged file never makes this allocate what it does not hold; object dtypes
    (pickles) are refused."""
    out: dict[str, np.ndarray] = {}
    with open(name, "rb") as handle:
        if not zipfile.is_zipfile(handle):
            raise ValueError("it is not an .npz archive (not a zip file)")
        with zipfile.ZipFile(handle) as archive:
            for info in archive.infolist():
                key = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else None
                if key not in wanted or key in out:
                    continue
                with archive.open(info) as member:
                    out[key] = _read_npy(member, info.file_size, key)
    return out


def _read_npy(member: Any, size: int, key: str) -> np.ndarray:
    fmt = np.lib.format
    version = fmt.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(member)
    else:
        raise ValueError(f"array {key!r} has an unsupported .npy format version {version}")
    if dtype.hasobject:
        raise ValueError(f"array {key!r} holds Python objects (refused: it would need unpickling)")
    if key in _FLOAT_FIELDS:
        if dtype.kind != "f":
            raise ValueError(f"array {key!r} must hold floats, got dtype {dtype}")
    elif dtype.kind not in "iu":
        raise ValueError(f"array {key!r} must hold integers, got dtype {dtype}")
    nbytes = math.prod(shape) * dtype.itemsize
    held = size - member.tell()
    if nbytes != held:
        raise ValueError(
            f"array {key!r} declares shape {shape} of {dtype} ({nbytes} bytes) but holds "
            f"{held} bytes: the file is truncated or corrupt"
        )
    data = member.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"array {key!r} is truncated ({len(data)} of {nbytes} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _describe(values: np.ndarray) -> dict[str, float]:
    """Count, mean, std, min, quartiles and max of ``values`` (NaN when empty)."""
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {
            "count": 0.0,
            **dict.fromkeys(("mean", "std", "min", "25%", "50%", "75%", "max"), math.nan),
        }
    q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {
        "count": float(v.size),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "25%": float(q25),
        "50%": float(q50),
        "75%": float(q75),
        "max": float(v.max()),
    }


def _as_float32(array: np.ndarray, key: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ValueError(f"array {key!r} holds NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def _as_int64(array: np.ndarray, key: str) -> np.ndarray:
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"array {key!r} holds values too large for int64")
    return np.ascontiguousarray(array, dtype=np.int64)


def _check_bands(columns: dict[str, np.ndarray]) -> None:
    indptr, indices = columns["indptr"], columns["indices"]
    rank, drops = columns["target_rank"], columns["drops"]
    if indptr.ndim != 1 or indices.ndim != 1 or rank.ndim != 1 or drops.ndim != 2:
        raise ValueError(
            "arrays of the wrong dimensions: indptr "
            f"{indptr.shape}, indices {indices.shape}, target_rank {rank.shape}, "
            f"drops {drops.shape}"
        )
    q = rank.shape[0]
    if indptr.shape != (q + 1,) or drops.shape != (q, 2):
        raise ValueError(
            f"inconsistent arrays for {q} queries: indptr {indptr.shape}, drops {drops.shape}"
        )
    tail = columns.get("tail_length")
    if tail is not None and tail.shape != (q,):
        raise ValueError(f"tail_length has shape {tail.shape}, expected ({q},)")
    scores, target_score = columns.get("scores"), columns.get("target_score")
    if scores is not None and scores.shape != indices.shape:
        raise ValueError(f"scores has shape {scores.shape}, expected {indices.shape}")
    if target_score is not None and target_score.shape != (q,):
        raise ValueError(f"target_score has shape {target_score.shape}, expected ({q},)")
    if indptr[0] != 0 or indptr[-1] != indices.shape[0] or (np.diff(indptr) < 0).any():
        raise ValueError("indptr does not run from 0 to len(indices) without going backwards")
    if indices.size and int(indices.min()) < 0:
        raise ValueError("indices holds negative gallery indices")


def tail_lengths(target_rank: np.ndarray, n_gallery: int, max_rank: int | None) -> np.ndarray:
    """How many items the rule looks at after each target: ``N - 1 - rank``, capped at
    ``max_rank``."""
    tails = np.asarray(n_gallery - 1 - np.asarray(target_rank), dtype=np.int64)
    return tails if max_rank is None else np.minimum(tails, max_rank)


def _optional_real(value: Any, name: str) -> float | None:
    """``value`` as a finite float, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


@dataclass(frozen=True)
class MiningArguments:
    """A miner's settings, checked and converted for the native core (shared by every entry
    point that mines: scores, features, sharded)."""

    consecutive_threshold: int
    pairing: str
    max_rank: int | None
    positives_indptr: np.ndarray | None
    positives_indices: np.ndarray | None
    gallery_ids: np.ndarray | None
    strategy: str = "band"
    rank_range: tuple[int, int | None] = (0, None)
    margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    reference: str = "target"
    num_negatives: int | None = None
    sampling: str = "top"
    simans: tuple[float, float] = (1.0, 0.0)
    seed: int = 0
    first_query: int = 0

    @classmethod
    def check(
        cls,
        n_queries: int,
        n_gallery: int,
        *,
        consecutive_threshold: Any = 1,
        pairing: Any = "consecutive",
        max_rank: Any = None,
        positives: Any = None,
        gallery_ids: Any = None,
        strategy: Any = "band",
        rank_range: Any = None,
        margin: Any = None,
        relative_margin: Any = None,
        max_score: Any = None,
        min_score: Any = None,
        reference: Any = "target",
        num_negatives: Any = None,
        sampling: Any = "top",
        simans: Any = (1.0, 0.0),
        seed: Any = 0,
        first_query: Any = 0,
    ) -> MiningArguments:
        threshold = check_int(consecutive_threshold, "consecutive_threshold", 0, clamp=True)
        check_choice(pairing, "pairing", PAIRINGS)
        rank_limit = None if max_rank is None else check_int(max_rank, "max_rank", 1, clamp=True)
        pos_indptr = pos_indices = None
        if positives is not None:
            pos_indptr, pos_indices = as_ragged_indices(positives, "positives", n_queries)
        ids = None if gallery_ids is None else as_ids(gallery_ids, "gallery_ids", n_gallery)
        check_choice(strategy, "strategy", STRATEGIES)
        if strategy == "topk" and rank_limit is not None:
            raise ValueError(
                "max_rank bounds the tail after the target (band and window); a top-k window "
                "is rank_range=(start, end)"
            )
        window: tuple[int, int | None] = (0, None)
        if rank_range is not None:
            if strategy == "band":
                raise ValueError("rank_range needs strategy='topk' or 'window'")
            if not isinstance(rank_range, (tuple, list)) or len(rank_range) != 2:
                raise TypeError(f"rank_range must be a (start, end) pair, got {rank_range!r}")
            start = check_int(rank_range[0], "rank_range start", 0, clamp=True)
            end = None
            if rank_range[1] is not None:
                end = check_int(rank_range[1], "rank_range end", start + 1, clamp=True)
            window = (start, end)
        check_choice(reference, "reference", REFERENCES)
        k = None if num_negatives is None else check_int(num_negatives, "num_negatives", 1)
        check_choice(sampling, "sampling", SAMPLINGS)
        if not isinstance(simans, (tuple, list)) or len(simans) != 2:
            raise TypeError(f"simans must be an (a, b) pair, got {simans!r}")
        a, b = _optional_real(simans[0], "simans a"), _optional_real(simans[1], "simans b")
        if a is None or b is None or not a > 0:
            raise ValueError(f"simans must be (a, b) with a > 0, got {simans!r}")
        return cls(
            threshold,
            pairing,
            rank_limit,
            pos_indptr,
            pos_indices,
            ids,
            strategy=strategy,
            rank_range=window,
            margin=_optional_real(margin, "margin"),
            relative_margin=_optional_real(relative_margin, "relative_margin"),
            max_score=_optional_real(max_score, "max_score"),
            min_score=_optional_real(min_score, "min_score"),
            reference=reference,
            num_negatives=k,
            sampling=sampling,
            simans=(a, b),
            seed=check_int(seed, "seed", 0, 2**64 - 1),
            first_query=check_int(first_query, "first_query", 0, 2**63 - 1),
        )

    def native(self) -> dict[str, Any]:
        """The keyword arguments the native mining functions take."""
        return {
            "consecutive_threshold": self.consecutive_threshold,
            "pairing": self.pairing,
            "max_rank": self.max_rank,
            "positives_indptr": self.positives_indptr,
            "positives_indices": self.positives_indices,
            "gallery_ids": self.gallery_ids,
            "strategy": self.strategy,
            "rank_start": self.rank_range[0],
            "rank_end": self.rank_range[1],
            "margin": self.margin,
            "relative_margin": self.relative_margin,
            "max_score": self.max_score,
            "min_score": self.min_score,
            "reference": self.reference,
            "num_negatives": self.num_negatives,
            "sampling": self.sampling,
            "simans_a": self.simans[0],
            "simans_b": self.simans[1],
            "seed": self.seed,
            "first_query": self.first_query,
        }

    def negatives(self, mined: tuple[Any, ...], n_gallery: int) -> HardNegatives:
        """The native miners' output as :class:`HardNegatives`, with the tail lengths these
        settings imply (for candidate sets counted after the target)."""
        indptr, indices, target_rank, drops, scores, target_score, removed = mined
        tails = None
        if self.strategy != "topk":
            tails = tail_lengths(target_rank, n_gallery, self.max_rank)
        return HardNegatives(
            indptr=indptr,
            indices=indices,
            target_rank=target_rank,
            drops=drops,
            tail_length=tails,
            scores=scores,
            target_score=target_score,
            removed={k: int(removed[k]) for k in _REMOVED_KEYS},
        )


STRATEGY_DOC = """
        strategy: the candidate set. ``"band"`` (default): QuRe's band between the two
            steepest drops after the target (the arguments above). ``"topk"``: the ranking
            without the target, positions ``rank_range`` (default all: with ``num_negatives``
            the first survivors, as sentence-transformers' ``range_min``/``range_max`` and
            NV-Retriever's top-k). ``"window"``: tail positions ``rank_range`` after the target.
        rank_range: ``(start, end)`` positions for ``"topk"`` and ``"window"`` (``end`` None: to
            the end).
        margin: removes candidates with ``s + margin > r`` (sentence-transformers'
            ``absolute_margin``), ``r`` the reference score.
        relative_margin: removes ``s > r - |r| * relative_margin`` (sign-safe; NV-Retriever's
            TopK-PercPos with ``perc = 1 - relative_margin``: 0.05 for its best, perc 0.95).
        max_score, min_score: remove ``s > max_score`` and ``s < min_score``.
        reference: ``"target"`` (the target's score) or ``"lowest_positive"`` (the lowest of
            the target's and the known positives', as sentence-transformers with several).
        num_negatives: keep at most this many survivors per query (None: all).
        sampling: which ones: ``"top"`` (the first, by rank), ``"random"`` (uniformly) or
            ``"simans"`` (weights ``exp(-a (s - r - b)^2)``, SimANS, arXiv 2210.11773); the
            kept items stay in rank order. Random choices are a pure function of ``seed`` and
            the query.
        simans: SimANS's ``(a, b)``.
        seed: seeds ``"random"`` and ``"simans"``.
        first_query: the global index of the first row, when these queries are part of a
            larger set (random choices are keyed by the global query index, so a split set
            draws what the whole set would).
"""


def mine_negatives(
    scores: Any,
    target_idx: Any,
    *,
    consecutive_threshold: int = 1,
    pairing: Pairing = "consecutive",
    max_rank: int | None = None,
    positives: Any = None,
    gallery_ids: Any = None,
    strategy: Strategy = "band",
    rank_range: tuple[int, int | None] | None = None,
    margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    reference: Literal["target", "lowest_positive"] = "target",
    num_negatives: int | None = None,
    sampling: Sampling = "top",
    simans: tuple[float, float] = (1.0, 0.0),
    seed: int = 0,
    first_query: int = 0,
) -> HardNegatives:
    """Mines each query's hard negatives: by default the band between the two steepest score
    drops after the target (QuRe); the other published miners with ``strategy`` and filters.

    Args:
        scores: ``(Q, N)`` scores (NumPy or torch; float32 is read without a copy).
        target_idx: ``(Q,)`` gallery index of each query's annotated target.
        consecutive_threshold: the two drops must be more than this many positions apart.
        pairing: ``"consecutive"`` scans ``(1st, 2nd), (2nd, 3rd), ...`` steepest drops, as the
            released QuRe code does; ``"anchored"`` pairs the steepest drop with the first drop far
            enough from it (closer to the paper's Eq. 6-7).
        max_rank: look for the two drops only among the first ``max_rank`` items after the
            target. ``None`` is the released code's whole-tail rule; on smooth score curves its
            steepest drops tend to sit at the bottom of the ranking (see
            :meth:`HardNegatives.diagnostics`), and a window keeps the band near the target.
        positives: per query, other known positives (gallery indices), never mined.
        gallery_ids: ``(N,)`` id per gallery item (ints or names); items sharing the target's or a
            positive's id are dropped, and each id is kept once.{STRATEGY_DOC}
    Returns:
        HardNegatives: the mined items per query (best-ranked first; empty where nothing
        qualifies) with their scores, target ranks and scores, drops, and filter counts.
    """
    matrix = as_float32_matrix(scores, "scores")
    n_queries, n_gallery = matrix.shape
    targets = as_index_vector(target_idx, "target_idx")
    if targets.shape[0] != n_queries:
        raise ValueError(
            f"target_idx has {targets.shape[0]} entries but scores have {n_queries} rows"
        )
    args = MiningArguments.check(
        n_queries,
        n_gallery,
        consecutive_threshold=consecutive_threshold,
        pairing=pairing,
        max_rank=max_rank,
        positives=positives,
        gallery_ids=gallery_ids,
        strategy=strategy,
        rank_range=rank_range,
        margin=margin,
        relative_margin=relative_margin,
        max_score=max_score,
        min_score=min_score,
        reference=reference,
        num_negatives=num_negatives,
        sampling=sampling,
        simans=simans,
        seed=seed,
        first_query=first_query,
    )
    return args.negatives(_core.mine_negatives(matrix, targets, **args.native()), n_gallery)


if mine_negatives.__doc__:
    mine_negatives.__doc__ = mine_negatives.__doc__.replace("{STRATEGY_DOC}", STRATEGY_DOC)
