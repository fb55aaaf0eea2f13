"""Loaders and evaluators for the benchmarks' released files (NumPy and the standard library only).

* :mod:`qure.datasets.hpfiq`: HP-FashionIQ, the human-preference judgements released with QuRe.
"""

from __future__ import annotations

from .hpfiq import (
    PLACEHOLDER,
    HPFIQJudgement,
    hpfiq_counts,
    hpfiq_preference_rate,
    hpfiq_set_scores,
    load_hpfiq,
)

__all__ = [
    "PLACEHOLDER",
    "HPFIQJudgement",
    "hpfiq_counts",
    "hpfiq_preference_rate",
    "hpfiq_set_scores",
    "load_hpfiq",
]
