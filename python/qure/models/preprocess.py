"""Image preprocessing for the real backbones: CLIP4Cir/SPRC's target-pad transform.

``TargetPad`` pads an elongated image (long/short side ratio above ``ratio``) symmetrically with
black along its short side until the ratio is exactly ``ratio``, so that the following
short-side resize and centre crop keep most of the image (a plain centre crop of a tall dress
photo would cut off its top and bottom). Images already within the ratio are left alone. Then:
resize the short side to ``size`` (bicubic), centre-crop ``size`` x ``size``, convert to a float
tensor in [0, 1], normalise with the backbone's mean and std. No torchvision needed: PIL, NumPy
and torch only (PIL is imported when a transform runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._arrays import check_int

__all__ = [
    "BLIP2_MEAN",
    "BLIP2_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "TargetPad",
    "build_transform",
    "target_pad",
]

# BLIP-2 (LAVIS) and CLIP share OpenAI CLIP's normalisation constants.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BLIP2_MEAN = CLIP_MEAN
BLIP2_STD = CLIP_STD


def target_pad(image: Any, ratio: float = 1.25) -> Any:
    """``image`` (PIL) padded with black on its short side to a long/short ratio of ``ratio``
    when its ratio exceeds ``ratio``; otherwise ``image`` itself.

    As in CLIP4Cir: the padded short side is ``long / ratio`` (each side gets
    ``int((long / ratio - short) / 2)`` pixels), so a 300 x 100 image becomes 300 x 240.
    """
    from PIL import Image

    if not ratio >= 1.0:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    w, h = image.size
    if min(w, h) < 1:
        raise ValueError(f"empty image of size {w} x {h}")
    if max(w, h) / min(w, h) <= ratio:
        return image
    scaled = max(w, h) / ratio
    pad_w = max(int((scaled - w) / 2), 0)
    pad_h = max(int((scaled - h) / 2), 0)
    out = Image.new(image.mode, (w + 2 * pad_w, h + 2 * pad_h), _black(image.mode))
    out.paste(image, (pad_w, pad_h))
    return out


def _black(mode: str) -> Any:
    """Zero in every band (torchvision's ``pad(fill=0)``)."""
    from PIL import Image

    bands = Image.getmodebands(mode)
    return 0 if bands == 1 else (0,) * bands


def _bicubic(image_module: Any) -> Any:
    # Pillow >= 9.1 has Image.Resampling; older releases the module-level constant.
    return getattr(image_module, "Resampling", image_module).BICUBIC


class TargetPad:
    """PIL image -> ``(3, size, size)`` float tensor: target-pad, short-side bicubic resize,
    centre crop, normalise (CLIP4Cir's ``targetpad_transform``).

    ``ratio=None`` skips the padding (a plain resize and centre crop).
    """

    def __init__(
        self,
        ratio: float | None = 1.25,
        size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        size = check_int(size, "size", 1)
        if ratio is not None and not ratio >= 1.0:
            raise ValueError(f"ratio must be >= 1 (or None), got {ratio}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError("mean and std need 3 values each, std positive")
        self.ratio, self.size = ratio, size
        self.mean = torch.tensor([float(m) for m in mean]).view(3, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(3, 1, 1)

    def __call__(self, image: Any) -> torch.Tensor:
        from PIL import Image

        image = image.convert("RGB")
        if self.ratio is not None:
            image = target_pad(image, self.ratio)
        w, h = image.size
        short = min(w, h)
        # torchvision Resize(int) semantics: the short side becomes `size`, the long side
        # int(size * long / short).
        if w <= h:
            new_w, new_h = self.size, int(self.size * h / short)
        else:
            new_w, new_h = int(self.size * w / short), self.size
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), _bicubic(Image))
        left = int(round((new_w - self.size) / 2.0))
        top = int(round((new_h - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std

    def __repr__(self) -> str:
        return f"TargetPad(ratio={self.ratio}, size={self.size})"


def build_transform(
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    target_pad: float | None = 1.25,
) -> TargetPad:
    """The evaluation/training transform of CLIP4Cir and SPRC: ``TargetPad(target_pad, size)``
    with the given normalisation (``target_pad=None``: no padding)."""
    return TargetPad(ratio=target_pad, size=size, mean=mean, std=std)
