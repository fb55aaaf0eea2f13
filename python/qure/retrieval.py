"""Large-gallery scoring, exact top-k, target ranks and mining straight from features.

A gallery is ``(N, d)`` (plain inner product) or ``(N, T, d)``: T token embeddings per image,
scored BLIP-2 style as the max over the tokens of the dot product with the query. Everything
streams over cache-sized gallery blocks in the Rust core: no ``Q x N x T`` tensor is built, and
top-k and ranks never hold ``Q x N`` scores.

Galleries may be float32, float16 (NumPy or torch) or bfloat16 (torch, CPU): half-precision
galleries are read in place, at half the memory. Each value is widened exactly to float32 and
scored by the float32 chain, so a half gallery's scores are, bit for bit, the float32 scores of
its values (``gallery.astype(float32)``), on every kernel and thread count. Against scores of
the float32 features the half values were rounded from, the difference is that rounding's:
``|s_half - s_f32| <= u * sum_k |q_k g_k| + 2 * gamma_d * sum_k |q_k g_k|`` with ``u = 2**-11``
(float16) or ``2**-8`` (bfloat16), ``gamma_d = d * 2**-24 / (1 - d * 2**-24)`` (float32
accumulation), for values in the normal range (float16 subnormals add ``2**-25 * sum_k |q_k|``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from . import _core
from ._arrays import (
    as_float32_matrix,
    as_gallery,
    as_index_vector,
    as_ragged_indices,
    check_int,
    is_torch_tensor,
    like_input,
)
from .mining import HardNegatives, MiningArguments, Pairing, Sampling, Strategy

__all__ = ["mine_from_features", "score", "simd_kernel", "target_rank", "topk"]


def _features(queries: Any, gallery: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """Queries as float32, the gallery as float32 or half-precision bits, and its format."""
    q = as_float32_matrix(queries, "queries", ndim=2)
    g_ndim = gallery.ndim if hasattr(gallery, "ndim") else np.asarray(gallery).ndim
    if g_ndim not in (2, 3):
        raise ValueError(f"gallery must be (N, d) or (N, T, d), got {g_ndim}-D")
    g, fmt = as_gallery(gallery, "gallery", ndim=g_ndim)
    if g.ndim == 2:
        g = g.reshape(g.shape[0], 1, g.shape[1])
    if q.shape[1] != g.shape[2]:
        raise ValueError(f"queries have {q.shape[1]} features but the gallery has {g.shape[2]}")
    return q, g, fmt


def _exclude_csr(exclude: Any, rows: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(exclude, np.ndarray) or is_torch_tensor(exclude):
        array = np.asarray(exclude.cpu() if is_torch_tensor(exclude) else exclude)
        if array.ndim == 1:  # one item per query, e.g. CIRR's reference image
            indices = as_index_vector(array, "exclude", length=rows)
            return np.arange(rows + 1, dtype=np.int64), indices
    return as_ragged_indices(exclude, "exclude", rows)


def score(queries: Any, gallery: Any) -> np.ndarray:
    """``(Q, N)`` float32 scores of ``queries`` (Q, d) against ``gallery`` (N, d) or (N, T, d).

    With tokens, an image's score is the max over its T tokens of the dot product. NumPy out,
    or a torch tensor on the queries' device when ``queries`` is a torch tensor (the same for
    :func:`topk` and :func:`target_rank`).
    """
    q, g, fmt = _features(queries, gallery)
    return like_input(_core.score(q, g, fmt), queries)


def topk(
    queries: Any, gallery: Any, k: int, *, exclude: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k: ``(values (Q, k) float32, indices (Q, k) int64)``.

    Sorted by score descending, ties by ascending index. ``exclude`` removes items per query: a
    ``(Q,)`` integer array (one item each, e.g. the reference image) or one list per query.
    Queries left with fewer than ``k`` items are padded with ``(-inf, -1)``.
    """
    q, g, fmt = _features(queries, gallery)
    k = check_int(k, "k", 1)
    if k > g.shape[0]:
        raise ValueError(f"k={k} exceeds the gallery size {g.shape[0]}")
    if exclude is None:
        values, indices = _core.topk(q, g, k, gallery_format=fmt)
    else:
        ex_indptr, ex_indices = _exclude_csr(exclude, q.shape[0])
        values, indices = _core.topk(q, g, k, ex_indptr, ex_indices, fmt)
    return like_input(values, queries), like_input(indices, queries)


def target_rank(queries: Any, gallery: Any, target_idx: Any) -> np.ndarray:
    """Each target's 0-based rank (higher scores, plus ties with a lower index), without sorting.

    ``target_rank < K`` is the hit indicator of Recall@K.
    """
    q, g, fmt = _features(queries, gallery)
    targets = as_index_vector(target_idx, "target_idx", length=q.shape[0])
    return like_input(_core.target_rank(q, g, targets, fmt), queries)


def mine_from_features(
    queries: Any,
    gallery: Any,
    target_idx: Any,
    *,
    consecutive_threshold: int = 1,
    pairing: Pairing = "consecutive",
    max_rank: int | None = None,
    positives: Any = None,
    gallery_ids: Any = None,
    block_size: int | None = None,
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
    """``mine_negatives(score(queries, gallery), target_idx, ...)`` without the score matrix.

    Query blocks of ``block_size`` rows (default: about 64 MiB of scores) are scored and mined as
    they go; the result is identical to mining the full matrix. The other arguments are those of
    :func:`qure.mine_negatives`.
    """
    q, g, fmt = _features(queries, gallery)
    n_queries, n_gallery = q.shape[0], g.shape[0]
    targets = as_index_vector(target_idx, "target_idx", length=n_queries)
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
    block = None if block_size is None else check_int(block_size, "block_size", 1, clamp=True)
    mined = _core.mine_from_features(
        q, g, targets, **args.native(), block_size=block, gallery_format=fmt
    )
    return args.negatives(mined, n_gallery)


def simd_kernel() -> str:
    """The SIMD kernel scoring uses here: ``"avx512"``, ``"avx2"`` or ``"portable"``.

    ``QURE_SIMD=avx2`` or ``QURE_SIMD=portable`` caps it (set before the first call).
    """
    return _core.simd_kernel()
