"""Evaluation metrics for composed image retrieval and for mined hard-negative bands.

All functions take NumPy arrays or torch tensors (converted to NumPy; nothing here needs torch)
and compute in float64:

* :func:`recall_at_k`: Recall@K in percent from the target ranks (FashionIQ, CIRR).
* :func:`ndcg_at_k`: nDCG@K of ranked lists against graded relevance.
* :func:`false_negative_rate`, :func:`band_stats`: how clean and how large mined bands are.
* :func:`set_scores`, :func:`preference_rate`: the HP-FashionIQ preference rate (QuRe, Eq. 8-9)
  with an oracle relevance in place of human raters.
* :func:`summarize`: mean and standard deviation over seeds/runs, ignoring NaN.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "band_stats",
    "false_negative_rate",
    "ndcg_at_k",
    "preference_rate",
    "recall_at_k",
    "set_scores",
    "summarize",
]


# --------------------------------------------------------------------------------------------
# input conversion


def _to_numpy(x: Any) -> np.ndarray:
    """``x`` as a NumPy array; torch tensors are detached and moved to the CPU first."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()  # NumPy has no bfloat16
    return np.asarray(x)


def _check_ndim(array: np.ndarray, name: str, ndim: int) -> None:
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(array.shape)}")


def _int_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` as an int64 array with ``ndim`` dimensions; floats and booleans are refused."""
    array = _to_numpy(x)
    _check_ndim(array, name, ndim)
    if array.dtype.kind not in "iu":
        if array.size == 0 and array.dtype.kind in "fO":  # e.g. np.asarray([]) is float64
            return np.zeros(array.shape, dtype=np.int64)
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values too large for int64")
    return array.astype(np.int64, copy=False)


def _real_array(x: Any, name: str, ndim: int, *, nonnegative: bool = False) -> np.ndarray:
    """``x`` as a finite float64 array with ``ndim`` dimensions (and ``>= 0`` if asked)."""
    array = _to_numpy(x)
    _check_ndim(array, name, ndim)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ValueError(f"{name} holds NaN or infinite values (first in row {row})")
    if nonnegative and (array < 0).any():
        row = int(np.argwhere(array < 0)[0][0])
        raise ValueError(f"{name} must be >= 0, found a negative value in row {row}")
    return array


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        k = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if k < 1:
        raise ValueError(f"{name} must be at least 1, got {k}")
    return k


def _check_range(indices: np.ndarray, name: str, upper: int, *, padding: bool = False) -> None:
    """Every index in ``[0, upper)`` (or ``-1`` when ``padding``)."""
    if not indices.size:
        return
    low = -1 if padding else 0
    bad = (indices < low) | (indices >= upper)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        allowed = f"[0, {upper})" + (" or -1 (padding)" if padding else "")
        raise ValueError(
            f"{name} holds {int(indices[where])} at {where}, outside the gallery {allowed}"
        )


def _ragged(negatives: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-query index lists as CSR ``(indptr, indices)`` (int64).

    Takes anything with ``indptr`` and ``indices`` (:class:`qure.HardNegatives`) or a sequence
    with one 1-D index array/list per query.
    """
    if hasattr(negatives, "indptr") and hasattr(negatives, "indices"):
        indptr = _int_array(negatives.indptr, f"{name}.indptr", 1)
        indices = _int_array(negatives.indices, f"{name}.indices", 1)
        if indptr.size == 0:
            raise ValueError(f"{name}.indptr must have at least one entry (Q + 1)")
        if indptr[0] != 0 or indptr[-1] != indices.size or (np.diff(indptr) < 0).any():
            raise ValueError(
                f"{name}.indptr must start at 0, never decrease and end at len(indices)"
            )
        return indptr, indices
    if isinstance(negatives, (str, bytes)) or not isinstance(negatives, Iterable):
        raise TypeError(
            f"{name} must be a HardNegatives or a sequence with one index list per query, "
            f"got {type(negatives).__name__}"
        )
    parts = [_int_array(row, f"{name}[{i}]", 1) for i, row in enumerate(negatives)]
    sizes = np.array([p.size for p in parts], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return indptr, indices


# --------------------------------------------------------------------------------------------
# retrieval metrics


def recall_at_k(target_rank: Any, ks: int | Iterable[int] = (1, 5, 10, 50)) -> dict[str, float]:
    """Recall@K in percent: the share of queries whose target is ranked within the top K.

    Args:
        target_rank: ``(Q,)`` 0-based rank of each query's annotated target (as from
            :func:`qure.target_rank`).
        ks: one cut-off or several (each ``>= 1``).

    Returns:
        ``{"R@1": ..., "R@5": ..., ...}`` in ``[0, 100]`` (the CIR convention), in the order of
        ``ks``; NaN for every cut-off when there are no queries.
    """
    ranks = _int_array(target_rank, "target_rank", 1)
    if ranks.size and ranks.min() < 0:
        raise ValueError(f"target_rank must be >= 0, got {int(ranks.min())}")
    cutoffs = [_positive_int(k, "k") for k in ((ks,) if not isinstance(ks, Iterable) else ks)]
    if not cutoffs:
        raise ValueError("ks must name at least one cut-off")
    out: dict[str, float] = {}
    for k in cutoffs:
        out[f"R@{k}"] = float(np.mean(ranks < k) * 100.0) if ranks.size else math.nan
    return out


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)


def ndcg_at_k(ranked: Any, relevance: Any, k: int = 10) -> float:
    """Mean nDCG@K of ranked lists against graded relevance.

    The gain of a retrieved item is its relevance (linear), discounted by ``1 / log2(pos + 2)``
    for 0-based position ``pos``; padding (``-1``) gains nothing. The ideal DCG of a row comes
    from its ``k`` largest relevance values. Rows whose ideal DCG is 0 (nothing relevant) are
    skipped.

    Args:
        ranked: ``(Q, >= k)`` gallery indices in rank order (as from :func:`qure.topk`); only the
            first ``k`` columns are read, which must not repeat an index.
        relevance: ``(Q, G)`` graded relevance, ``>= 0``.
        k: the cut-off, ``>= 1``.

    Returns:
        The mean over the rows that are not skipped, in ``[0, 1]``; NaN if every row is skipped.
    """
    k = _positive_int(k, "k")
    order = _int_array(ranked, "ranked", 2)
    rel = _real_array(relevance, "relevance", 2, nonnegative=True)
    n_queries, n_gallery = rel.shape
    if order.shape[0] != n_queries:
        raise ValueError(
            f"ranked has {order.shape[0]} rows but relevance has {n_queries} (one per query)"
        )
    if order.shape[1] < k:
        raise ValueError(f"ranked has {order.shape[1]} columns, fewer than k={k}")
    top = order[:, :k]
    _check_range(top, "ranked", n_gallery, padding=True)
    if n_queries == 0:
        return math.nan
    srt = np.sort(top, axis=1)
    repeated = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    if repeated.any():
        row = int(np.argwhere(repeated)[0][0])
        raise ValueError(f"ranked row {row} lists the same gallery index twice in its top {k}")
    if n_gallery == 0:
        return math.nan  # nothing can be relevant: every row is skipped
    gains = np.where(top >= 0, np.take_along_axis(rel, np.maximum(top, 0), axis=1), 0.0)
    disc = _discounts(k)
    dcg = gains @ disc
    m = min(k, n_gallery)
    ideal = -np.sort(-rel, axis=1)[:, :m]
    idcg = ideal @ disc[:m]
    keep = idcg > 0
    if not keep.any():
        return math.nan
    return float(np.mean(dcg[keep] / idcg[keep]))


# --------------------------------------------------------------------------------------------
# band metrics


def false_negative_rate(negatives: Any, relevance: Any, threshold: float) -> float:
    """Share of all mined negatives that are in fact relevant (false negatives).

    Args:
        negatives: :class:`qure.HardNegatives` or a sequence with one index list per query.
        relevance: ``(Q, G)`` relevance, ``>= 0``.
        threshold: a negative ``idx`` of query ``q`` counts as false when
            ``relevance[q, idx] >= threshold``.

    Returns:
        The share in ``[0, 1]``, pooled over queries (every negative weighs the same, so queries
        with large bands weigh more); NaN when there are no negatives at all.
    """
    indptr, indices = _ragged(negatives, "negatives")
    rel = _real_array(relevance, "relevance", 2, nonnegative=True)
    n_queries = indptr.shape[0] - 1
    if rel.shape[0] != n_queries:
        raise ValueError(f"negatives cover {n_queries} queries but relevance has {rel.shape[0]}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold}")
    _check_range(indices, "negatives", rel.shape[1])
    if indices.size == 0:
        return math.nan
    rows = np.repeat(np.arange(n_queries), np.diff(indptr))
    return float(np.mean(rel[rows, indices] >= float(threshold)))


def band_stats(negatives: Any) -> dict[str, float]:
    """Band size statistics over all queries (empty bands count as size 0).

    Returns:
        ``{"band_mean", "band_std" (ddof=0), "band_median", "band_empty"}``, where ``band_empty``
        is the share of queries (0..1) whose band is empty; all NaN when there are no queries.
    """
    indptr, _ = _ragged(negatives, "negatives")
    sizes = np.diff(indptr).astype(np.float64)
    if sizes.size == 0:
        return dict.fromkeys(("band_mean", "band_std", "band_median", "band_empty"), math.nan)
    return {
        "band_mean": float(sizes.mean()),
        "band_std": float(sizes.std()),
        "band_median": float(np.median(sizes)),
        "band_empty": float(np.mean(sizes == 0)),
    }


# --------------------------------------------------------------------------------------------
# preference rate (HP-FashionIQ)


def set_scores(scores: Any, sets: Any) -> np.ndarray:
    """Mean score of each query's set of gallery items (QuRe, Eq. 8).

    Args:
        scores: ``(Q, G)`` model scores (or relevance).
        sets: ``(Q, S)`` gallery indices, ``S >= 1``.

    Returns:
        ``(Q,)`` float64. The values of a row are sorted before averaging, so two sets holding
        the same values get bit-identical means (ties stay ties whatever the order).
    """
    values = _real_array(scores, "scores", 2)
    idx = _int_array(sets, "sets", 2)
    if idx.shape[0] != values.shape[0]:
        raise ValueError(f"sets has {idx.shape[0]} rows but scores has {values.shape[0]}")
    if idx.shape[1] < 1:
        raise ValueError("sets must hold at least one gallery index per query")
    _check_range(idx, "sets", values.shape[1])
    picked = np.sort(np.take_along_axis(values, idx, axis=1), axis=1)
    return picked.mean(axis=1)


def preference_rate(
    model_scores: Any,
    set_a: Any,
    set_b: Any,
    relevance: Any,
    *,
    symmetric: bool = True,
) -> dict[str, float]:
    """Preference rate of a model against an oracle (HP-FashionIQ style, QuRe Eq. 8-9).

    Per query the oracle prefers the set with the higher mean ``relevance`` and the model the
    set with the higher mean model score (:func:`set_scores`); equal means are ties.

    Args:
        model_scores: ``(Q, G)`` model scores.
        set_a, set_b: ``(Q, S_a)`` and ``(Q, S_b)`` gallery indices of the two sets per query.
        relevance: ``(Q, G)`` oracle relevance, ``>= 0``.
        symmetric: ``False`` is Eq. 9 exactly, ``P(oracle prefers A | model scores A > B)`` over
            the queries where the model scores A higher and the oracle is not tied. ``True``
            counts every query where both have a strict preference and reports how often they
            agree.

    Returns:
        ``{"preference_rate"}`` in percent (NaN when no pair counts), ``"pairs"`` the number of
        queries counted, and ``"model_ties"``/``"oracle_ties"`` the tied queries among all ``Q``.
    """
    scores = _real_array(model_scores, "model_scores", 2)
    rel = _real_array(relevance, "relevance", 2, nonnegative=True)
    if rel.shape != scores.shape:
        raise ValueError(
            f"relevance has shape {tuple(rel.shape)} but model_scores {tuple(scores.shape)}"
        )
    a = _int_array(set_a, "set_a", 2)
    b = _int_array(set_b, "set_b", 2)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"set_a has {a.shape[0]} rows but set_b has {b.shape[0]}")
    model_diff = np.sign(set_scores(scores, a) - set_scores(scores, b))
    oracle_diff = np.sign(set_scores(rel, a) - set_scores(rel, b))
    if symmetric:
        counted = (model_diff != 0) & (oracle_diff != 0)
    else:
        counted = (model_diff > 0) & (oracle_diff != 0)
    pairs = int(counted.sum())
    agree = int((counted & (model_diff == oracle_diff)).sum())
    return {
        "preference_rate": 100.0 * agree / pairs if pairs else math.nan,
        "pairs": pairs,
        "model_ties": int((model_diff == 0).sum()),
        "oracle_ties": int((oracle_diff == 0).sum()),
    }


# --------------------------------------------------------------------------------------------
# aggregation


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, std)`` of ``values`` (std with ``ddof=0``), ignoring NaN; NaNs if none is left."""
    array = _to_numpy(values)
    if array.ndim > 1:
        raise ValueError(f"values must be 1-D, got shape {tuple(array.shape)}")
    if array.dtype.kind not in "biuf" and not (array.size == 0 and array.dtype.kind == "O"):
        raise TypeError(f"values must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64).reshape(-1)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return math.nan, math.nan
    return float(array.mean()), float(array.std())
