"""QuRe training: reward loss against two-steep-drop hard negatives, re-mined during training.

Methods (all share the loop, the optimiser and the schedule):

- ``qure``: reward (Bradley-Terry) loss, one negative per query per epoch drawn from the band
  between the two steepest score drops after the target (``qure.mine_from_features``), looked
  for among the first ``max_rank`` items after the target (``None``: the whole tail, as the
  released code does). Every re-mining logs where the bands sit in their tails
  (:meth:`HardNegatives.diagnostics`) and warns when most of them are degenerate.
- ``contrastive``: in-batch InfoNCE (every other target in the batch is a negative).
- ``topk``: reward loss, negatives drawn from the K highest-scored non-targets.
- ``random``: reward loss, negatives drawn uniformly from the corpus minus the target.

As in the paper, ``qure`` and ``topk`` use random negatives for a warm-up of ``epochs // n_def``
epochs and re-mine every ``epochs // n_def`` epochs after that (n_def = 6: for 30 epochs, at
epochs 5, 10, 15, 20, 25). Queries whose band is empty fall back to a random negative (counted
and logged). AdamW, cosine decay per epoch to lr/100, optional mixed precision on CUDA. A
checkpoint is written atomically and durably after every epoch (:mod:`qure.checkpoint`: read
back without unpickling code) and ``resume=True`` continues exactly.
Under ``torchrun`` training is data-parallel (DDP) and mining is sharded (:mod:`qure.distributed`).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed as qdist
from .checkpoint import load_checkpoint, save_checkpoint
from .mining import HardNegatives
from .retrieval import mine_from_features, topk
from .sampling import NegativeSampler

__all__ = [
    "METHODS",
    "CIRTrainData",
    "ImageSource",
    "TrainConfig",
    "TrainResult",
    "encode_split",
    "train",
]

METHODS = ("qure", "contrastive", "topk", "random")


class ImageSource(Protocol):
    """Images by index: an ``(N, H, W, 3)`` uint8 array, or any pool that loads and preprocesses
    a batch (``pool[np.array([...])]`` returns an array or tensor the model's encoders take)."""

    def __len__(self) -> int: ...

    def __getitem__(self, idx: np.ndarray) -> Any: ...


@dataclass
class CIRTrainData:
    """A training split: an image pool and the queries over it.

    The first ``n_gallery`` pool images are the gallery (the mining pool, where negatives come
    from); reference images that are not in the gallery may follow them. ``groups`` splits the
    gallery and the queries into independent mining pools (FashionIQ mines within a category).
    """

    images: ImageSource  # the pool
    reference: np.ndarray  # (Q,) pool index of each query's reference image
    text: np.ndarray  # (Q, L) int64 token ids (padding as the model expects)
    target: np.ndarray  # (Q,) pool index of each query's annotated target (< n_gallery)
    gallery_ids: np.ndarray | None = None  # (n_gallery,) ids when the gallery holds duplicates
    n_gallery: int | None = None  # default: the whole pool
    query_groups: np.ndarray | None = None  # (Q,) mining group of each query
    gallery_groups: np.ndarray | None = None  # (n_gallery,) mining group of each gallery image
    # Per query, other gallery images known to answer it too (e.g. CIRCO's extra ground truths):
    # never drawn as negatives (mined or random). Contrastive in-batch negatives ignore them.
    positives: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        q = len(self.target)
        if self.n_gallery is None:
            self.n_gallery = len(self.images)
        if self.reference.shape != (q,) or self.text.ndim != 2 or self.text.shape[0] != q:
            raise ValueError("reference (Q,), text (Q, L) and target (Q,) must agree")
        pool, g = len(self.images), self.n_gallery
        if not 1 <= g <= pool:
            raise ValueError(f"n_gallery must be in 1..{pool}, got {g}")
        if q and (self.reference.min() < 0 or self.reference.max() >= pool):
            raise ValueError(f"reference holds indices outside the pool of {pool} images")
        if q and (self.target.min() < 0 or self.target.max() >= g):
            raise ValueError(f"target holds indices outside the gallery of {g} images")
        if self.gallery_ids is not None and len(self.gallery_ids) != g:
            raise ValueError("gallery_ids must have one entry per gallery image")
        if (self.query_groups is None) != (self.gallery_groups is None):
            raise ValueError("query_groups and gallery_groups go together")
        if self.query_groups is not None and (
            len(self.query_groups) != q or len(self.gallery_groups) != g
        ):
            raise ValueError("query_groups must be (Q,) and gallery_groups (n_gallery,)")
        if self.positives is not None:
            if len(self.positives) != q:
                raise ValueError(
                    f"positives must hold one list per query ({q}), got {len(self.positives)}"
                )
            self.positives = [np.asarray(p, dtype=np.int64).reshape(-1) for p in self.positives]
            for i, p in enumerate(self.positives):
                if p.size and (p.min() < 0 or p.max() >= g):
                    raise ValueError(f"positives[{i}] holds indices outside the gallery of {g}")
                if np.setdiff1d(p, [self.target[i]]).size >= g - 1:
                    raise ValueError(
                        f"positives[{i}] covers the whole gallery: query {i} has no negative"
                    )

    def __len__(self) -> int:
        return len(self.target)


@dataclass
class TrainConfig:
    """Settings of :func:`train` (defaults suit the built-in shapes benchmark on a CPU)."""

    method: str = "qure"
    epochs: int = 12
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 32
    n_def: int = 6
    topk_k: int = 10
    consecutive_threshold: int = 1
    pairing: str = "consecutive"
    # QuRe looks for the two drops among the first max_rank items after the target; None is the
    # released code's whole-tail rule (use it to reproduce the paper). 400 was chosen on the
    # validation split of the open-edit shapes benchmark (docs/benchmark.md, README).
    max_rank: int | None = 400
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    checkpoint_dir: str | None = None
    resume: bool = False
    log_path: str | None = None
    progress: bool = True
    encode_batch: int = 512

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("epochs", "batch_size", "n_def", "topk_k", "encode_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay non-negative")
        if self.max_rank is not None and (
            isinstance(self.max_rank, bool)
            or not isinstance(self.max_rank, (int, np.integer))
            or self.max_rank < 1
        ):
            raise ValueError(f"max_rank must be a positive integer or None, got {self.max_rank!r}")
        if self.resume and not self.checkpoint_dir:
            raise ValueError("resume needs checkpoint_dir")

    @property
    def mining_period(self) -> int:
        """Epochs of random warm-up, and epochs between re-minings."""
        return max(1, self.epochs // self.n_def)


@dataclass
class TrainResult:
    """What :func:`train` leaves: per-epoch log records, the last mined negatives, and for the
    epochs this call ran the batch order (``orders[e]``, (Q,) query indices; batches are its
    consecutive ``batch_size`` slices) and, for reward methods, the negative each query's loss
    used (``drawn[e]``, (Q,) pool indices)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    negatives: HardNegatives | None = None
    orders: list[np.ndarray] = field(default_factory=list)
    drawn: list[np.ndarray] = field(default_factory=list)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batch(images: ImageSource, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    batch = images[np.asarray(idx)]
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    return batch.to(device)


def _images(data: CIRTrainData, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return _batch(data.images, idx, device)


@torch.no_grad()
def encode_split(
    model: torch.nn.Module,
    images: ImageSource,
    reference: np.ndarray,
    text: np.ndarray,
    *,
    batch: int = 512,
    device: torch.device | str = "cpu",
    n_gallery: int | None = None,
    progress: bool = False,
    gallery_rows: range | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(queries (Q, d), gallery tokens (G, T, d))`` as float32 NumPy, in eval mode.

    The gallery is the first ``n_gallery`` images (default all); ``gallery_rows`` encodes only
    those pool images instead (a rank's gallery shard).
    """
    device = torch.device(device)
    g = len(images) if n_gallery is None else n_gallery
    rows = range(g) if gallery_rows is None else gallery_rows
    # An empty share (more ranks than items) still needs the feature shapes: encode one, keep 0.
    keep_gallery, keep_queries = len(rows), len(reference)
    if not keep_gallery:
        rows = range(0, 1)
    if not keep_queries and len(images):
        reference, text = np.zeros(1, dtype=np.int64), np.zeros((1, text.shape[1]), text.dtype)
    was_training = model.training
    model.eval()
    try:
        tokens = [
            model.encode_images(_batch(images, np.arange(i, min(i + batch, rows.stop)), device))
            .float()
            .cpu()
            for i in tqdm(
                range(rows.start, rows.stop, batch), desc="encode gallery", disable=not progress
            )
        ]
        queries = [
            model.encode_queries(
                _batch(images, reference[i : i + batch], device),
                torch.from_numpy(text[i : i + batch]).to(device),
            )
            .float()
            .cpu()
            for i in tqdm(
                range(0, len(reference), batch), desc="encode queries", disable=not progress
            )
        ]
    finally:
        model.train(was_training)
    return torch.cat(queries)[:keep_queries].numpy(), torch.cat(tokens)[:keep_gallery].numpy()


def _random_negatives(
    n_pool: int,
    target: np.ndarray,
    seed: int,
    epoch: int,
    positives: list[np.ndarray] | None = None,
) -> np.ndarray:
    """One uniform draw per query from the pool minus its target (and its known positives)."""
    rng = np.random.default_rng([seed, epoch, 0x52414E44])
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


def _mine_group(
    queries: np.ndarray,
    tokens: np.ndarray,
    target: np.ndarray,
    gallery_ids: np.ndarray | None,
    config: TrainConfig,
    positives: list[np.ndarray] | None = None,
) -> HardNegatives:
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
    # topk: the K highest-scored items other than the target (and its known positives).
    q = len(target)
    k = min(config.topk_k, len(tokens) - 1)
    if k < 1:
        return HardNegatives(
            indptr=np.zeros(q + 1, dtype=np.int64),
            indices=np.zeros(0, dtype=np.int64),
            target_rank=np.full(q, -1, dtype=np.int64),
            drops=np.full((q, 2), -1, dtype=np.int64),
        )
    exclude: Any = target
    if positives is not None:
        exclude = [np.append(p, t) for p, t in zip(positives, target)]
    _, indices = topk(queries, tokens, k, exclude=exclude)
    bands = [row[row >= 0] for row in indices.astype(np.int64)]  # short rows are -1-padded
    sizes = np.array([len(b) for b in bands], dtype=np.int64)
    return HardNegatives(
        indptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        indices=np.concatenate(bands) if q else np.zeros(0, dtype=np.int64),
        target_rank=np.full(q, -1, dtype=np.int64),
        drops=np.full((q, 2), -1, dtype=np.int64),
    )


def _mine(
    model: torch.nn.Module, data: CIRTrainData, config: TrainConfig, device: torch.device
) -> HardNegatives:
    """Encodes and mines the training split. Under torch.distributed each rank encodes its
    shares of the queries and the gallery, the gallery features are gathered, each rank mines
    its queries and the bands are gathered: the result equals the one-process one."""
    query_rows = qdist.shard(len(data))  # everything outside a process group
    gallery_rows = qdist.shard(data.n_gallery)
    queries, tokens = encode_split(
        model,
        data.images,
        data.reference[query_rows.start : query_rows.stop],
        data.text[query_rows.start : query_rows.stop],
        batch=config.encode_batch,
        device=device,
        n_gallery=data.n_gallery,
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
    return qdist.gather_hard_negatives(mined)


def _mine_rows(
    queries: np.ndarray,
    tokens: np.ndarray,
    data: CIRTrainData,
    query_rows: range,
    config: TrainConfig,
) -> HardNegatives:
    """Bands of the queries ``query_rows`` (features ``queries``) against the whole gallery."""
    target = data.target[query_rows.start : query_rows.stop]
    positives = (
        None if data.positives is None else data.positives[query_rows.start : query_rows.stop]
    )
    if data.query_groups is None:
        return _mine_group(queries, tokens, target, data.gallery_ids, config, positives)
    # Mine each group against its own gallery, then put the bands back in query order.
    query_groups = data.query_groups[query_rows.start : query_rows.stop]
    q = len(target)
    bands: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * q
    ranks = np.full(q, -1, dtype=np.int64)
    drops = np.full((q, 2), -1, dtype=np.int64)
    tails = np.full(q, -1, dtype=np.int64)
    for group in np.unique(query_groups):
        rows = np.nonzero(query_groups == group)[0]
        cols = np.nonzero(data.gallery_groups == group)[0]
        local = np.full(data.n_gallery, -1, dtype=np.int64)
        local[cols] = np.arange(len(cols))
        targets = local[target[rows]]
        if (targets < 0).any():
            raise ValueError(f"a target of mining group {group} lies outside the group's gallery")
        ids = None if data.gallery_ids is None else data.gallery_ids[cols]
        group_positives = None
        if positives is not None:  # in group-local indices; positives outside the group go
            group_positives = [local[p][local[p] >= 0] for p in (positives[r] for r in rows)]
        mined = _mine_group(queries[rows], tokens[cols], targets, ids, config, group_positives)
        for j, row in enumerate(rows):
            bands[row] = cols[mined[j]]
        ranks[rows] = mined.target_rank
        drops[rows] = mined.drops
        if mined.tail_length is not None:
            tails[rows] = mined.tail_length
    sizes = np.array([len(b) for b in bands], dtype=np.int64)
    return HardNegatives(
        indptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        indices=np.concatenate(bands).astype(np.int64) if q else np.zeros(0, dtype=np.int64),
        target_rank=ranks,
        drops=drops,
        tail_length=tails if config.method == "qure" else None,
    )


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    save_checkpoint(state, path)


def _negatives_state(negatives: HardNegatives | None) -> dict[str, np.ndarray] | None:
    if negatives is None:
        return None
    return {
        f: getattr(negatives, f)
        for f in ("indptr", "indices", "target_rank", "drops", "tail_length")
    }


def train(
    model: torch.nn.Module,
    data: CIRTrainData,
    config: TrainConfig,
    *,
    evaluate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
) -> TrainResult:
    """Trains ``model`` in place with ``config.method`` and returns the log.

    ``evaluate(model, epoch)`` (optional) is called after each epoch; its metrics are logged.

    Inside a ``torch.distributed`` process group of several ranks (``torchrun``; see
    :mod:`qure.distributed`) training is data-parallel with the same result as one process with
    the same ``batch_size`` (the global batch; up to float rounding): every rank takes a slice of
    each batch under ``DistributedDataParallel``, mining is sharded over the ranks, only rank 0
    writes the log and the checkpoint, and ``evaluate`` is called on every rank.
    """
    config.validate()
    if len(data) == 0 or data.n_gallery < 2:
        raise ValueError("training needs at least one query and two gallery images")
    device = _device(config.device)
    distributed = qdist.is_distributed()
    world, rank = qdist.world_size(), qdist.rank()
    lead = rank == 0  # writes the log and the checkpoint, shows progress
    if distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", qdist.local_rank())
        torch.cuda.set_device(device)
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs, eta_min=config.lr / 100
    )
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    result = TrainResult()
    negatives: HardNegatives | None = None
    start_epoch = 0
    checkpoint = Path(config.checkpoint_dir) / "last.pt" if config.checkpoint_dir else None
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    if config.resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"] + 1
        result.history = state["history"]
        if state["negatives"] is not None:
            negatives = HardNegatives(**state["negatives"])
    log = open(config.log_path, "a") if config.log_path and lead else None  # noqa: SIM115
    period = config.mining_period
    n_pool = data.n_gallery
    # One loss for one process and for DDP: every rank takes a contiguous slice of each global
    # batch (a single process takes all of it); see ShardLoss for why the gradients agree.
    batch_loss: torch.nn.Module = qdist.ShardLoss(model, reward=config.method != "contrastive")
    if distributed:
        batch_loss = qdist.wrap_ddp(batch_loss, device)
    try:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            record: dict[str, Any] = {"method": config.method, "epoch": epoch, "seed": config.seed}
            reward = config.method != "contrastive"
            mined_now = False
            if config.method in ("qure", "topk") and epoch >= period and epoch % period == 0:
                negatives = _mine(model, data, config, device)
                mined_now = True
                if negatives.tail_length is not None:
                    record["mining"] = negatives.diagnostics()
                    message = negatives.degenerate_warning()
                    if message is not None and lead:
                        warnings.warn(
                            f"{config.method} epoch {epoch}: {message}",
                            RuntimeWarning,
                            stacklevel=2,
                        )
            sampler = (
                NegativeSampler(negatives, seed=config.seed) if negatives is not None else None
            )
            order = np.random.default_rng([config.seed, epoch]).permutation(len(data))
            result.orders.append(order)
            if reward:
                fallback = _random_negatives(
                    n_pool, data.target, config.seed, epoch, data.positives
                )
                if sampler is not None and config.method in ("qure", "topk"):
                    drawn = sampler.sample(np.arange(len(data)), epoch)
                    empty = drawn < 0
                    epoch_negatives = np.where(empty, fallback, drawn)
                    record["fallbacks"] = int(empty.sum())
                else:
                    epoch_negatives = fallback
                    record["fallbacks"] = 0
                result.drawn.append(epoch_negatives)
            model.train()
            losses = []
            batches = range(0, len(order), config.batch_size)
            bar = tqdm(
                batches,
                desc=f"{config.method} epoch {epoch + 1}/{config.epochs}",
                disable=not (config.progress and lead),
                leave=False,
            )
            for start in bar:
                idx = order[start : start + config.batch_size]
                part = qdist.shard(len(idx), rank, world)  # this rank's slice of the batch
                counts = [len(qdist.shard(len(idx), r, world)) for r in range(world)]
                weight = len(part) * world / len(idx)
                # An empty slice runs one stand-in item with weight 0 (DDP needs a step).
                idx = idx[part.start : part.stop] if len(part) else idx[:1]
                ref = _images(data, data.reference[idx], device)
                text = torch.from_numpy(data.text[idx]).to(device)
                targets = _images(data, data.target[idx], device)
                negs = _images(data, epoch_negatives[idx], device) if reward else None
                with torch.autocast(device.type, enabled=use_amp):
                    loss = batch_loss(ref, text, targets, negs, weight, counts, part.start)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                # Under DDP, loss / world is this rank's part of the global batch's mean loss.
                losses.append(float(loss.detach()) / world)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            record["loss"] = (
                qdist.all_reduce_sum(float(np.sum(losses))) / len(losses)
                if distributed
                else float(np.mean(losses))
            )
            record["lr"] = float(optimizer.param_groups[0]["lr"])
            scheduler.step()
            if negatives is not None:
                sizes = negatives.sizes
                record.update(
                    mined=mined_now,
                    band_mean=float(sizes.mean()) if len(sizes) else math.nan,
                    band_std=float(sizes.std()) if len(sizes) else math.nan,
                    band_empty=int((sizes == 0).sum()),
                )
            if evaluate is not None:
                record.update(evaluate(model, epoch))
            record["seconds"] = round(time.perf_counter() - started, 3)
            result.history.append(record)
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if checkpoint is not None and lead:
                _save_atomic(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "epoch": epoch,
                        "history": result.history,
                        "negatives": _negatives_state(negatives),
                        "config": asdict(config),
                    },
                    checkpoint,
                )
            if checkpoint is not None:
                qdist.barrier()  # no rank runs ahead of the checkpoint (e.g. to resume from it)
    finally:
        if log is not None:
            log.close()
    result.negatives = negatives
    return result
