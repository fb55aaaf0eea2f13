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

The steps live in submodules: :mod:`~qure.train.config` (:class:`TrainConfig`),
:mod:`~qure.train.data` (:class:`CIRTrainData`, :func:`encode_split`),
:mod:`~qure.train.negatives` (mining and sampling each epoch's negatives),
:mod:`~qure.train.loss` (:class:`BatchLoss`, one process or DDP) and :mod:`~qure.train.loop`
(:class:`Trainer`: restore, choose negatives, run the epoch, checkpoint).
"""

from __future__ import annotations

from .config import METHODS, MINED_METHODS, TrainConfig
from .data import CIRTrainData, ImageSource, encode_split
from .loop import Trainer, TrainResult, train
from .loss import BatchLoss

__all__ = [
    "METHODS",
    "MINED_METHODS",
    "BatchLoss",
    "CIRTrainData",
    "ImageSource",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "encode_split",
    "train",
]
