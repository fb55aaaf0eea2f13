"""Data-parallel training and sharded mining on ``torch.distributed`` (torchrun, DDP).

Under ``torchrun --nproc_per_node=N`` (or :func:`launch` on one machine), :func:`init_from_env`
starts the process group (NCCL on GPUs, gloo on CPU) and the trainer turns data-parallel:

- every rank walks the same globally permuted batches and takes a contiguous slice of each
  (:func:`shard`), the model is wrapped in ``DistributedDataParallel`` and the gradient equals
  the one-process gradient of the same global batch (see :class:`ShardLoss`; the contrastive
  baseline's in-batch negatives span the global batch through a differentiable all-gather);
- mining is sharded: each rank encodes its share of the queries and of the gallery, the gallery
  features are gathered, each rank mines its query shard in the Rust core and the bands are
  gathered back into one :class:`~qure.HardNegatives` that is identical to the one-process result
  (:func:`sharded_mine`; with ``max_rank`` the ranks can instead exchange per-shard top-M
  candidates, so that no rank holds the whole gallery);
- negatives need no communication: :class:`~qure.NegativeSampler` and the random fallbacks are
  pure functions of (seed, query, epoch), so every rank draws the same ones;
- only rank 0 writes the JSON-lines log and the checkpoint.

Outside a process group every helper degrades to its one-process meaning (rank 0 of 1).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ._arrays import as_float32_matrix
from .mining import HardNegatives, Pairing
from .retrieval import mine_from_features
from .torch import max_token_scores, paired_scores, reward_loss

__all__ = [
    "ShardLoss",
    "all_gather_array",
    "all_gather_with_grad",
    "all_reduce_sum",
    "barrier",
    "gather_hard_negatives",
    "init_from_env",
    "is_distributed",
    "launch",
    "local_rank",
    "raise_together",
    "rank",
    "shard",
    "sharded_mine",
    "world_size",
    "wrap_ddp",
]

_HEADER = 12  # ndim, dtype number, itemsize, then up to 9 dimensions
Strategy = Literal["auto", "gather", "candidates"]


# --------------------------------------------------------------------------------------------
# process group


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


_current_rank = rank  # for functions whose ``rank`` argument hides the function


def world_size() -> int:
    """The number of ranks (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``; 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(backend: str | None = None) -> bool:
    """Starts the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``).

    ``backend`` defaults to NCCL when CUDA is available (each rank then uses GPU ``LOCAL_RANK``)
    and gloo otherwise. Returns True when it started a group (the caller may then call
    ``torch.distributed.destroy_process_group()``); a no-op returning False when ``WORLD_SIZE``
    is absent or 1, or when a group is already running.
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def barrier() -> None:
    """Waits for every rank (nothing outside a process group)."""
    if is_distributed():
        dist.barrier()


def shard(n: int, rank: int | None = None, world: int | None = None) -> range:
    """Rank ``rank``'s contiguous share of ``range(n)``; shares of ``world`` ranks tile it in rank
    order and differ in size by at most one. Defaults: this process's rank and world size."""
    r = _current_rank() if rank is None else int(rank)
    w = world_size() if world is None else int(world)
    if n < 0 or w < 1 or not 0 <= r < w:
        raise ValueError(f"need n >= 0 and 0 <= rank < world, got n={n}, rank={r}, world={w}")
    return range(r * n // w, (r + 1) * n // w)


def _comm_device() -> torch.device:
    """Where collective buffers live: the current GPU for NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_ok(ok: bool) -> bool:
    """True on every rank when ``ok`` holds on every rank (so that all ranks fail together)."""
    if not is_distributed():
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(flag)
    return int(flag.item()) == 0


def raise_together(error: BaseException | None) -> None:
    """Raises on every rank when any rank has an ``error`` (its own, or a ``ValueError`` naming
    another rank), so that no rank is left waiting in a collective for a rank that failed."""
    if not _all_ok(error is None):
        if error is not None:
            raise error
        raise ValueError("another rank's input was rejected (see its error)")


def all_reduce_sum(value: float) -> float:
    """The sum of ``value`` over ranks (float64)."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item())


# --------------------------------------------------------------------------------------------
# gathering arrays and bands


def all_gather_array(array: Any) -> np.ndarray:
    """Every rank's ``array`` concatenated along the first axis, in rank order (on every rank).

    First dimensions may differ between ranks (sizes are gathered first, rows padded, gathered,
    trimmed); the other dimensions and the dtype must agree, else every rank raises
    ``ValueError``. Any fixed-size NumPy dtype is sent as raw bytes, so values arrive bit-exact.
    Outside a process group the array is returned as it is.
    """
    a = np.asarray(array)
    if a.ndim == 0 or a.ndim > _HEADER - 3 or a.dtype.hasobject:
        raise ValueError(f"all_gather_array needs a 1- to 9-D array, got {a.dtype} {a.shape}")
    a = np.ascontiguousarray(a)
    if not is_distributed():
        return a
    world, device = world_size(), _comm_device()
    header = np.zeros(_HEADER + 1, dtype=np.int64)
    header[:3] = (a.ndim, a.dtype.num, a.dtype.itemsize)
    header[3 : 3 + a.ndim - 1] = a.shape[1:]
    header[-1] = a.shape[0]
    local = torch.from_numpy(header).to(device)
    headers = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(headers, local)
    table = np.stack([h.cpu().numpy() for h in headers])
    if (table[:, :-1] != table[0, :-1]).any():
        raise ValueError(
            "all_gather_array: ranks disagree on dtype or trailing shape "
            f"(ndim, dtype, itemsize, dims per rank: {table[:, : 3 + a.ndim - 1].tolist()})"
        )
    sizes = table[:, -1].tolist()
    row_bytes = a.dtype.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
    total, longest = int(sum(sizes)), int(max(sizes))
    if row_bytes == 0 or longest == 0:
        return np.zeros((total, *a.shape[1:]), dtype=a.dtype)
    buffer = np.zeros((longest, row_bytes), dtype=np.uint8)
    buffer[: a.shape[0]] = a.reshape(-1).view(np.uint8).reshape(a.shape[0], row_bytes)
    sent = torch.from_numpy(buffer).to(device)
    parts = [torch.empty_like(sent) for _ in range(world)]
    dist.all_gather(parts, sent)
    rows = np.concatenate([p.cpu().numpy()[:n] for p, n in zip(parts, sizes)])
    return np.ascontiguousarray(rows).view(a.dtype).reshape(total, *a.shape[1:])


def gather_hard_negatives(local: HardNegatives) -> HardNegatives:
    """The bands of every rank's queries, concatenated in rank order, on every rank.

    When rank ``r`` mined ``shard(Q, r, world)`` of the queries, the result is the bands of all
    ``Q`` queries in their global order. Outside a process group ``local`` is returned.
    """
    if not isinstance(local, HardNegatives):
        raise TypeError(f"expected HardNegatives, got {type(local).__name__}")
    if not is_distributed():
        return local
    # Every rank mined with the same code, so either all or none know their tail lengths.
    tails = local.tail_length if local.tail_length is not None else np.full(len(local), -1)
    meta = np.concatenate(
        [local.sizes[:, None], local.target_rank[:, None], local.drops, tails[:, None]], axis=1
    ).astype(np.int64)
    meta = all_gather_array(meta)
    indices = all_gather_array(local.indices.astype(np.int64))
    sizes = meta[:, 0]
    return HardNegatives(
        indptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        indices=indices,
        target_rank=np.ascontiguousarray(meta[:, 1]),
        drops=np.ascontiguousarray(meta[:, 2:4]),
        tail_length=None if local.tail_length is None else np.ascontiguousarray(meta[:, 4]),
    )


def sharded_mine(
    queries: Any,
    gallery: Any,
    target_idx: Any,
    *,
    consecutive_threshold: int = 1,
    pairing: Pairing = "consecutive",
    max_rank: int | None = None,
    positives: Any = None,
    gallery_ids: Any = None,
    block_size: int | None = None,
    strategy: Strategy = "auto",
) -> HardNegatives:
    """:func:`qure.mine_from_features` with queries and gallery split over the ranks.

    Each rank passes its query shard ``queries`` and its gallery shard ``gallery`` (queries and
    gallery each split into contiguous blocks in rank order, e.g. ``shard(Q)`` and ``shard(N)``;
    any sizes, empty ones included), the *global* gallery index of each of its queries'
    targets, and, when used, its queries' ``positives`` (global gallery indices) and the *full*
    ``(N,)`` ``gallery_ids``.
    Every rank gets the same :class:`~qure.HardNegatives`, equal (``==``, bit for bit) to
    ``mine_from_features(all_queries, full_gallery, all_targets, ...)`` in one process.

    ``strategy``:

    - ``"gather"`` (the default without ``max_rank``): the gallery features are gathered (every
      rank then holds all ``N``), each rank scores and mines its own queries against the whole
      gallery in the Rust core, and the bands are gathered. Scoring and mining work divide by
      the number of ranks; gallery memory does not.
    - ``"candidates"`` (the default with ``max_rank=M`` on several ranks; one process just calls
      ``mine_from_features``): only the (small) query features are
      gathered. Each rank scores every query against its gallery shard, keeps per query the
      number of its items ranked above the target and its ``M`` best items ranked below it, and
      sends them to the query's rank, which merges them into the global first ``M`` items after
      the target (exactly those the ``max_rank`` rule looks at) and mines them. Work and gallery
      memory both divide by the number of ranks; traffic is ``Q * (2M + 1)`` numbers.

    Bad input on any rank raises ``ValueError`` on all of them rather than leaving the others
    waiting.
    """
    if strategy not in ("auto", "gather", "candidates"):
        raise ValueError(f"strategy must be 'auto', 'gather' or 'candidates', got {strategy!r}")
    if strategy == "candidates" and max_rank is None:
        raise ValueError("strategy='candidates' needs max_rank")
    local_gallery: np.ndarray | None = None
    error: Exception | None = None
    try:
        ndim = gallery.ndim if hasattr(gallery, "ndim") else np.ndim(gallery)
        if ndim not in (2, 3):
            raise ValueError(f"gallery must be (N, d) or (N, T, d), got {ndim}-D")
        local_gallery = as_float32_matrix(gallery, "gallery", ndim=ndim)
    except (ValueError, TypeError) as exc:
        error = exc
    raise_together(error)
    assert local_gallery is not None
    kwargs: dict[str, Any] = {
        "consecutive_threshold": consecutive_threshold,
        "pairing": pairing,
        "max_rank": max_rank,
        "positives": positives,
        "gallery_ids": gallery_ids,
        "block_size": block_size,
    }
    candidates = strategy == "candidates" or (
        strategy == "auto" and max_rank is not None and is_distributed()
    )
    if candidates:
        return gather_hard_negatives(_mine_candidates(queries, local_gallery, target_idx, **kwargs))
    full = all_gather_array(local_gallery)
    mined: HardNegatives | None = None
    try:
        mined = mine_from_features(queries, full, target_idx, **kwargs)
    except (ValueError, TypeError) as exc:
        error = exc
    raise_together(error)
    assert mined is not None
    return gather_hard_negatives(mined)


def _rank_keys(scores: np.ndarray, index: np.ndarray) -> np.ndarray:
    """uint64 keys whose ascending order is qure's ranking (score descending, then index
    ascending; ``-0.0 == +0.0``), as the core's ``rank_key``."""
    bits = (scores + np.float32(0.0)).astype(np.float32, copy=False).view(np.uint32)
    ordered = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    return ((~ordered).astype(np.uint64) << np.uint64(32)) | index.astype(np.uint64)


_NO_KEY = np.iinfo(np.uint64).max


def _best_below(s: np.ndarray, below: np.ndarray, index: np.ndarray, keep: int) -> np.ndarray:
    """Per row, the columns of the ``keep`` best-ranked ``below`` items (unordered; padded with
    other columns when fewer). A float partition picks them; rows where equal scores straddle
    the cut (or with fewer than ``keep`` such items) are redone with exact ranking keys."""
    rows, n = s.shape
    if keep >= n:
        return np.broadcast_to(np.arange(n), (rows, n))
    masked = np.where(below, s, np.float32(-np.inf))
    best = np.argpartition(masked, n - keep, axis=1)[:, n - keep :]
    cut = np.take_along_axis(masked, best, 1).min(axis=1)
    unsure = np.nonzero(((masked >= cut[:, None]).sum(axis=1) > keep) | np.isneginf(cut))[0]
    if len(unsure):
        keys = np.where(below[unsure], _rank_keys(s[unsure], index[None, :]), _NO_KEY)
        best[unsure] = np.argpartition(keys, keep - 1, axis=1)[:, :keep]
    return best


def _exchange(rows: np.ndarray, owner_sizes: Sequence[int]) -> list[np.ndarray]:
    """All-to-all: rows ``[off[d], off[d + 1])`` of ``rows`` (int64, 2-D) go to rank ``d``;
    returns what every rank sent to this one, by source rank."""
    world, me, device = world_size(), rank(), _comm_device()
    offsets = np.concatenate([[0], np.cumsum(owner_sizes)]).astype(np.int64)
    longest = max(int(max(owner_sizes)), 1)
    chunks = []
    for d in range(world):
        chunk = np.zeros((longest, rows.shape[1]), dtype=np.int64)
        part = rows[offsets[d] : offsets[d + 1]]
        chunk[: len(part)] = part
        chunks.append(torch.from_numpy(chunk).to(device))
    received = []
    for src in range(world):  # scatter from each rank in turn (gloo has no all-to-all of lists)
        out = torch.empty((longest, rows.shape[1]), dtype=torch.int64, device=device)
        dist.scatter(out, chunks if src == me else None, src=src)
        received.append(out.cpu().numpy()[: owner_sizes[me]])
    return received


def _mine_candidates(
    queries: Any,
    gallery: np.ndarray,
    target_idx: Any,
    *,
    consecutive_threshold: int,
    pairing: Pairing,
    max_rank: int,
    positives: Any,
    gallery_ids: Any,
    block_size: int | None,
) -> HardNegatives:
    """This rank's queries' bands under ``max_rank``, from per-shard top-M candidates."""
    from ._arrays import as_ids, as_index_vector, as_ragged_indices
    from .mining import _PAIRINGS, _check_count, mine_negatives
    from .retrieval import score

    me = rank()
    error: Exception | None = None
    q_local = t_local = pos_indptr = pos_indices = None
    m = threshold = 0
    try:
        q_local = as_float32_matrix(queries, "queries", ndim=2)
        t_local = as_index_vector(target_idx, "target_idx", length=q_local.shape[0])
        m = _check_count(max_rank, "max_rank", 1)
        threshold = _check_count(consecutive_threshold, "consecutive_threshold", 0)
        if pairing not in _PAIRINGS:
            raise ValueError(f"pairing must be one of {_PAIRINGS}, got {pairing!r}")
        if positives is not None:
            pos_indptr, pos_indices = as_ragged_indices(positives, "positives", q_local.shape[0])
        if block_size is not None:
            _check_count(block_size, "block_size", 1)
    except (ValueError, TypeError) as exc:
        error = exc
    raise_together(error)
    assert q_local is not None and t_local is not None
    tokens = 1 if gallery.ndim == 2 else gallery.shape[1]
    shape = [q_local.shape[0], gallery.shape[0], q_local.shape[1], gallery.shape[-1], tokens]
    sizes = all_gather_array(np.array([shape], dtype=np.int64))
    q_sizes, g_sizes = sizes[:, 0].tolist(), sizes[:, 1].tolist()
    n, g0, n_here = int(sum(g_sizes)), int(sum(g_sizes[:me])), gallery.shape[0]
    try:
        if len(np.unique(sizes[:, 2:4])) != 1 or len(np.unique(sizes[:, 4])) != 1:
            raise ValueError(
                "queries and gallery shards disagree on the feature size or the tokens per image "
                f"(d of queries, d of gallery, T per rank: {sizes[:, 2:].tolist()})"
            )
        if n == 0:
            raise ValueError("the gallery is empty")
        if len(t_local) and (t_local.min() < 0 or t_local.max() >= n):
            raise ValueError(f"target_idx holds indices outside the gallery of {n} items")
        if pos_indices is not None and len(pos_indices):
            if pos_indices.min() < 0 or pos_indices.max() >= n:
                raise ValueError(f"positives hold indices outside the gallery of {n} items")
        ids = None if gallery_ids is None else as_ids(gallery_ids, "gallery_ids", n)
    except (ValueError, TypeError) as exc:
        error = exc
    raise_together(error)

    # Every query against this shard. First the target scores, from the target's shard.
    q_all, t_all = all_gather_array(q_local), all_gather_array(t_local)
    n_queries = q_all.shape[0]
    target_score = np.full(n_queries, -np.inf, dtype=np.float32)
    mine_here = np.nonzero((t_all >= g0) & (t_all < g0 + n_here))[0]
    for b in range(0, len(mine_here), 256):
        rows = mine_here[b : b + 256]
        columns, which = np.unique(t_all[rows] - g0, return_inverse=True)
        block = score(q_all[rows], gallery[columns])
        target_score[rows] = block[np.arange(len(rows)), which.reshape(-1)]
    if is_distributed():
        t = torch.from_numpy(target_score).to(_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        target_score = t.cpu().numpy()
    # Then per query: how many shard items rank above the target, and the shard's best M below.
    keep = min(m, n_here)
    payload = np.zeros((n_queries, 1 + 2 * m), dtype=np.int64)
    payload[:, 1 : 1 + m] = -1
    if n_here:
        index = np.arange(g0, g0 + n_here, dtype=np.int64)
        step = block_size or max(1, (1 << 22) // n_here)
        for b in range(0, n_queries, step):
            s = score(q_all[b : b + step], gallery)
            st, tt = target_score[b : b + step, None], t_all[b : b + step, None]
            above = (s > st) | ((s == st) & (index < tt))
            payload[b : b + step, 0] = above.sum(axis=1)
            below = ~(above | (index == tt))
            best = _best_below(s, below, index, keep)
            keys = np.where(
                np.take_along_axis(below, best, 1),
                _rank_keys(np.take_along_axis(s, best, 1), best + g0),
                _NO_KEY,
            )
            best = np.take_along_axis(best, np.argsort(keys, axis=1), 1)
            valid = np.take_along_axis(below, best, 1)
            payload[b : b + step, 1 : 1 + keep] = np.where(valid, best + g0, -1)
            bits = np.take_along_axis(s, best, 1).view(np.uint32).astype(np.int64)
            payload[b : b + step, 1 + m : 1 + m + keep] = bits
    received = _exchange(payload, q_sizes) if is_distributed() else [payload]

    # Merge: this rank's queries' global first M items after the target.
    q_here = q_local.shape[0]
    rank_of_target = np.sum([r[:, 0] for r in received], axis=0).astype(np.int64)
    cand = np.concatenate([r[:, 1 : 1 + m] for r in received], axis=1)
    cand_scores = np.concatenate([r[:, 1 + m :] for r in received], axis=1)
    cand_scores = cand_scores.astype(np.uint32).view(np.float32)
    keys = np.where(cand >= 0, _rank_keys(cand_scores, np.maximum(cand, 0)), _NO_KEY)
    order = np.argsort(keys, axis=1, kind="stable")[:, :m]
    tail = np.take_along_axis(cand, order, 1)  # (q_here, <=M), -1 past the tail's end
    tail_scores = np.take_along_axis(cand_scores, order, 1)
    lengths = (tail >= 0).sum(axis=1)
    own_scores = target_score[int(sum(q_sizes[:me])) :][:q_here]

    # Mine the merged tails: a row [items above the target..., target, tail...] per query whose
    # tail is the global one, so the core's rule sees what it would see on the whole gallery.
    def row_positives(i: int) -> np.ndarray:
        if pos_indptr is None or pos_indices is None:
            return np.zeros(0, dtype=np.int64)
        return pos_indices[pos_indptr[i] : pos_indptr[i + 1]]

    options: dict[str, Any] = {
        "consecutive_threshold": threshold,
        "pairing": pairing,
        "max_rank": m,
    }
    bands: list[np.ndarray] = []
    drops = np.full((q_here, 2), -1, dtype=np.int64)
    if q_here == 0:
        pass
    elif ids is None:  # one call: rows padded on the left with items above the target
        width = int(lengths.max(initial=0)) + 1
        target_col = width - 1 - lengths
        cols = np.arange(width)[None, :]
        position = cols - target_col[:, None] - 1
        in_tail = position >= 0
        safe = np.clip(position, 0, max(m - 1, 0))
        matrix = np.repeat(own_scores[:, None], width, axis=1)
        matrix = np.where(in_tail, np.take_along_axis(tail_scores, safe, 1), matrix)
        columns = np.where(in_tail, np.take_along_axis(tail, safe, 1), -1)
        syn_pos = None
        if pos_indptr is not None:
            syn_pos = []
            for i in range(q_here):
                hit = np.isin(tail[i, : lengths[i]], row_positives(i))
                syn_pos.append((np.nonzero(hit)[0] + target_col[i] + 1).tolist())
        mined = mine_negatives(
            np.ascontiguousarray(matrix, dtype=np.float32), target_col, positives=syn_pos, **options
        )
        drops[:] = mined.drops
        bands = [columns[i][mined[i]] for i in range(q_here)]
    else:  # gallery ids: one row at a time, with the ids of that row's items
        for i in range(q_here):
            items = tail[i, : lengths[i]]
            wanted = row_positives(i)
            outside = np.setdiff1d(wanted, np.append(items, t_local[i]))  # their ids count too
            extra = len(outside)
            row = np.concatenate(
                [np.full(extra + 1, own_scores[i], np.float32), tail_scores[i, : lengths[i]]]
            )
            members = np.concatenate([outside, [t_local[i]], items]).astype(np.int64)
            syn_pos = [np.nonzero(np.isin(members, wanted))[0].tolist()]
            mined = mine_negatives(
                row[None, :], [extra], positives=syn_pos, gallery_ids=ids[members], **options
            )
            drops[i] = mined.drops[0]
            bands.append(members[mined[0]])
    sizes_out = np.array([len(b) for b in bands], dtype=np.int64)
    return HardNegatives(
        indptr=np.concatenate([[0], np.cumsum(sizes_out)]).astype(np.int64),
        indices=np.concatenate(bands).astype(np.int64) if bands else np.zeros(0, np.int64),
        target_rank=rank_of_target,
        drops=drops,
        tail_length=lengths.astype(np.int64),
    )


# --------------------------------------------------------------------------------------------
# training


class _GatherRows(torch.autograd.Function):
    """All-gather along the first axis; the backward pass sums every rank's gradient for this
    rank's rows (an all-reduce of the gathered gradient, then this rank's block)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(x: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Rows ``x[:counts[rank]]`` of every rank, concatenated in rank order, differentiable.

    ``counts`` (the same list on every rank) says how many rows each rank contributes; ``x`` may
    hold more (they are ignored). The backward pass gives each rank the sum over all ranks of
    the gradient for its rows, so a loss summed over ranks differentiates as in one process.
    """
    if not is_distributed():
        # The tensor itself when whole: an extra slice node would reorder gradient accumulation
        # and change one-process results at the rounding level.
        return x if x.shape[0] == counts[0] else x[: counts[0]]
    longest = max(max(counts), 1)
    if x.shape[0] >= longest:
        padded = x[:longest]
    else:
        padded = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    gathered = _GatherRows.apply(padded)
    return torch.cat([gathered[r * longest : r * longest + n] for r, n in enumerate(counts)])


class ShardLoss(nn.Module):
    """One rank's share of a global batch's loss (wrapped in ``DistributedDataParallel`` under
    torch.distributed; a single process uses it as it is, with the whole batch and weight 1).

    ``forward(reference, text, targets, negatives, weight, counts, offset)`` encodes this rank's
    slice of the batch through the model (so DDP sees the forward and synchronises gradients)
    and returns ``weight`` times the mean loss over the slice. With ``b`` the global batch size,
    a slice of ``n`` items and ``W`` ranks the trainer passes ``weight = n * W / b``: DDP
    averages gradients over ranks, so the step uses ``(1 / W) * sum_r (n_r W / b) mean_r =
    (1 / b) * sum_i grad l_i``, the gradient of the one-process mean over the global batch, for
    any (even uneven or empty) slices. A rank with an empty slice runs one item with weight 0.

    Reward methods: ``-log sigmoid((s_pos - s_neg) / tau)`` per query. Contrastive: in-batch
    InfoNCE over the *global* batch: target embeddings are gathered from all ranks with gradient
    (``counts`` rows per rank), each query scores against all ``b`` targets and its positive is
    at ``offset + i``, so two ranks compute the same loss and gradient as one process.
    """

    def __init__(self, model: nn.Module, reward: bool) -> None:
        super().__init__()
        self.model = model
        self.reward = reward

    def forward(
        self,
        reference: torch.Tensor,
        text: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor | None,
        weight: float,
        counts: Sequence[int],
        offset: int,
    ) -> torch.Tensor:
        model: Any = self.model  # a CIR model: encode_queries, encode_images, temperature
        queries = model.encode_queries(reference, text)
        target_tokens = model.encode_images(targets)
        if self.reward:
            if negatives is None:
                raise ValueError("reward methods need negatives")
            negative_tokens = model.encode_images(negatives)  # before scoring: a fixed graph order
            loss = reward_loss(
                paired_scores(queries, target_tokens),
                paired_scores(queries, negative_tokens),
                model.temperature,
            )
        else:
            everyone = all_gather_with_grad(target_tokens, counts)
            scores = max_token_scores(queries, everyone)
            labels = torch.arange(queries.shape[0], device=scores.device) + offset
            labels = labels.clamp(max=scores.shape[1] - 1)  # a weight-0 stand-in item
            loss = F.cross_entropy(scores / model.temperature.reshape(()), labels)
        return loss * weight


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` (``device_ids`` on CUDA, none on CPU).

    ``static_graph=True``: every step uses the same parameters, and parameters the loss never
    uses (frozen heads, ...) are handled once instead of failing or being searched every step.
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, static_graph=True)


# --------------------------------------------------------------------------------------------
# launching on one machine


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launched(
    index: int,
    fn: Callable[..., Any],
    nprocs: int,
    port: int,
    backend: str,
    args: tuple[Any, ...],
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(index),
        LOCAL_RANK=str(index),
        WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs),
    )
    started = init_from_env(backend)
    try:
        fn(*args)
    finally:
        if started:
            dist.destroy_process_group()


def launch(
    fn: Callable[..., Any], nprocs: int, args: tuple[Any, ...] = (), backend: str = "gloo"
) -> None:
    """Runs ``fn(*args)`` in ``nprocs`` new processes on this machine, as ranks of one process
    group (what ``torchrun --nproc_per_node=nprocs`` does for a script; gloo by default).

    ``fn`` must be importable (a module-level function). Raises if a process fails.
    """
    if nprocs < 1:
        raise ValueError(f"nprocs must be at least 1, got {nprocs}")
    import torch.multiprocessing as mp

    mp.spawn(_launched, args=(fn, nprocs, _free_port(), backend, args), nprocs=nprocs)
