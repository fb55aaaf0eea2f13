"""The settings of a training run."""

from __future__ import annotations

from dataclasses import dataclass

from .._arrays import check_choice, check_int
from ..mining import PAIRINGS

__all__ = ["METHODS", "MINED_METHODS", "TrainConfig"]

METHODS = ("qure", "contrastive", "topk", "percpos", "random")
"""Training methods: QuRe, and the baselines QuRe is compared with."""
MINED_METHODS = ("qure", "topk", "percpos")
"""Methods whose negatives are mined from the model's own ranking (re-mined during training)."""


@dataclass
class TrainConfig:
    """Settings of :func:`qure.train.train` (defaults suit the built-in shapes benchmark on a
    CPU; the paper's settings are in ``configs/``)."""

    method: str = "qure"
    """``"qure"``: reward loss against negatives drawn from the two-steep-drop band;
    ``"contrastive"``: in-batch InfoNCE; ``"topk"``: reward loss against negatives drawn from
    the ``topk_k`` best-scored non-targets; ``"percpos"``: NV-Retriever's TopK-PercPos (arXiv
    2407.15831), reward loss against negatives drawn from the first ``percpos_candidates``
    items scoring at most ``(1 - percpos_relative_margin)`` of the target's score (sign-safe);
    ``"random"``: reward loss against uniform negatives."""
    epochs: int = 12
    """Training epochs."""
    lr: float = 1e-3
    """AdamW's peak learning rate; cosine decay per epoch to ``lr / 100``."""
    weight_decay: float = 0.05
    """AdamW's weight decay."""
    batch_size: int = 32
    """Queries per optimisation step (the global batch under DDP)."""
    n_def: int = 6
    """The paper's re-mining divisor: mined methods warm up with random negatives for
    ``epochs // n_def`` epochs and re-mine every ``epochs // n_def`` epochs after that (at least
    every epoch)."""
    topk_k: int = 10
    """``"topk"``: how many of the best-scored non-targets form each query's band."""
    percpos_relative_margin: float = 0.05
    """``"percpos"``: candidates must score at most ``r - |r| * margin``, ``r`` the target's
    score (NV-Retriever's best: perc 0.95, i.e. 0.05)."""
    percpos_candidates: int = 10
    """``"percpos"``: how many of the best surviving candidates form each query's band (10 in
    NV-Retriever)."""
    negatives_per_query: int | None = None
    """Negatives per query per step for reward methods, drawn without repeats from the band
    (the ``(B, K)`` reward loss, a softmax over the target and ``K`` negatives). ``None``: 4
    for ``"percpos"`` (NV-Retriever's 4 of the top 10), 1 otherwise (QuRe's paper setting)."""
    consecutive_threshold: int = 1
    """``"qure"``: the two drops must be more than this many positions apart."""
    pairing: str = "consecutive"
    """``"qure"``: how the steepest drops are paired (``"consecutive"`` as the released code,
    or ``"anchored"``; see :func:`qure.mine_negatives`)."""
    max_rank: int | None = 400
    """``"qure"``: look for the two drops among the first ``max_rank`` items after the target;
    ``None`` is the released code's whole-tail rule (use it to reproduce the paper). 400 was
    chosen on the validation split of the open-edit shapes benchmark (``docs/benchmark.md``)."""
    seed: int = 0
    """Seeds the batch order, the random negatives and the band sampler (not the model's
    initialisation: seed torch before building the model)."""
    amp: bool = True
    """Mixed precision (float16 autocast and gradient scaling), on CUDA only."""
    device: str = "auto"
    """``"auto"`` (CUDA when available, else the CPU) or a torch device name."""
    checkpoint_dir: str | None = None
    """Where ``last.pt`` is written after every epoch (atomically; see :mod:`qure.checkpoint`)."""
    resume: bool = False
    """Continue from ``checkpoint_dir/last.pt`` when it exists (bit for bit)."""
    log_path: str | None = None
    """A JSON-lines file that gets one record per epoch (appended)."""
    progress: bool = True
    """Progress bars (tqdm) for epochs and encoding."""
    encode_batch: int = 512
    """Images and queries per forward pass when encoding the split for mining."""

    def validate(self) -> None:
        """Raises ``ValueError`` (``TypeError`` for a non-integer count) naming a bad field."""
        check_choice(self.method, "method", METHODS)
        for name in (
            "epochs",
            "batch_size",
            "n_def",
            "topk_k",
            "encode_batch",
            "percpos_candidates",
        ):
            check_int(getattr(self, name), name, 1)
        if self.negatives_per_query is not None:
            check_int(self.negatives_per_query, "negatives_per_query", 1)
        if not 0 <= self.percpos_relative_margin < 1:
            raise ValueError(
                f"percpos_relative_margin must be in [0, 1), got {self.percpos_relative_margin}"
            )
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay non-negative")
        check_int(self.consecutive_threshold, "consecutive_threshold", 0)
        check_choice(self.pairing, "pairing", PAIRINGS)
        if self.max_rank is not None:
            try:
                check_int(self.max_rank, "max_rank", 1)
            except (TypeError, ValueError):
                raise ValueError(
                    f"max_rank must be a positive integer or None, got {self.max_rank!r}"
                ) from None
        if self.resume and not self.checkpoint_dir:
            raise ValueError("resume needs checkpoint_dir")

    @property
    def mining_period(self) -> int:
        """Epochs of random warm-up, and epochs between re-minings."""
        return max(1, self.epochs // self.n_def)

    @property
    def negatives_k(self) -> int:
        """Negatives per query per step (``negatives_per_query`` resolved)."""
        if self.negatives_per_query is not None:
            return self.negatives_per_query
        return 4 if self.method == "percpos" else 1

    @property
    def reward(self) -> bool:
        """Whether the method trains with the reward loss (one negative per query)."""
        return self.method != "contrastive"

    def mines_at(self, epoch: int) -> bool:
        """Whether a mined method (re-)mines at the start of ``epoch``."""
        period = self.mining_period
        return self.method in MINED_METHODS and epoch >= period and epoch % period == 0
