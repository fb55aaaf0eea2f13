"""Data sets: the built-in shapes benchmark and loaders and evaluators for the benchmarks'
released files (NumPy and the standard library only).

* :mod:`qure.datasets.shapes`: the procedural shapes CIR benchmark of the demo (rendered with
  NumPy; import it from there, it is not re-exported here).
* :mod:`qure.datasets.hpfiq`: HP-FashionIQ, the human-preference judgements released with QuRe.
* :mod:`qure.datasets.fashioniq`, :mod:`~qure.datasets.cirr`, :mod:`~qure.datasets.circo`: the
  three benchmarks in their released layouts, each split as a :class:`CIRSplit` (index arrays
  over a list of image files; :func:`read_images` reads pixels, with Pillow).
"""

from __future__ import annotations

from .base import CIRSplit, read_images
from .circo import CIRCO_SPLITS, load_circo
from .cirr import CIRR_SPLITS, load_cirr
from .fashioniq import FASHIONIQ_CATEGORIES, FASHIONIQ_SPLITS, fashioniq_text, load_fashioniq
from .hpfiq import (
    PLACEHOLDER,
    HPFIQJudgement,
    hpfiq_counts,
    hpfiq_preference_rate,
    hpfiq_set_scores,
    load_hpfiq,
)

__all__ = [
    "CIRCO_SPLITS",
    "CIRR_SPLITS",
    "FASHIONIQ_CATEGORIES",
    "FASHIONIQ_SPLITS",
    "PLACEHOLDER",
    "CIRSplit",
    "HPFIQJudgement",
    "fashioniq_text",
    "hpfiq_counts",
    "hpfiq_preference_rate",
    "hpfiq_set_scores",
    "load_circo",
    "load_cirr",
    "load_fashioniq",
    "load_hpfiq",
    "read_images",
]
