"""Torch glue: QuRe's reward (Bradley-Terry) loss, the contrastive baseline, and scoring helpers.

Named ``qure.torch``; inside it ``torch`` is always the real PyTorch (absolute imports).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce", "max_token_scores", "paired_scores", "reward_loss"]


def _temperature(temperature: float | torch.Tensor) -> float | torch.Tensor:
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError("temperature must be a scalar")
        if not bool((temperature.detach() > 0).all()):  # also refuses NaN
            raise ValueError(f"temperature must be positive, got {float(temperature)}")
        return temperature.reshape(())
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return float(temperature)


def reward_loss(
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    neg_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """QuRe's reward loss, averaged over queries.

    One negative per query (``neg_scores`` of shape ``(B,)``):
    ``-log sigmoid((s_pos - s_neg) / tau)``, the paper's Eq. 3 (equal to the released code's KL
    form). ``K`` negatives per query (``(B, K)``): the softmax generalisation
    ``-log softmax([s_pos, s_neg_1..K] / tau)[0]``, the same thing for ``K = 1``.
    ``neg_mask`` (``(B, K)`` bool) leaves out missing negatives.
    """
    tau = _temperature(temperature)
    if pos_scores.ndim != 1:
        raise ValueError(f"pos_scores must be (B,), got {tuple(pos_scores.shape)}")
    if neg_scores.ndim == 1:
        if neg_scores.shape != pos_scores.shape:
            raise ValueError(
                f"neg_scores {tuple(neg_scores.shape)} does not match pos_scores "
                f"{tuple(pos_scores.shape)}"
            )
        if neg_mask is not None:
            raise ValueError("neg_mask needs (B, K) negatives")
        return -F.logsigmoid((pos_scores - neg_scores) / tau).mean()
    if neg_scores.ndim != 2 or neg_scores.shape[0] != pos_scores.shape[0]:
        raise ValueError(f"neg_scores must be (B,) or (B, K), got {tuple(neg_scores.shape)}")
    logits = torch.cat([pos_scores[:, None], neg_scores], dim=1) / tau
    if neg_mask is not None:
        if neg_mask.shape != neg_scores.shape:
            raise ValueError("neg_mask must have the shape of neg_scores")
        mask = neg_mask.bool()
        keep = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        logits = logits.masked_fill(~keep, float("-inf"))
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()


def info_nce(
    scores: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch contrastive loss: ``scores[i, j]`` is query i against target j; the diagonal is
    the positive and every other target in the batch a negative.

    ``labels`` ``(B,)`` (optional) gives each row's positive column instead of the diagonal:
    ``scores`` may then be ``(B, M)``, e.g. a slice of a global batch against all its targets.
    """
    tau = _temperature(temperature)
    if labels is None:
        if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
            raise ValueError(f"scores must be square (B, B), got {tuple(scores.shape)}")
        labels = torch.arange(scores.shape[0], device=scores.device)
    elif scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be (B, M) and labels (B,), got {tuple(scores.shape)} and "
            f"{tuple(labels.shape)}"
        )
    return F.cross_entropy(scores / tau, labels)


def max_token_scores(queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, M)`` scores of ``queries`` ``(B, d)`` against ``tokens`` ``(M, T, d)``: the max over
    each image's T tokens of the dot product (BLIP-2 style; differentiable)."""
    if queries.ndim != 2 or tokens.ndim != 3 or queries.shape[1] != tokens.shape[2]:
        raise ValueError(
            f"expected queries (B, d) and tokens (M, T, d), got {tuple(queries.shape)} and "
            f"{tuple(tokens.shape)}"
        )
    return torch.einsum("bd,mtd->bmt", queries, tokens).amax(dim=-1)


def paired_scores(queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``(B,)`` scores of query i against image i (``queries`` (B, d), ``tokens`` (B, T, d))."""
    if queries.ndim != 2 or tokens.ndim != 3 or tokens.shape[::2] != queries.shape:
        raise ValueError(
            f"expected queries (B, d) and tokens (B, T, d), got {tuple(queries.shape)} and "
            f"{tuple(tokens.shape)}"
        )
    return torch.einsum("bd,btd->bt", queries, tokens).amax(dim=-1)
