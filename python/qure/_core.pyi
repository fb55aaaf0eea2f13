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
    "mine_tails",
    "sample_negatives",
    "sample_negatives_k",
    "score",
    "set_num_threads",
    "simd_kernel",
    "tail_candidates",
    "target_rank",
    "topk",
]

def mine_negatives(
    scores: npt.NDArray[np.float32],
    target_idx: npt.NDArray[np.int64],
    *,
    consecutive_threshold: int,
    pairing: str,
    max_rank: int | None = None,
    positives_indptr: npt.NDArray[np.int64] | None = None,
    positives_indices: npt.NDArray[np.int64] | None = None,
    gallery_ids: npt.NDArray[np.int64] | None = None,
    strategy: str = "band",
    rank_start: int = 0,
    rank_end: int | None = None,
    margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    reference: str = "target",
    num_negatives: int | None = None,
    sampling: str = "top",
    simans_a: float = 1.0,
    simans_b: float = 0.0,
    seed: int = 0,
    first_query: int = 0,
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
    dict[str, int],
]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def mine_from_features(
    queries: npt.NDArray[np.float32],
    gallery: npt.NDArray[np.float32],
    target_idx: npt.NDArray[np.int64],
    *,
    consecutive_threshold: int,
    pairing: str,
    max_rank: int | None = None,
    positives_indptr: npt.NDArray[np.int64] | None = None,
    positives_indices: npt.NDArray[np.int64] | None = None,
    gallery_ids: npt.NDArray[np.int64] | None = None,
    block_size: int | None = None,
    strategy: str = "band",
    rank_start: int = 0,
    rank_end: int | None = None,
    margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    reference: str = "target",
    num_negatives: int | None = None,
    sampling: str = "top",
    simans_a: float = 1.0,
    simans_b: float = 0.0,
    seed: int = 0,
    first_query: int = 0,
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
    dict[str, int],
]: ...
def score(
    queries: npt.NDArray[np.float32], gallery: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]: ...
def topk(
    queries: npt.NDArray[np.float32],
    gallery: npt.NDArray[np.float32],
    k: int,
    exclude_indptr: npt.NDArray[np.int64] | None = None,
    exclude_indices: npt.NDArray[np.int64] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def target_rank(
    queries: npt.NDArray[np.float32],
    gallery: npt.NDArray[np.float32],
    target_idx: npt.NDArray[np.int64],
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
def tail_candidates(
    queries: npt.NDArray[np.float32],
    shard: npt.NDArray[np.float32],
    *,
    first_item: int,
    n_gallery: int,
    target_idx: npt.NDArray[np.int64],
    target_scores: npt.NDArray[np.float32],
    max_rank: int,
    block_size: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def mine_tails(
    above: npt.NDArray[np.int64],
    target_scores: npt.NDArray[np.float32],
    items: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    target_idx: npt.NDArray[np.int64],
    *,
    n_gallery: int,
    consecutive_threshold: int,
    pairing: str,
    max_rank: int | None = None,
    positives_indptr: npt.NDArray[np.int64] | None = None,
    positives_indices: npt.NDArray[np.int64] | None = None,
    gallery_ids: npt.NDArray[np.int64] | None = None,
    strategy: str = "band",
    rank_start: int = 0,
    rank_end: int | None = None,
    margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    reference: str = "target",
    num_negatives: int | None = None,
    sampling: str = "top",
    simans_a: float = 1.0,
    simans_b: float = 0.0,
    seed: int = 0,
    first_query: int = 0,
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
    dict[str, int],
]: ...
def sample_negatives_k(
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int64],
    seed: int,
    queries: npt.NDArray[np.int64],
    epoch: int,
    k: int,
) -> npt.NDArray[np.int64]: ...
