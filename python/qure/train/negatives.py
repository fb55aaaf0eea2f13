"""Each epoch's negatives: mined bands (QuRe's two-drop band, or the top k), sampled one per query
per epoch, with uniform random negatives as the warm-up and the fallback for empty bands."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import distributed as qdist
from ..mining import HardNegatives
from ..retrieval import mine_from_features, topk
from ..sampling import NegativeSampler
from .config import MINED_METHODS, TrainConfig
from .data import CIRTrainData, encode_split

__all__ = ["epoch_negatives", "mine_split", "random_negatives"]


def random_negatives(
    n_pool: int,
    target: np.ndarray,
    seed: int,
    epoch: int,
    positives: list[np.ndarray] | None = None,
    slot: int = 0,
) -> np.ndarray:
    """One uniform draw per query from the pool minus its target (and its known positives);
    ``slot`` numbers independent draws of the same epoch."""
    stream = [seed, epoch, 0x52414E44] if slot == 0 else [seed, epoch, 0x52414E44, slot]
    rng = np.random.default_rng(stream)
    draw = rng.integers(0, n_pool - 1, size=len(target))
    draw = draw + (draw >= target)
    if positives is None:
        return draw
    # Redraw the hits of known positives (rejection sampling keeps the draw uniform).
    bad = np.array([int(d) in set(p.tolist()) for d, p in zip(draw, positives)], dtype=bool)
    for _ in range(1000):
        rows = np.nonzero(bad)[0]
        if not rows.size:
            break
        again = rng.integers(0, n_pool - 1, size=rows.size)
        draw[rows] = again + (again >= target[rows])
        bad[rows] = [int(draw[r]) in set(positives[r].tolist()) for r in rows]
    return draw


def _mine_pool(
    queries: np.ndarray,
    tokens: np.ndarray,
    target: np.ndarray,
    gallery_ids: np.ndarray | None,
    config: TrainConfig,
    positives: list[np.ndarray] | None,
) -> HardNegatives:
    """Bands of ``queries`` against one mining pool: QuRe's rule, or the top k."""
    if config.method == "qure":
        return mine_from_features(
            queries,
            tokens,
            target,
            consecutive_threshold=config.consecutive_threshold,
            pairing=config.pairing,
            max_rank=config.max_rank,
            positives=positives,
            gallery_ids=gallery_ids,
        )
    if config.method == "percpos":
        return mine_from_features(
            queries,
            tokens,
            target,
            strategy="topk",
            relative_margin=config.percpos_relative_margin,
            num_negatives=config.percpos_candidates,
            positives=positives,
            gallery_ids=gallery_ids,
        )
    # topk: the K highest-scored items other than the target (and its known positives).
    k = min(config.topk_k, len(tokens) - 1)
    if k < 1:
        return HardNegatives.from_bands([np.zeros(0, dtype=np.int64)] * len(target))
    exclude: Any = target
    if positives is not None:
        exclude = [np.append(p, t) for p, t in zip(positives, target)]
    _, indices = topk(queries, tokens, k, exclude=exclude)
    return HardNegatives.from_bands([row[row >= 0] for row in indices.astype(np.int64)])


