"""A small CIR model that trains on a laptop CPU in minutes and mirrors the BLIP-2 setting.

Image side: a 3-layer CNN, then T learned query tokens attend over its spatial features (a
Q-Former in miniature), each projected and L2-normalised: ``(N, T, d)``. Query side: the
reference image's pooled features and a GRU over the text, fused by an MLP into one L2-normalised
``d``-vector. Scores are the max over the T tokens of the dot product; a learned temperature is
used by the training losses only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TinyCIRModel"]


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 (or float in [0, 1]) to ``(N, 3, H, W)`` float in [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2)
    x = x.float() / 255.0 if images.dtype == torch.uint8 else x.float()
    return x * 2.0 - 1.0


class TinyCIRModel(nn.Module):
    """Small composed-image-retrieval model with token-set image embeddings."""

    def __init__(
        self,
        vocab_size: int,
        *,
        dim: int = 64,
        tokens: int = 8,
        width: int = 48,
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        if vocab_size < 2 or dim < 1 or tokens < 1 or width < 8:
            raise ValueError("vocab_size >= 2, dim >= 1, tokens >= 1 and width >= 8 are required")
        self.dim, self.n_tokens = dim, tokens
        self.trunk = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width // 2, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.position = nn.Parameter(torch.zeros(1, width, 1, 1))
        self.token_queries = nn.Parameter(torch.randn(tokens, width) / math.sqrt(width))
        self.token_proj = nn.Linear(width, dim)
        self.word = nn.Embedding(vocab_size, width, padding_idx=0)
        self.text = nn.GRU(width, width, batch_first=True)
        self.fuse = nn.Sequential(
            nn.Linear(3 * width, 2 * width), nn.ReLU(inplace=True), nn.Linear(2 * width, dim)
        )
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def temperature(self) -> torch.Tensor:
        """The learned loss temperature (clamped to [0.01, 1])."""
        return self.log_temperature.exp().clamp(0.01, 1.0)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, HW)`` spatial features with a coordinate signal."""
        x = self.trunk(_as_float_images(images))
        n, c, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1)
        xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w)
        x = x + self.position * (ys + xs)
        return x.reshape(n, c, h * w)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, T, d)`` L2-normalised token embeddings of gallery images."""
        feats = self._features(images)  # (N, C, P)
        attn = torch.einsum("tc,ncp->ntp", self.token_queries, feats) / math.sqrt(feats.shape[1])
        pooled = torch.einsum("ntp,ncp->ntc", attn.softmax(dim=-1), feats)
        return F.normalize(self.token_proj(pooled), dim=-1)

    def encode_queries(self, reference: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` L2-normalised query embeddings from reference images and token ids."""
        image = self._features(reference).mean(dim=-1)  # (B, C)
        lengths = (text != 0).sum(dim=1).clamp(min=1)
        packed = nn.utils.rnn.pack_padded_sequence(
            self.word(text), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, hidden = self.text(packed)
        words = hidden[-1]  # (B, C)
        fused = self.fuse(torch.cat([image, words, image * words], dim=1))
        return F.normalize(fused, dim=-1)
