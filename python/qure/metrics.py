"""Evaluation metrics for composed image retrieval and for mined hard-negative bands.

All functions take NumPy arrays or torch tensors (converted to NumPy; nothing here needs torch)
and compute in float64 (rankings come from qure's core):

* :func:`recall_at_k`: Recall@K in percent from the target ranks (FashionIQ, CIRR);
  :func:`target_ranks`: those ranks from a score matrix, optionally without one item per query.
* :func:`ranked_without_reference`: the top-k gallery indices per query with its reference
  image taken out of the ranking (CIRR, CIRCO; on :func:`qure.topk`).
* :func:`ndcg_at_k`: nDCG@K of ranked lists against graded relevance.
* :func:`false_negative_rate`, :func:`band_stats`: how clean and how large mined bands are.
* :func:`set_scores`, :func:`preference_rate`: the HP-FashionIQ preference rate (QuRe, Eq. 8-9)
  with an oracle relevance in place of human raters; :func:`preference_agreement`, its core on
  per-query set scores (also behind :func:`qure.datasets.hpfiq_preference_rate`).
* :func:`summarize`: mean and standard deviation over seeds/runs, ignoring NaN.

The benchmarks' official metrics live with their data sets: :mod:`qure.datasets.fashioniq`
(``fashioniq_recall``), :mod:`qure.datasets.cirr` (``cirr_recall``, ``cirr_subset_recall``,
``cirr_average``) and :mod:`qure.datasets.circo` (``circo_map``). :func:`as_cutoffs`,
:func:`as_query_indices` and :func:`check_index_range` are the argument checks they share with
the metrics here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ._arrays import as_int_array, as_ragged_indices, as_real_array, check_int, to_numpy
from .retrieval import topk

__all__ = [
    "band_stats",
    "false_negative_rate",
    "ndcg_at_k",
    "preference_agreement",
    "preference_rate",
    "ranked_without_reference",
    "recall_at_k",
    "set_scores",
    "summarize",
    "target_ranks",
]


# --------------------------------------------------------------------------------------------
# argument checks shared by the metrics here and the benchmark metrics of qure.datasets.*


def as_cutoffs(ks: int | Iterable[int]) -> list[int]:
    """``ks`` (one cut-off or several) as a non-empty list of distinct cut-offs, each ``>= 1``,
    in the order given (a repeated cut-off counts once)."""
    cutoffs = [check_int(k, "k", 1) for k in ((ks,) if not isinstance(ks, Iterable) else ks)]
    if not cutoffs:
        raise ValueError("ks must name at least one cut-off")
    return list(dict.fromkeys(cutoffs))


def check_index_range(indices: np.ndarray, name: str, upper: int, *, padding: bool = False) -> None:
    """Raises ``ValueError`` unless every index is in ``[0, upper)`` (or ``-1`` when
    ``padding``); the message names the first offending entry."""
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


def as_query_indices(x: Any, name: str, n_queries: int, n_gallery: int) -> np.ndarray:
    """``(Q,)`` int64 gallery indices, one per query, each inside the gallery."""
    idx = as_int_array(x, name, 1)
    if idx.shape[0] != n_queries:
        raise ValueError(
            f"{name} has {idx.shape[0]} entries but scores has {n_queries} rows (one per query)"
        )
    check_index_range(idx, name, n_gallery)
    return idx


def _bands(negatives: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Mined bands (:class:`qure.HardNegatives` or one index list per query) as CSR."""
    if not hasattr(negatives, "indptr") and (
        isinstance(negatives, (str, bytes)) or not isinstance(negatives, Iterable)
    ):
        raise TypeError(
            f"{name} must be a HardNegatives or a sequence with one index list per query, "
            f"got {type(negatives).__name__}"
        )
    return as_ragged_indices(negatives, name)


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
    ranks = as_int_array(target_rank, "target_rank", 1)
    if ranks.size and ranks.min() < 0:
        raise ValueError(f"target_rank must be >= 0, got {int(ranks.min())}")
    cutoffs = as_cutoffs(ks)
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
    k = check_int(k, "k", 1)
    order = as_int_array(ranked, "ranked", 2)
    rel = as_real_array(relevance, "relevance", 2, nonnegative=True)
    n_queries, n_gallery = rel.shape
    if order.shape[0] != n_queries:
        raise ValueError(
            f"ranked has {order.shape[0]} rows but relevance has {n_queries} (one per query)"
        )
    if order.shape[1] < k:
        raise ValueError(f"ranked has {order.shape[1]} columns, fewer than k={k}")
    top = order[:, :k]
    check_index_range(top, "ranked", n_gallery, padding=True)
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
    indptr, indices = _bands(negatives, "negatives")
    rel = as_real_array(relevance, "relevance", 2, nonnegative=True)
    n_queries = indptr.shape[0] - 1
    if rel.shape[0] != n_queries:
        raise ValueError(f"negatives cover {n_queries} queries but relevance has {rel.shape[0]}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold}")
    check_index_range(indices, "negatives", rel.shape[1])
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
    indptr, _ = _bands(negatives, "negatives")
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
    values = as_real_array(scores, "scores", 2)
    idx = as_int_array(sets, "sets", 2)
    if idx.shape[0] != values.shape[0]:
        raise ValueError(f"sets has {idx.shape[0]} rows but scores has {values.shape[0]}")
    if idx.shape[1] < 1:
        raise ValueError("sets must hold at least one gallery index per query")
    check_index_range(idx, "sets", values.shape[1])
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
    scores = as_real_array(model_scores, "model_scores", 2)
    rel = as_real_array(relevance, "relevance", 2, nonnegative=True)
    if rel.shape != scores.shape:
        raise ValueError(
            f"relevance has shape {tuple(rel.shape)} but model_scores {tuple(scores.shape)}"
        )
    a = as_int_array(set_a, "set_a", 2)
    b = as_int_array(set_b, "set_b", 2)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"set_a has {a.shape[0]} rows but set_b has {b.shape[0]}")
    return preference_agreement(
        set_scores(scores, a),
        set_scores(scores, b),
        set_scores(rel, a),
        set_scores(rel, b),
        symmetric=symmetric,
    )


