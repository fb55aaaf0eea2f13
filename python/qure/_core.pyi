"""Type stubs for the native module ``qure._core`` (checked against it by tests/test_stubs.py)."""

import numpy as np
import numpy.typing as npt

__version__: str
MAX_THREADS: int
__all__ = [
    "MAX_THREADS",
    "__version__",
    "fma_peak_gflops",
    "get_num_threads",
    "mine_from_features",
    "mine_negatives",
    "sample_negatives",
    "score",
    "set_num_threads",
    "simd_kernel",
    "target_rank",
    "topk",
]

def mine_negatives(
    scores: npt.NDArray[np.float32],
    target_idx: npt.NDArray[np.int64],
    consecutive_threshold: int,
    pairing: str,
    max_rank: int | None = None,
    positives_indptr: npt.NDArray[np.int64] | None = None,
    positives_indices: npt.NDArray[np.int64] | None = None,
    gallery_ids: npt.NDArray[np.int64] | None = None,
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def mine_from_features(
    queries: npt.NDArray[np.float32],
    gallery: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    target_idx: npt.NDArray[np.int64],
    consecutive_threshold: int,
    pairing: str,
    max_rank: int | None = None,
    positives_indptr: npt.NDArray[np.int64] | None = None,
    positives_indices: npt.NDArray[np.int64] | None = None,
    gallery_ids: npt.NDArray[np.int64] | None = None,
    block_size: int | None = None,
    gallery_format: str = "float32",
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
]: ...
def score(
    queries: npt.NDArray[np.float32],
    gallery: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    gallery_format: str = "float32",
) -> npt.NDArray[np.float32]: ...
def topk(
    queries: npt.NDArray[np.float32],
    gallery: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    k: int,
    exclude_indptr: npt.NDArray[np.int64] | None = None,
    exclude_indices: npt.NDArray[np.int64] | None = None,
    gallery_format: str = "float32",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def target_rank(
    queries: npt.NDArray[np.float32],
    gallery: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    target_idx: npt.NDArray[np.int64],
    gallery_format: str = "float32",
) -> npt.NDArray[np.int64]: ...
def simd_kernel() -> str: ...
def fma_peak_gflops(iterations: int = 200_000_000) -> float: ...
def sample_negatives(
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int64],
    seed: int,
    queries: npt.NDArray[np.int64],
    epoch: int,
) -> npt.NDArray[np.int64]: ...
