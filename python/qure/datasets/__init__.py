"""Data sets: the built-in shapes benchmark and loaders and evaluators for the benchmarks'
released files (NumPy, the standard library and qure's core; no torch).

* :mod:`qure.datasets.shapes`: the procedural shapes CIR benchmark of the demo (rendered with
  NumPy; import it from there, it is not re-exported here).
* :mod:`qure.datasets.hpfiq`: HP-FashionIQ, the human-preference judgements released with QuRe.
* :mod:`qure.datasets.fashioniq`, :mod:`~qure.datasets.cirr`, :mod:`~qure.datasets.circo`: the
  three benchmarks in their released layouts, each split as a :class:`CIRSplit` subclass (index
  arrays over a list of image files; :func:`read_images` reads pixels, with Pillow), with the
  benchmark's official metrics.

Each benchmark module is a plug-in (:class:`Benchmark`): ``load(root, split, options)``,
``evaluate(splits, encode)`` and ``write_submission(splits, encode, out)``.
:data:`BENCHMARKS` maps the names a config's ``dataset.name`` takes to them; ``qure train`` and
``qure evaluate`` (:mod:`qure.experiments`) dispatch through it.
"""

from __future__ import annotations

from . import circo, cirr, fashioniq
from .base import Benchmark, CIRSplit, Encoder, read_images
from .circo import CIRCO_SPLITS, CIRCOSplit, load_circo
from .cirr import CIRR_SPLITS, CIRRSplit, load_cirr
from .fashioniq import (
    FASHIONIQ_CATEGORIES,
    FASHIONIQ_SPLITS,
    FashionIQSplit,
    fashioniq_text,
    load_fashioniq,
)
from .hpfiq import (
    PLACEHOLDER,
    HPFIQJudgement,
    hpfiq_counts,
    hpfiq_preference_rate,
    hpfiq_set_scores,
    load_hpfiq,
)

BENCHMARKS: dict[str, Benchmark] = {"fashioniq": fashioniq, "cirr": cirr, "circo": circo}
"""The benchmark plug-ins by name (a config's ``dataset.name``)."""

__all__ = [
    "BENCHMARKS",
    "CIRCO_SPLITS",
    "CIRR_SPLITS",
    "FASHIONIQ_CATEGORIES",
    "FASHIONIQ_SPLITS",
    "PLACEHOLDER",
    "Benchmark",
    "CIRCOSplit",
    "CIRRSplit",
    "CIRSplit",
    "Encoder",
    "FashionIQSplit",
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