def preference_agreement(
    model_a: Any,
    model_b: Any,
    oracle_a: Any,
    oracle_b: Any,
    *,
    symmetric: bool = True,
) -> dict[str, float]:
    """How often a model's choice between two sets agrees with an oracle's (QuRe Eq. 9).

    The core of :func:`preference_rate` and of
    :func:`qure.datasets.hpfiq_preference_rate` (where the oracle is the human preference: 1
    for the preferred set, 0 for the other). Per query the model prefers A when
    ``model_a > model_b`` and B when ``model_a < model_b``, likewise the oracle; equal scores are
    ties.

    Args:
        model_a, model_b: ``(Q,)`` the model's scores of set A and of set B (finite).
        oracle_a, oracle_b: ``(Q,)`` the oracle's scores of the same sets (finite).
        symmetric: ``False`` is Eq. 9 exactly, ``P(oracle prefers A | model prefers A)`` over
            the queries where the model prefers A and the oracle is not tied. ``True`` counts
            every query where both have a strict preference and reports how often they agree.

    Returns:
        ``{"preference_rate"}`` in percent (NaN when no pair counts), ``"pairs"`` the number of
        queries counted, and ``"model_ties"``/``"oracle_ties"`` the tied queries among all ``Q``.
    """
    arrays = [
        as_real_array(x, name, 1)
        for x, name in (
            (model_a, "model_a"),
            (model_b, "model_b"),
            (oracle_a, "oracle_a"),
            (oracle_b, "oracle_b"),
        )
    ]
    if len({a.shape[0] for a in arrays}) != 1:
        raise ValueError(
            "model_a, model_b, oracle_a and oracle_b must have one entry per query, got "
            f"{[a.shape[0] for a in arrays]}"
        )
    ma, mb, oa, ob = arrays
    model = (ma > mb).astype(np.int8) - (ma < mb).astype(np.int8)  # sign(a - b), never overflows
    oracle = (oa > ob).astype(np.int8) - (oa < ob).astype(np.int8)
    if symmetric:
        counted = (model != 0) & (oracle != 0)
    else:
        counted = (model > 0) & (oracle != 0)
    pairs = int(counted.sum())
    agree = int((counted & (model == oracle)).sum())
    return {
        "preference_rate": 100.0 * agree / pairs if pairs else math.nan,
        "pairs": pairs,
        "model_ties": int((model == 0).sum()),
        "oracle_ties": int((oracle == 0).sum()),
    }


# --------------------------------------------------------------------------------------------
# aggregation


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, std)`` of ``values`` (std with ``ddof=0``), ignoring NaN; NaNs if none is left."""
    array = to_numpy(values)
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
# rankings

# Score entries compared at once in target_ranks (bounds temporary memory).
_BLOCK_ELEMENTS = 1 << 22


def target_ranks(scores: Any, target: Any, exclude: Any = None) -> np.ndarray:
    """``(Q,)`` 0-based rank of each query's target in its row of ``scores`` ``(Q, G)``.

    Score descending, ties by ascending gallery index (as :func:`qure.topk` and
    :func:`qure.target_rank` rank); ``exclude`` (``(Q,)`` gallery indices, e.g. CIRR's reference
    images) takes one item per query out of the ranking. Rows are compared in blocks, so the
    temporary memory stays bounded.
    """
    values = as_real_array(scores, "scores", 2)
    n_queries, n_gallery = values.shape
    tgt = as_query_indices(target, "target", n_queries, n_gallery)
    ref = None if exclude is None else as_query_indices(exclude, "exclude", n_queries, n_gallery)
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


def ranked_without_reference(queries: Any, gallery: Any, reference: Any, k: int) -> np.ndarray:
    """``(Q, k)`` int64 top-k gallery indices per query, each query's reference image taken out
    of its ranking (as CIRR and CIRCO evaluate), from :func:`qure.topk` with ``exclude=``.

    Score descending, ties by ascending gallery index. A reference outside ``[0, N)`` (a
    reference image that is not in the gallery) removes nothing; when fewer than ``k`` items
    are left the row is padded with ``-1``.

    Args:
        queries: ``(Q, d)`` query features.
        gallery: ``(N, d)`` or ``(N, T, d)`` gallery features (max over tokens, as
            :func:`qure.score`).
        reference: ``(Q,)`` index of each query's reference image.
        k: the number of columns, ``>= 1``.

    Returns:
        A NumPy array (also for torch input).
    """
    k = check_int(k, "k", 1)
    ref = as_int_array(reference, "reference", 1)
    n_gallery = len(gallery)
    exclude = [[r] if 0 <= r < n_gallery else [] for r in ref.tolist()]
    _, ranked = topk(queries, gallery, min(k, n_gallery), exclude=exclude)
    ranked = to_numpy(ranked)
    if ranked.shape[1] < k:  # a gallery smaller than k: pad with -1 (no item)
        pad = np.full((ranked.shape[0], k - ranked.shape[1]), -1, dtype=ranked.dtype)
        ranked = np.concatenate([ranked, pad], axis=1)
    return ranked
