"""qure: QuRe hard-negative mining and training for composed image retrieval.

The heavy work (mining, and later scoring and top-k) runs in a parallel Rust core; this package
converts NumPy arrays and torch tensors for it and builds training and evaluation on top.
"""

from __future__ import annotations

import os
import warnings

from . import _core
from .mining import HardNegatives, mine_negatives
from .retrieval import mine_from_features, score, simd_kernel, target_rank, topk
from .sampling import NegativeSampler

__version__: str = _core.__version__

__all__ = [
    "HardNegatives",
    "NegativeSampler",
    "__version__",
    "get_num_threads",
    "mine_from_features",
    "mine_negatives",
    "score",
    "set_num_threads",
    "simd_kernel",
    "target_rank",
    "topk",
]


def set_num_threads(n: int) -> None:
    """Sets how many threads qure's parallel work uses (results never depend on it)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"the number of threads must be an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"the number of threads must be at least 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """How many threads qure's parallel work uses."""
    return _core.get_num_threads()


_env_simd = os.environ.get("QURE_SIMD")
if _env_simd is not None and _env_simd not in ("portable", "scalar", "avx2", "avx512"):
    warnings.warn(
        f"QURE_SIMD={_env_simd!r} is not one of portable, avx2, avx512; using the best kernel "
        "this CPU has",
        RuntimeWarning,
        stacklevel=2,
    )

_env_threads = os.environ.get("QURE_NUM_THREADS")
if _env_threads is not None:
    try:
        _env_value = int(_env_threads)
        if _env_value < 1:
            raise ValueError
    except ValueError:
        warnings.warn(
            f"QURE_NUM_THREADS={_env_threads!r} is not a positive integer; using all cores",
            RuntimeWarning,
            stacklevel=2,
        )
