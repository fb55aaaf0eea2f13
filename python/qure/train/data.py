"""A training split (an image pool and the queries over it), and encoding it for mining."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.protocol import CIRModel

__all__ = ["CIRTrainData", "ImageSource", "encode_split", "load_images"]


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

    @property
    def gallery_size(self) -> int:
        """How many pool images form the gallery (``n_gallery``, resolved)."""
        assert self.n_gallery is not None  # set by __post_init__
        return self.n_gallery


def load_images(images: ImageSource, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """The pool images ``idx`` as a tensor on ``device``."""
    batch = images[np.asarray(idx)]
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    return batch.to(device)


@torch.no_grad()
def encode_split(
    model: CIRModel | torch.nn.Module,
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
    encoder: Any = model
    device = torch.device(device)
    g = len(images) if n_gallery is None else n_gallery
    rows = range(g) if gallery_rows is None else gallery_rows
    # An empty share (more ranks than items) still needs the feature shapes: encode one, keep 0.
    keep_gallery, keep_queries = len(rows), len(reference)
    if not keep_gallery:
        rows = range(0, 1)
    if not keep_queries and len(images):
        reference, text = np.zeros(1, dtype=np.int64), np.zeros((1, text.shape[1]), text.dtype)
    was_training = encoder.training
    encoder.eval()
    try:
        tokens = [
            encoder.encode_images(
                load_images(images, np.arange(i, min(i + batch, rows.stop)), device)
            )
            .float()
            .cpu()
            for i in tqdm(
                range(rows.start, rows.stop, batch), desc="encode gallery", disable=not progress
            )
        ]
        queries = [
            encoder.encode_queries(
                load_images(images, reference[i : i + batch], device),
                torch.from_numpy(text[i : i + batch]).to(device),
            )
            .float()
            .cpu()
            for i in tqdm(
                range(0, len(reference), batch), desc="encode queries", disable=not progress
            )
        ]
    finally:
        encoder.train(was_training)
    return torch.cat(queries)[:keep_queries].numpy(), torch.cat(tokens)[:keep_gallery].numpy()
