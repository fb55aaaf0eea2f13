"""Mining with queries and gallery split over the ranks of a ``torch.distributed`` group.

Two strategies give bands equal (``==``, bit for bit) to one-process mining:

- ``"gather"``: the gallery shards are gathered, each rank mines its queries against the whole
  gallery in the Rust core (:func:`qure.mine_from_features`) and the bands are gathered.
- ``"candidates"`` (needs ``max_rank=M``): the rule only looks at each query's first ``M`` items
  after its target, so no rank needs the whole gallery. Each rank scores every query against
  its shard and keeps, per query, how many of its items rank above the target and its ``M`` best
  items after it (the core's ``tail_candidates``); these go to the query's rank, which mines the
  merged tails (the core's ``mine_tails``). Ranking, ties and exclusions are the core's own, so
  nothing of the rule is written here.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from . import _core
from . import distributed as qdist
from ._arrays import (
    GALLERY_FORMATS,
    as_float32_matrix,
    as_gallery,
    as_index_vector,
    check_choice,
    check_int,
    gallery_from_bits,
)
from .mining import HardNegatives, MiningArguments, Pairing
from .retrieval import mine_from_features

__all__ = ["STRATEGIES", "sharded_mine"]

Strategy = Literal["auto", "gather", "candidates"]
STRATEGIES = ("auto", "gather", "candidates")

_TARGET_BLOCK = 256
"""Queries whose target scores are computed at once."""


def sharded_mine(
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
    strategy: Strategy = "auto",
    **selection: Any,
) -> HardNegatives:
    """:func:`qure.mine_from_features` with queries and gallery split over the ranks.

    Each rank passes its query shard ``queries`` and its gallery shard ``gallery`` (queries and
    gallery each split into contiguous blocks in rank order, e.g. ``shard(Q)`` and ``shard(N)``;
    any sizes, empty ones included), the *global* gallery index of each of its queries'
    targets, and, when used, its queries' ``positives`` (global gallery indices) and the *full*
    ``(N,)`` ``gallery_ids``. Every rank gets the same :class:`~qure.HardNegatives`, equal to
    ``mine_from_features(all_queries, full_gallery, all_targets, ...)`` in one process.

    ``strategy``: ``"gather"`` (the default without ``max_rank``) gathers the gallery: scoring
    and mining work divide by the number of ranks, gallery memory does not. ``"candidates"``
    (the default with ``max_rank=M`` on several ranks) gathers only the query features and
    exchanges ``Q * (2M + 1)`` numbers: work and gallery memory both divide by the number of
    ranks. Bad input on any rank raises ``ValueError`` on all of them rather than leaving the
    others waiting. ``selection``: the candidate-set, filter and selection keywords of
    :func:`qure.mine_negatives` (``strategy`` there is ``miner`` here, as ``strategy`` names the
    sharding; ``"candidates"`` supports the band and windows after the target).

    float16 and bfloat16 gallery shards are scored from their 16-bit patterns, as
    :func:`qure.mine_from_features` scores them (never copied to float32); every rank must pass
    the same gallery dtype.
    """
    check_choice(strategy, "strategy", STRATEGIES)
    if strategy == "candidates" and max_rank is None:
        raise ValueError("strategy='candidates' needs max_rank")
    local_gallery: np.ndarray | None = None
    fmt = "float32"
    error: Exception | None = None
    try:
        ndim = gallery.ndim if hasattr(gallery, "ndim") else np.ndim(gallery)
        if ndim not in (2, 3):
            raise ValueError(f"gallery must be (N, d) or (N, T, d), got {ndim}-D")
        # float16/bfloat16 shards stay half precision (their bits), as in one process.
        local_gallery, fmt = as_gallery(gallery, "gallery", ndim=ndim)
        if local_gallery.ndim == 2:
            local_gallery = local_gallery.reshape(local_gallery.shape[0], 1, -1)
    except (ValueError, TypeError) as exc:
        error = exc
    qdist.raise_together(error)
    assert local_gallery is not None
    formats = qdist.all_gather_array(np.array([GALLERY_FORMATS.index(fmt)], dtype=np.int64))
    if len(np.unique(formats)) != 1:
        raise ValueError(
            "the gallery shards disagree on their dtype "
            f"(per rank: {[GALLERY_FORMATS[int(c)] for c in formats]})"
        )
    options: dict[str, Any] = {
        "consecutive_threshold": consecutive_threshold,
        "pairing": pairing,
        "max_rank": max_rank,
        "positives": positives,
        "gallery_ids": gallery_ids,
    }
    if "miner" in selection:
        selection["strategy"] = selection.pop("miner")
    options.update(selection)
    # Merged tails hold only items after the target: top-k candidate sets and the lowest
    # positive's score need the gathered gallery.
    tail_only = options.get("strategy", "band") != "topk" and (
        options.get("reference", "target") == "target"
    )
    if strategy == "candidates" and not tail_only:
        raise ValueError(
            "strategy='candidates' mines tails after the target against the target's score: "
            "use strategy='gather' for top-k candidates or reference='lowest_positive'"
        )
    candidates = strategy == "candidates" or (
        strategy == "auto" and max_rank is not None and tail_only and qdist.is_distributed()
    )
    if candidates:
        mined = _mine_from_candidates(queries, local_gallery, fmt, target_idx, block_size, options)
        return qdist.gather_hard_negatives(mined)
    full = gallery_from_bits(qdist.all_gather_array(local_gallery), fmt)
    counts = qdist.all_gather_array(np.array([np.shape(queries)[0]], dtype=np.int64))
    first_query = int(counts[: qdist.rank()].sum())
    result: HardNegatives | None = None
    try:
        result = mine_from_features(
            queries, full, target_idx, block_size=block_size, first_query=first_query, **options
        )
    except (ValueError, TypeError) as exc:
        error = exc
    qdist.raise_together(error)
    assert result is not None
    return qdist.gather_hard_negatives(result)


def _target_scores(
    queries: np.ndarray, shard: np.ndarray, fmt: str, targets: np.ndarray, first_item: int
) -> np.ndarray:
    """Each query's score against its target, computed on the rank whose shard holds it and
    shared with a max-reduction (other ranks contribute ``-inf``)."""
    found = np.full(len(targets), -np.inf, dtype=np.float32)
    local = np.nonzero((targets >= first_item) & (targets < first_item + shard.shape[0]))[0]
    for b in range(0, len(local), _TARGET_BLOCK):
        rows = local[b : b + _TARGET_BLOCK]
        columns, which = np.unique(targets[rows] - first_item, return_inverse=True)
        block = _core.score(queries[rows], shard[columns], fmt)  # fancy indexing: contiguous copies
        found[rows] = block[np.arange(len(rows)), which.reshape(-1)]
    return qdist.all_reduce_max(found)


def _mine_from_candidates(
    queries: Any,
    shard: np.ndarray,
    fmt: str,
    target_idx: Any,
    block_size: Any,
    options: dict[str, Any],
) -> HardNegatives:
    """This rank's queries' bands under ``max_rank``, from every shard's tail candidates."""
    error: Exception | None = None
    q_local = t_local = None
    block = None
    try:
        q_local = as_float32_matrix(queries, "queries", ndim=2)
        t_local = as_index_vector(target_idx, "target_idx", length=q_local.shape[0])
        if block_size is not None:
            block = check_int(block_size, "block_size", 1, clamp=True)
    except (ValueError, TypeError) as exc:
        error = exc
    qdist.raise_together(error)
    assert q_local is not None and t_local is not None
    me = qdist.rank()
    shape = [q_local.shape[0], shard.shape[0], q_local.shape[1], shard.shape[2], shard.shape[1]]
    sizes = qdist.all_gather_array(np.array([shape], dtype=np.int64))
    q_sizes, g_sizes = sizes[:, 0].tolist(), sizes[:, 1].tolist()
    n, first_item = int(sum(g_sizes)), int(sum(g_sizes[:me]))
    args: MiningArguments | None = None
    try:
        if len(np.unique(sizes[:, 2:4])) != 1 or len(np.unique(sizes[:, 4])) != 1:
            raise ValueError(
                "queries and gallery shards disagree on the feature size or the tokens per image "
                f"(d of queries, d of gallery, T per rank: {sizes[:, 2:].tolist()})"
            )
        if n == 0:
            raise ValueError("the gallery is empty")
        if len(t_local) and (t_local.min() < 0 or t_local.max() >= n):
            raise ValueError(f"target_idx holds indices outside the gallery of {n} items")
        first_query = int(sum(q_sizes[:me]))
        args = MiningArguments.check(q_local.shape[0], n, first_query=first_query, **options)
        if args.positives_indices is not None and len(args.positives_indices):
            if args.positives_indices.min() < 0 or args.positives_indices.max() >= n:
                raise ValueError(f"positives hold indices outside the gallery of {n} items")
    except (ValueError, TypeError) as exc:
        error = exc
    qdist.raise_together(error)
    assert args is not None and args.max_rank is not None

    # Every query against this shard: its share of each query's tail.
    q_all, t_all = qdist.all_gather_array(q_local), qdist.all_gather_array(t_local)
    target_scores = _target_scores(q_all, shard, fmt, t_all, first_item)
    above, items, values = _core.tail_candidates(
        q_all,
        shard,
        first_item=first_item,
        n_gallery=n,
        target_idx=t_all,
        target_scores=target_scores,
        max_rank=args.max_rank,
        block_size=block,
        gallery_format=fmt,
    )
    # To each query's rank, in one int64 payload per query: [above | items | score bits], every
    # rank's candidates padded to the widest shard's.
    width = min(args.max_rank, max(g_sizes))
    payload = np.zeros((len(t_all), 1 + 2 * width), dtype=np.int64)
    payload[:, 1 : 1 + width] = -1
    payload[:, 0] = above
    payload[:, 1 : 1 + items.shape[1]] = items
    payload[:, 1 + width : 1 + width + values.shape[1]] = values.view(np.uint32)
    received = qdist.exchange_rows(payload, q_sizes)

    # The merged tails of this rank's queries, mined by the core as whole rows would be.
    merged_above = np.sum([r[:, 0] for r in received], axis=0).astype(np.int64)
    merged_items = np.concatenate([r[:, 1 : 1 + width] for r in received], axis=1)
    bits = np.concatenate([r[:, 1 + width :] for r in received], axis=1)
    merged_scores = bits.astype(np.uint32).view(np.float32)
    return args.negatives(
        _core.mine_tails(
            np.ascontiguousarray(merged_above),
            target_scores[int(sum(q_sizes[:me])) :][: len(t_local)],
            np.ascontiguousarray(merged_items),
            np.ascontiguousarray(merged_scores),
            t_local,
            n_gallery=n,
            **args.native(),
        ),
        n,
    )
