"""The training loop, in named steps: restore, choose the epoch's negatives, run the epoch,
checkpoint."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed as qdist
from ..checkpoint import load_checkpoint, save_checkpoint
from ..mining import HardNegatives
from ..models.protocol import CIRModel
from .config import TrainConfig
from .data import CIRTrainData, load_images
from .loss import BatchLoss
from .negatives import epoch_negatives, mine_split

__all__ = ["TrainResult", "Trainer", "train"]

_BAND_FIELDS = ("indptr", "indices", "target_rank", "drops", "tail_length")


@dataclass
class TrainResult:
    """What :func:`train` leaves: per-epoch log records, the last mined negatives, and for the
    epochs this call ran the batch order (``orders[e]``, (Q,) query indices; batches are its
    consecutive ``batch_size`` slices) and, for reward methods, the negative each query's loss
    used (``drawn[e]``, (Q,) pool indices, or (Q, K) with ``K`` negatives per query)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    negatives: HardNegatives | None = None
    orders: list[np.ndarray] = field(default_factory=list)
    drawn: list[np.ndarray] = field(default_factory=list)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """One training run of ``model`` on ``data``, step by step (:func:`train` drives it).

    Per epoch: :meth:`choose_negatives` (re-mining when due), :meth:`run_epoch` (the batches),
    then the log record and :meth:`checkpoint`. :meth:`restore` continues from a checkpoint.
    """

    def __init__(
        self,
        model: CIRModel | torch.nn.Module,
        data: CIRTrainData,
        config: TrainConfig,
        evaluate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
    ) -> None:
        config.validate()
        if len(data) == 0 or data.gallery_size < 2:
            raise ValueError("training needs at least one query and two gallery images")
        module: Any = model
        self.model: torch.nn.Module = module
        self.data, self.config, self.evaluate = data, config, evaluate
        device = _device(config.device)
        self.distributed = qdist.is_distributed()
        self.world, self.rank = qdist.world_size(), qdist.rank()
        self.lead = self.rank == 0  # writes the log and the checkpoint, shows progress
        if self.distributed and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", qdist.local_rank())
            torch.cuda.set_device(device)
        self.device = device
        self.model.to(device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=config.epochs, eta_min=config.lr / 100
        )
        self.use_amp = config.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.result = TrainResult()
        self.negatives: HardNegatives | None = None
        self.start_epoch = 0
        self.checkpoint_path = (
            Path(config.checkpoint_dir) / "last.pt" if config.checkpoint_dir else None
        )
        if self.checkpoint_path is not None:
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        # One loss for one process and for DDP: every rank takes a contiguous slice of each
        # global batch (a single process takes all of it); see BatchLoss for why gradients agree.
        self.batch_loss: torch.nn.Module = BatchLoss(self.model, reward=config.reward)

    def restore(self) -> None:
        """Continues from the checkpoint when ``config.resume`` is set and it exists."""
        if not (self.config.resume and self.checkpoint_path and self.checkpoint_path.exists()):
            return
        state = load_checkpoint(self.checkpoint_path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = state["epoch"] + 1
        self.result.history = state["history"]
        if state["negatives"] is not None:
            self.negatives = HardNegatives(**state["negatives"])

    def choose_negatives(self, epoch: int, record: dict[str, Any]) -> np.ndarray | None:
        """Re-mines when due (logging where the bands sit and warning when they degenerate),
        then returns each query's negative for ``epoch`` (None for contrastive training)."""
        config = self.config
        if config.mines_at(epoch):
            self.negatives = mine_split(self.model, self.data, config, self.device)
            if self.negatives.tail_length is not None:
                record["mining"] = self.negatives.diagnostics()
                message = self.negatives.degenerate_warning()
                if message is not None and self.lead:
                    warnings.warn(
                        f"{config.method} epoch {epoch}: {message}", RuntimeWarning, stacklevel=4
                    )
        record["mined"] = config.mines_at(epoch)
        if not config.reward:
            return None
        negatives, record["fallbacks"] = epoch_negatives(self.data, config, self.negatives, epoch)
        return negatives

    def run_epoch(self, epoch: int, negatives: np.ndarray | None) -> float:
        """One pass over the queries in a seeded order; returns the mean batch loss."""
        config, data, device = self.config, self.data, self.device
        order = np.random.default_rng([config.seed, epoch]).permutation(len(data))
        self.result.orders.append(order)
        if negatives is not None:
            self.result.drawn.append(negatives)
        self.model.train()
        losses = []
        bar = tqdm(
            range(0, len(order), config.batch_size),
            desc=f"{config.method} epoch {epoch + 1}/{config.epochs}",
            disable=not (config.progress and self.lead),
            leave=False,
        )
        world = self.world
        for start in bar:
            idx = order[start : start + config.batch_size]
            part = qdist.shard(len(idx), self.rank, world)  # this rank's slice of the batch
            counts = [len(qdist.shard(len(idx), r, world)) for r in range(world)]
            weight = len(part) * world / len(idx)
            # An empty slice runs one stand-in item with weight 0 (DDP needs a step).
            idx = idx[part.start : part.stop] if len(part) else idx[:1]
            ref = load_images(data.images, data.reference[idx], device)
            text = torch.from_numpy(data.text[idx]).to(device)
            targets = load_images(data.images, data.target[idx], device)
            negs = None
            if negatives is not None:
                negs = load_images(data.images, negatives[idx].reshape(-1), device)
            with torch.autocast(device.type, enabled=self.use_amp):
                loss = self.batch_loss(ref, text, targets, negs, weight, counts, part.start)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # Under DDP, loss / world is this rank's part of the global batch's mean loss.
            losses.append(float(loss.detach()) / world)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if self.distributed:
            return qdist.all_reduce_sum(float(np.sum(losses))) / len(losses)
        return float(np.mean(losses))

    def checkpoint(self, epoch: int) -> None:
        """Writes ``last.pt`` (rank 0, atomically), then waits for every rank."""
        if self.checkpoint_path is None:
            return
        if self.lead:
            negatives = self.negatives
            save_checkpoint(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "epoch": epoch,
                    "history": self.result.history,
                    "negatives": None
                    if negatives is None
                    else {f: getattr(negatives, f) for f in _BAND_FIELDS},
                    "config": asdict(self.config),
                },
                self.checkpoint_path,
            )
        qdist.barrier()  # no rank runs ahead of the checkpoint (e.g. to resume from it)

    def fit(self) -> TrainResult:
        """Restores, then runs the remaining epochs; returns the log."""
        self.restore()
        config = self.config
        if self.distributed:
            self.batch_loss = qdist.wrap_ddp(self.batch_loss, self.device)
        log: TextIO | None = None
        if config.log_path and self.lead:
            log = open(config.log_path, "a")  # noqa: SIM115
        try:
            for epoch in range(self.start_epoch, config.epochs):
                started = time.perf_counter()
                record: dict[str, Any] = {"method": config.method, "epoch": epoch}
                record["seed"] = config.seed
                negatives = self.choose_negatives(epoch, record)
                record["loss"] = self.run_epoch(epoch, negatives)
                record["lr"] = float(self.optimizer.param_groups[0]["lr"])
                self.scheduler.step()
                self._record_bands(record)
                if self.evaluate is not None:
                    record.update(self.evaluate(self.model, epoch))
                record["seconds"] = round(time.perf_counter() - started, 3)
                self.result.history.append(record)
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                self.checkpoint(epoch)
        finally:
            if log is not None:
                log.close()
        self.result.negatives = self.negatives
        return self.result

    def _record_bands(self, record: dict[str, Any]) -> None:
        mined = record.pop("mined")
        if self.negatives is None:
            return
        sizes = self.negatives.sizes
        record.update(
            mined=mined,
            band_mean=float(sizes.mean()) if len(sizes) else math.nan,
            band_std=float(sizes.std()) if len(sizes) else math.nan,
            band_empty=int((sizes == 0).sum()),
        )


def train(
    model: CIRModel | torch.nn.Module,
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
    return Trainer(model, data, config, evaluate).fit()
