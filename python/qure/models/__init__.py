"""CIR models. Each maps gallery images to T L2-normalised token embeddings (score = max over
tokens, BLIP-2 style) and a (reference image, text) query to one L2-normalised embedding.

- :class:`TinyCIRModel`: a small CNN model for the built-in shapes benchmark (uint8 images);
- :class:`Blip2QuRe`: BLIP-2 as QuRe trains it (``transformers.Blip2ForImageTextRetrieval``);
- :class:`ClipCombiner`: CLIP with a CLIP4Cir combiner (``transformers.CLIPModel``);
- :mod:`~qure.models.hf`: what those two share (:class:`~qure.models.hf.HFCIRModel`, the
  tokenizer and input helpers);
- :func:`build_model` / :func:`save_model` / :func:`load_model`: models from JSON specs;
- :class:`CIRModel`: what the trainer, its loss and the experiments ask of any model.

``transformers`` (and Pillow, for ``preprocess``) are imported only when a real backbone is
built or used.
"""

from .blip2 import Blip2QuRe
from .clip import ClipCombiner
from .preprocess import TargetPad, build_transform, target_pad
from .protocol import CIRModel
from .registry import build_model, load_model, save_model
from .tiny import TinyCIRModel

__all__ = [
    "Blip2QuRe",
    "CIRModel",
    "ClipCombiner",
    "TargetPad",
    "TinyCIRModel",
    "build_model",
    "build_transform",
    "load_model",
    "save_model",
    "target_pad",
]
