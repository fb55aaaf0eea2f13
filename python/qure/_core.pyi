"""Type stubs for the native module ``qure._core`` (checked against it by tests/test_stubs.py)."""

import numpy as np
import numpy.typing as npt

__version__: str

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
