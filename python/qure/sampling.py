"""Drawing hard negatives per query per epoch from mined bands."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._arrays import as_index_vector, check_int
from .mining import HardNegatives

__all__ = ["NegativeSampler"]


class NegativeSampler:
    """Uniform draws from each query's band, without repeats until the band is used up.

    ``sample(query_idx, epoch)`` is a pure function of ``(seed, query, epoch)``: query ``q`` walks a
    random permutation of its band (keyed by seed, query and cycle), one step per epoch, and starts
    a fresh permutation once the band is used up. It keeps no state, so every DataLoader worker
    and every distributed rank draws the same negatives. Queries with an empty band get -1.
    """

    def __init__(self, negatives: HardNegatives, seed: int = 0) -> None:
        if not isinstance(negatives, HardNegatives):
            raise TypeError(f"negatives must be a HardNegatives, got {type(negatives).__name__}")
        self.negatives = negatives
        self.seed = check_int(seed, "seed", 0, 2**64 - 1)
        self._indptr = np.ascontiguousarray(negatives.indptr, dtype=np.int64)
        self._indices = np.ascontiguousarray(negatives.indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.negatives)

    def __repr__(self) -> str:
        return f"NegativeSampler(queries={len(self)}, seed={self.seed})"

    def sample(self, query_idx: Any, epoch: int, k: int = 1) -> np.ndarray:
        """Negatives (gallery indices, int64) for the queries in ``query_idx`` at ``epoch``.

        ``k = 1``: one per query, ``(len,)`` (a scalar for a scalar ``query_idx``); -1 for an
        empty band. ``k > 1``: ``(len, k)``, ``k`` distinct items of each band (padded with -1
        when the band is smaller): each permutation of a band of ``m`` serves ``m // k``
        epochs with fresh items, so nothing repeats until fewer than ``k`` are left unused.
        """
        epoch = check_int(epoch, "epoch", 0, 2**64 - 1)
        k = check_int(k, "k", 1, 2**31 - 1)
        scalar = np.ndim(query_idx) == 0
        queries = as_index_vector(np.atleast_1d(np.asarray(query_idx)), "query_idx")
        if k > 1:
            drawn = _core.sample_negatives_k(
                self._indptr, self._indices, self.seed, queries, epoch, k
            )
        else:
            drawn = _core.sample_negatives(self._indptr, self._indices, self.seed, queries, epoch)
        return drawn[0] if scalar else drawn
