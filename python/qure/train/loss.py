"""The training loss of one batch (or of this rank's slice of a global batch, under DDP)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import distributed as qdist
from ..models.protocol import CIRModel
from ..torch import info_nce, max_token_scores, paired_scores, reward_loss

__all__ = ["BatchLoss", "all_gather_with_grad"]


class _GatherRows(torch.autograd.Function):
    """All-gather along the first axis; the backward pass sums every rank's gradient for this
    rank's rows (an all-reduce of the gathered gradient, then this rank's block)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(qdist.world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = qdist.rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(x: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Rows ``x[:counts[rank]]`` of every rank, concatenated in rank order, differentiable.

    ``counts`` (the same list on every rank) says how many rows each rank contributes; ``x`` may
    hold more (they are ignored). The backward pass gives each rank the sum over all ranks of
    the gradient for its rows, so a loss summed over ranks differentiates as in one process.
    """
    if not qdist.is_distributed():
        # The tensor itself when whole: an extra slice node would reorder gradient accumulation
        # and change one-process results at the rounding level.
        return x if x.shape[0] == counts[0] else x[: counts[0]]
    longest = max(max(counts), 1)
    if x.shape[0] >= longest:
        padded = x[:longest]
    else:
        padded = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    gathered = _GatherRows.apply(padded)
    return torch.cat([gathered[r * longest : r * longest + n] for r, n in enumerate(counts)])


class BatchLoss(nn.Module):
    """One rank's share of a global batch's loss (wrapped in ``DistributedDataParallel`` under
    torch.distributed; a single process uses it as it is, with the whole batch and weight 1).

    ``forward(reference, text, targets, negatives, weight, counts, offset)`` encodes this rank's
    slice of the batch through the model (so DDP sees the forward and synchronises gradients)
    and returns ``weight`` times the mean loss over the slice. With ``b`` the global batch size,
    a slice of ``n`` items and ``W`` ranks the trainer passes ``weight = n * W / b``: DDP
    averages gradients over ranks, so the step uses ``(1 / W) * sum_r (n_r W / b) mean_r =
    (1 / b) * sum_i grad l_i``, the gradient of the one-process mean over the global batch, for
    any (even uneven or empty) slices. A rank with an empty slice runs one item with weight 0.

    Reward methods: :func:`qure.torch.reward_loss`, against one negative per query, or ``K``
    (``negatives`` then holds ``B * K`` images, query-major: the ``(B, K)`` loss). Contrastive:
    :func:`qure.torch.info_nce` over the *global* batch: target embeddings are gathered from all
    ranks with gradient (``counts`` rows per rank), each query scores against all ``b`` targets
    and its positive is at ``offset + i``, so two ranks compute the same loss and gradient as
    one process.
    """

    def __init__(self, model: CIRModel | nn.Module, reward: bool) -> None:
        super().__init__()
        if not isinstance(model, CIRModel):
            raise TypeError(
                f"{type(model).__name__} is not a CIR model: it needs encode_images, "
                "encode_queries and temperature (qure.models.CIRModel)"
            )
        self.model = model
        self.reward = reward

    def forward(
        self,
        reference: torch.Tensor,
        text: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor | None,
        weight: float,
        counts: Sequence[int],
        offset: int,
    ) -> torch.Tensor:
        model: Any = self.model
        queries = model.encode_queries(reference, text)
        target_tokens = model.encode_images(targets)
        if self.reward:
            if negatives is None:
                raise ValueError("reward methods need negatives")
            negative_tokens = model.encode_images(negatives)  # before scoring: a fixed graph order
            k = negative_tokens.shape[0] // max(queries.shape[0], 1)
            if k <= 1:
                negative_scores = paired_scores(queries, negative_tokens)
            else:  # K negatives per query, query-major: (B * K, T, d) -> (B, K)
                grouped = negative_tokens.reshape(queries.shape[0], k, *negative_tokens.shape[1:])
                negative_scores = torch.einsum("bd,bktd->bkt", queries, grouped).amax(dim=-1)
            loss = reward_loss(
                paired_scores(queries, target_tokens), negative_scores, model.temperature
            )
        else:
            everyone = all_gather_with_grad(target_tokens, counts)
            scores = max_token_scores(queries, everyone)
            labels = torch.arange(queries.shape[0], device=scores.device) + offset
            labels = labels.clamp(max=scores.shape[1] - 1)  # a weight-0 stand-in item
            loss = info_nce(scores, model.temperature, labels=labels)
        return loss * weight