def _mine_rows(
    queries: np.ndarray,
    tokens: np.ndarray,
    data: CIRTrainData,
    query_rows: range,
    config: TrainConfig,
) -> HardNegatives:
    """Bands of the queries ``query_rows`` (features ``queries``) against the whole gallery,
    each mining group against its own part of it."""
    target = data.target[query_rows.start : query_rows.stop]
    positives = (
        None if data.positives is None else data.positives[query_rows.start : query_rows.stop]
    )
    if data.query_groups is None or data.gallery_groups is None:
        return _mine_pool(queries, tokens, target, data.gallery_ids, config, positives)
    query_groups = data.query_groups[query_rows.start : query_rows.stop]
    q = len(target)
    bands: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * q
    ranks = np.full(q, -1, dtype=np.int64)
    drops = np.full((q, 2), -1, dtype=np.int64)
    tails = np.full(q, -1, dtype=np.int64)
    for group in np.unique(query_groups):
        rows = np.nonzero(query_groups == group)[0]
        cols = np.nonzero(data.gallery_groups == group)[0]
        local = np.full(data.gallery_size, -1, dtype=np.int64)
        local[cols] = np.arange(len(cols))
        targets = local[target[rows]]
        if (targets < 0).any():
            raise ValueError(f"a target of mining group {group} lies outside the group's gallery")
        ids = None if data.gallery_ids is None else data.gallery_ids[cols]
        group_positives = None
        if positives is not None:  # in group-local indices; positives outside the group go
            group_positives = [local[p][local[p] >= 0] for p in (positives[r] for r in rows)]
        mined = _mine_pool(queries[rows], tokens[cols], targets, ids, config, group_positives)
        for j, row in enumerate(rows):
            bands[row] = cols[mined[j]]
        ranks[rows] = mined.target_rank
        drops[rows] = mined.drops
        if mined.tail_length is not None:
            tails[rows] = mined.tail_length
    return HardNegatives.from_bands(
        bands,
        target_rank=ranks,
        drops=drops,
        tail_length=tails if config.method == "qure" else None,
    )


def mine_split(
    model: torch.nn.Module, data: CIRTrainData, config: TrainConfig, device: torch.device
) -> HardNegatives:
    """Encodes and mines the training split. Under torch.distributed each rank encodes its
    shares of the queries and the gallery, the gallery features are gathered, each rank mines
    its queries and the bands are gathered: the result equals the one-process one."""
    query_rows = qdist.shard(len(data))  # everything outside a process group
    gallery_rows = qdist.shard(data.gallery_size)
    queries, tokens = encode_split(
        model,
        data.images,
        data.reference[query_rows.start : query_rows.stop],
        data.text[query_rows.start : query_rows.stop],
        batch=config.encode_batch,
        device=device,
        n_gallery=data.gallery_size,
        progress=config.progress and qdist.rank() == 0,
        gallery_rows=gallery_rows,
    )
    if not qdist.is_distributed():
        return _mine_rows(queries, tokens, data, query_rows, config)
    tokens = qdist.all_gather_array(tokens)
    mined, error = None, None
    try:
        mined = _mine_rows(queries, tokens, data, query_rows, config)
    except ValueError as exc:  # raised on every rank, not on one while the others wait
        error = exc
    qdist.raise_together(error)
    assert mined is not None
    return qdist.gather_hard_negatives(mined)


def epoch_negatives(
    data: CIRTrainData, config: TrainConfig, negatives: HardNegatives | None, epoch: int
) -> tuple[np.ndarray, int]:
    """``(negatives, fallbacks)`` for ``epoch``: ``(Q,)`` (one per query) or ``(Q, K)`` for
    ``K = config.negatives_k > 1``. Mined methods draw from each query's band once bands exist
    (:class:`~qure.NegativeSampler`, a pure function of seed, query and epoch; ``K`` distinct
    ones); other draws, and slots a short or empty band leaves, are uniform random negatives
    (``fallbacks`` counts those slots)."""
    k = config.negatives_k
    n_pool = data.gallery_size
    fallback = np.stack(
        [
            random_negatives(n_pool, data.target, config.seed, epoch, data.positives, slot=j)
            for j in range(k)
        ],
        axis=1,
    )
    if negatives is None or config.method not in MINED_METHODS:
        return (fallback[:, 0] if k == 1 else fallback), 0
    sampler = NegativeSampler(negatives, seed=config.seed)
    drawn = sampler.sample(np.arange(len(data)), epoch, k=k).reshape(len(data), k)
    empty = drawn < 0
    chosen = np.where(empty, fallback, drawn)
    return (chosen[:, 0] if k == 1 else chosen), int(empty.sum())
