"""Evaluation metrics for composed image retrieval and for mined hard-negative bands.

All functions take NumPy arrays or torch tensors (converted to NumPy; nothing here needs torch)
and compute in float64:

* :func:`recall_at_k`: Recall@K in percent from the target ranks (FashionIQ, CIRR);
  :func:`target_ranks`: those ranks from a score matrix.
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
    "target_ranks",
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


# --------------------------------------------------------------------------------------------
# benchmark metrics: CIRR (Recall@K, Recall_subset@K), CIRCO (mAP@K), FashionIQ (Recall@K)

__all__ += [
    "circo_map",
    "cirr_average",
    "cirr_recall",
    "cirr_subset_recall",
    "fashioniq_recall",
]

# Score entries compared at once in target_ranks (bounds temporary memory).
_BLOCK_ELEMENTS = 1 << 22


def _cutoffs(ks: int | Iterable[int]) -> list[int]:
    """``ks`` as a non-empty list of distinct cut-offs, each ``>= 1``."""
    cutoffs = [_positive_int(k, "k") for k in ((ks,) if not isinstance(ks, Iterable) else ks)]
    if not cutoffs:
        raise ValueError("ks must name at least one cut-off")
    return list(dict.fromkeys(cutoffs))  # repeated cut-offs count once


def _query_indices(x: Any, name: str, n_queries: int, n_gallery: int) -> np.ndarray:
    """``(Q,)`` int64 gallery indices, one per query, each inside the gallery."""
    idx = _int_array(x, name, 1)
    if idx.shape[0] != n_queries:
        raise ValueError(
            f"{name} has {idx.shape[0]} entries but scores has {n_queries} rows (one per query)"
        )
    _check_range(idx, name, n_gallery)
    return idx


def _cirr_inputs(
    scores: Any, target: Any, reference: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = _real_array(scores, "scores", 2)
    n_queries, n_gallery = values.shape
    tgt = _query_indices(target, "target", n_queries, n_gallery)
    ref = _query_indices(reference, "reference", n_queries, n_gallery)
    same = tgt == ref
    if same.any():
        q = int(np.argmax(same))
        raise ValueError(
            f"query {q}: the target ({int(tgt[q])}) is the reference image, which CIRR removes "
            "from the ranking"
        )
    return values, tgt, ref


def target_ranks(scores: Any, target: Any, exclude: Any = None) -> np.ndarray:
    """``(Q,)`` 0-based rank of each query's target in its row of ``scores`` ``(Q, G)``.

    Score descending, ties by ascending gallery index (as :func:`qure.topk` and
    :func:`qure.target_rank` rank); ``exclude`` (``(Q,)`` gallery indices, e.g. CIRR's reference
    images) takes one item per query out of the ranking. Rows are compared in blocks, so the
    temporary memory stays bounded.
    """
    values = _real_array(scores, "scores", 2)
    n_queries, n_gallery = values.shape
    tgt = _query_indices(target, "target", n_queries, n_gallery)
    ref = None if exclude is None else _query_indices(exclude, "exclude", n_queries, n_gallery)
    ranks = np.empty(n_queries, dtype=np.int64)
    columns = np.arange(n_gallery)
    step = max(1, _BLOCK_ELEMENTS // max(n_gallery, 1))
    for start in range(0, n_queries, step):
        block = slice(start, start + step)
        s, t = values[block], tgt[block]
        rows = np.arange(s.shape[0])
        t_score = s[rows, t][:, None]
        ahead = (s > t_score) | ((s == t_score) & (columns < t[:, None]))
        if ref is not None:
            ahead[rows, ref[block]] = False  # not part of the ranking
        ranks[block] = ahead.sum(axis=1)
    return ranks


def cirr_recall(
    scores: Any,
    target: Any,
    reference: Any,
    ks: int | Iterable[int] = (1, 5, 10, 50),
) -> dict[str, float]:
    """CIRR Recall@K in percent, with each query's reference image removed from its ranking.

    Each query's gallery is ordered by score, descending, ties by ascending gallery index (as in
    :func:`qure.topk`); the reference image is taken out and the target's 0-based position in
    what is left is compared with each K.

    Args:
        scores: ``(Q, G)`` scores of every query against the whole gallery.
        target: ``(Q,)`` gallery index of each query's target.
        reference: ``(Q,)`` gallery index of each query's reference image (never the target).
        ks: one cut-off or several (each ``>= 1``).

    Returns:
        ``{"R@1": ..., "R@5": ..., ...}`` in ``[0, 100]``, in the order of ``ks``; NaN when there
        are no queries.
    """
    cutoffs = _cutoffs(ks)
    values, tgt, ref = _cirr_inputs(scores, target, reference)
    return recall_at_k(target_ranks(values, tgt, exclude=ref), cutoffs)


def cirr_subset_recall(
    scores: Any,
    target: Any,
    reference: Any,
    members: Any,
    ks: int | Iterable[int] = (1, 2, 3),
) -> dict[str, float]:
    """CIRR Recall_subset@K in percent: the target's rank among its image set's members.

    Each query is ranked only against the members of its ``img_set`` (CIRR's
    ``img_set.members``, six images including the reference) minus the reference image, by
    score, descending, ties by ascending gallery index.

    Args:
        scores: ``(Q, G)`` scores of every query against the whole gallery.
        target: ``(Q,)`` gallery index of each query's target; it must be one of its members.
        reference: ``(Q,)`` gallery index of each query's reference image (never the target);
            removed from the members when it is one of them.
        members: per query the gallery indices of its image set: a ``(Q, M)`` array or a
            sequence of 1-D index lists; no index may repeat within a query.
        ks: one cut-off or several (each ``>= 1``).

    Returns:
        ``{"Rsubset@1": ..., "Rsubset@2": ..., ...}`` in ``[0, 100]``, in the order of ``ks``;
        NaN when there are no queries.
    """
    cutoffs = _cutoffs(ks)
    values, tgt, ref = _cirr_inputs(scores, target, reference)
    n_queries, n_gallery = values.shape
    indptr, indices = _ragged(members, "members")
    if indptr.shape[0] - 1 != n_queries:
        raise ValueError(
            f"members has {indptr.shape[0] - 1} rows but scores has {n_queries} (one per query)"
        )
    _check_range(indices, "members", n_gallery)
    ranks = np.empty(n_queries, dtype=np.int64)
    for q in range(n_queries):
        group = indices[indptr[q] : indptr[q + 1]]
        if np.unique(group).size != group.size:
            raise ValueError(f"members of query {q} list the same gallery index twice")
        t = tgt[q]
        if not (group == t).any():
            raise ValueError(f"query {q}: the target ({int(t)}) is not one of its members")
        group = group[group != ref[q]]
        s = values[q, group]
        t_score = values[q, t]
        ranks[q] = int(np.sum((s > t_score) | ((s == t_score) & (group < t))))
    out = recall_at_k(ranks, cutoffs)
    return {f"Rsubset@{k}": out[f"R@{k}"] for k in cutoffs}


def cirr_average(recall: dict[str, float], subset: dict[str, float]) -> float:
    """CIRR's headline number, ``(R@5 + Rsubset@1) / 2``.

    Args:
        recall: the output of :func:`cirr_recall` (must hold ``"R@5"``).
        subset: the output of :func:`cirr_subset_recall` (must hold ``"Rsubset@1"``).
    """
    if "R@5" not in recall:
        raise ValueError(f"recall has no 'R@5' entry (keys: {sorted(recall)})")
    if "Rsubset@1" not in subset:
        raise ValueError(f"subset has no 'Rsubset@1' entry (keys: {sorted(subset)})")
    return (float(recall["R@5"]) + float(subset["Rsubset@1"])) / 2.0


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
    cutoffs = _cutoffs(ks)
    order = _int_array(ranked, "ranked", 2)
    n_queries, n_columns = order.shape
    k_max = max(cutoffs)
    if n_columns < k_max:
        raise ValueError(f"ranked has {n_columns} columns, fewer than the largest k={k_max}")
    if isinstance(gt, (str, bytes)) or not isinstance(gt, Iterable):
        raise TypeError(f"gt must be a sequence with one index list per query, got {type(gt)}")
    truths = [_int_array(g, f"gt[{q}]", 1) for q, g in enumerate(gt)]
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
    cutoffs = _cutoffs(ks)
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
        if _to_numpy(ranks).size == 0:
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
