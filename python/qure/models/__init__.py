"""CIR models. Each maps gallery images to T L2-normalised token embeddings (score = max over
tokens, BLIP-2 style) and a (reference image, text) query to one L2-normalised embedding."""

from .tiny import TinyCIRModel

__all__ = ["TinyCIRModel"]
