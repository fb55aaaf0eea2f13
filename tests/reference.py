"""Plain reference implementations used by the test-suite.

``reference_mine`` is written straight from the specification of ``qure.mine_negatives``, one
query at a time, with Python's ``sorted`` and float32 scalar arithmetic. It is meant to be
obviously correct, not fast.

``released_loop`` mimics the released QuRe training code (argsort descending, diffs of the scores
after the target, argsort of the diffs, scan of consecutive pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np


def _choose_pair(drops: list, threshold: int, pairing: str) -> Optional[tuple]:
    """Tail positions (a, b) of the chosen pair of drops, or None."""
    # Steepest (most negative) first, ties by ascending position.
    order = sorted(range(len(drops)), key=lambda j: (float(drops[j]), j))
    if pairing == "consecutive":
        for k in range(len(order) - 1):
            a, b = min(order[k], order[k + 1]), max(order[k], order[k + 1])
            if b - a > threshold:
                return a, b
        return None
    if pairing == "anchored":
        if not order:
            return None
        first = order[0]
        for other in order[1:]:
            if abs(other - first) > threshold:
                return min(first, other), max(first, other)
        return None
    raise ValueError(f"unknown pairing {pairing!r}")


def reference_mine(
    scores: Any,
    target_idx: Any,
    consecutive_threshold: int = 1,
    pairing: str = "consecutive",
    max_rank: Optional[int] = None,
    positives: Optional[Sequence[Sequence[int]]] = None,
    gallery_ids: Optional[Sequence[Any]] = None,
) -> tuple:
    """Returns (bands, target_rank, drops): per query a band list, a rank and an (a, b) pair."""
    matrix = np.asarray(scores, dtype=np.float32)
    assert matrix.ndim == 2
    n_gallery = matrix.shape[1]
    bands, ranks, drops_out = [], [], []
    for i in range(matrix.shape[0]):
        values = [np.float32(v) for v in matrix[i]]
        target = int(target_idx[i])
        # a. score descending, ties by ascending index (-0.0 == 0.0 as Python floats).
        ranking = sorted(range(n_gallery), key=lambda j: (-float(values[j]), j))
        p = ranking.index(target)
        # h. + b. the tail after the target, optionally cut at max_rank.
        tail = ranking[p + 1 :]
        if max_rank is not None:
            tail = tail[:max_rank]
        with np.errstate(over="ignore"):
            drops = [values[tail[j + 1]] - values[tail[j]] for j in range(len(tail) - 1)]
        for d in drops:
            assert isinstance(d, np.float32)
        # c. + d. + f.
        pair = _choose_pair(drops, consecutive_threshold, pairing)
        if pair is None:
            band = []
            drops_out.append((-1, -1))
        else:
            a, b = pair
            band = tail[a + 1 : b + 1]  # e.
            drops_out.append((a, b))
        # g. exclusions.
        pos = [int(x) for x in positives[i]] if positives is not None else []
        band = [g for g in band if g not in pos]
        if gallery_ids is not None:
            seen = {gallery_ids[target]}
            seen.update(gallery_ids[x] for x in pos)
            kept = []
            for g in band:
                if gallery_ids[g] in seen:
                    continue
                seen.add(gallery_ids[g])
                kept.append(g)
            band = kept
        bands.append(band)
        ranks.append(p)
    return bands, ranks, drops_out


def released_loop(row: Any, target: int, threshold: int = 1) -> Optional[np.ndarray]:
    """The released QuRe code's band for one score row, or None when no pair qualifies."""
    row = np.asarray(row, dtype=np.float32)
    order = np.argsort(-row)
    position = int(np.nonzero(order == target)[0][0])
    after = order[position + 1 :]
    diffs = np.diff(row[after])
    steepest = np.argsort(diffs)
    for k in range(len(steepest) - 1):
        first, second = int(steepest[k]), int(steepest[k + 1])
        if abs(first - second) > threshold:
            start, end = min(first, second), max(first, second)
            return after[start + 1 : end + 1]
    return None


def reference_strategy(
    row: Any,
    target: int,
    *,
    strategy: str = "band",
    rank_range: Optional[tuple] = None,
    consecutive_threshold: int = 1,
    pairing: str = "consecutive",
    max_rank: Optional[int] = None,
    positives: Sequence[int] = (),
    gallery_ids: Optional[Sequence[Any]] = None,
    margin: Optional[float] = None,
    relative_margin: Optional[float] = None,
    max_score: Optional[float] = None,
    min_score: Optional[float] = None,
    reference: str = "target",
    num_negatives: Optional[int] = None,
) -> dict:
    """One query of ``qure.mine_negatives`` with a candidate set, filters and the ``"top"``
    selection, straight from the documented rule, in float32 scalar arithmetic.

    Returns ``kept`` (gallery indices, rank order), ``survivors`` (every survivor, before the
    selection), ``rank`` (the target's), ``removed`` (counts as ``HardNegatives.removed``) and
    ``reference`` (the reference score).
    """
    values = [np.float32(v) for v in np.asarray(row, dtype=np.float32)]
    n = len(values)
    ranking = sorted(range(n), key=lambda j: (-float(values[j]), j))
    p = ranking.index(target)
    start, end = rank_range if rank_range is not None else (0, None)
    if strategy == "band":
        bands, _, _ = reference_mine(
            np.asarray([values], dtype=np.float32),
            [target],
            consecutive_threshold=consecutive_threshold,
            pairing=pairing,
            max_rank=max_rank,
        )
        candidates = bands[0]
    elif strategy == "topk":
        candidates = [j for j in ranking if j != target][start:end]
    elif strategy == "window":
        tail = ranking[p + 1 :]
        if max_rank is not None:
            tail = tail[:max_rank]
        candidates = tail[start:end]
    else:
        raise ValueError(strategy)
    pos = [int(x) for x in positives]
    r = values[target]
    if reference == "lowest_positive":
        for x in pos:
            r = min(r, values[x])
    removed = dict.fromkeys(
        ("candidates", "excluded", "margin", "relative_margin", "max_score", "min_score"), 0
    )
    seen = None
    if gallery_ids is not None:
        seen = {gallery_ids[target], *(gallery_ids[x] for x in pos)}
    survivors = []
    f32 = np.float32
    for g in candidates:
        if num_negatives is not None and len(survivors) >= num_negatives:
            break
        removed["candidates"] += 1
        if seen is not None:
            if gallery_ids[g] in seen:
                removed["excluded"] += 1
                continue
            seen.add(gallery_ids[g])
        elif g in pos:
            removed["excluded"] += 1
            continue
        s = values[g]
        with np.errstate(over="ignore"):
            if margin is not None and s + f32(margin) > r:
                removed["margin"] += 1
                continue
            if relative_margin is not None and s > r - abs(r) * f32(relative_margin):
                removed["relative_margin"] += 1
                continue
        if max_score is not None and s > f32(max_score):
            removed["max_score"] += 1
            continue
        if min_score is not None and s < f32(min_score):
            removed["min_score"] += 1
            continue
        survivors.append(g)
    return {"kept": survivors, "rank": p, "removed": removed, "reference": r}
