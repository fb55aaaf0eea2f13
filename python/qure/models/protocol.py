"""What qure asks of a composed image retrieval model (the trainer, its loss, the model registry
and the paper experiments all take this)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["CIRModel"]


@runtime_checkable
class CIRModel(Protocol):
    """A CIR model: gallery images to ``T`` token embeddings each, a (reference image, text)
    query to one embedding; an image scores the max over its tokens of the dot product.

    Required: ``encode_images``, ``encode_queries`` and ``temperature``. Optional (models built
    by :func:`qure.models.build_model` have them; the paper experiments use them when present):
    ``preprocess`` (a PIL image to the pixel tensor ``encode_images`` takes) and ``tokenize``
    (texts to the ``(Q, L)`` int64 token ids ``encode_queries`` takes).
    """

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, T, d)`` token embeddings of ``N`` images."""
        ...

    def encode_queries(self, reference: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` query embeddings of reference images ``(B, ...)`` and token ids
        ``(B, L)``."""
        ...

    @property
    def temperature(self) -> Any:
        """The loss temperature: a positive scalar (float or 0-d tensor, possibly learned)."""
        ...
