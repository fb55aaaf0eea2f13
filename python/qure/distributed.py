"""Collectives for data-parallel training and sharded mining on ``torch.distributed``, and
:func:`launch` to run ranks on one machine.

Under ``torchrun --nproc_per_node=N`` (or :func:`launch`), :func:`init_from_env` starts the
process group (NCCL on GPUs, gloo on CPU). The trainer (:mod:`qure.train`) then slices each
global batch with :func:`shard` and wraps its loss with :func:`wrap_ddp`; sharded mining
(:mod:`qure.sharded`) moves features and bands with :func:`all_gather_array`,
:func:`exchange_rows` and :func:`gather_hard_negatives`. Negatives need no communication:
:class:`~qure.NegativeSampler` is a pure function of (seed, query, epoch).

Outside a process group every helper degrades to its one-process meaning (rank 0 of 1).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ._arrays import indptr_from_sizes
from .mining import HardNegatives

__all__ = [
    "all_gather_array",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "exchange_rows",
    "free_port",
    "gather_hard_negatives",
    "init_from_env",
    "is_distributed",
    "launch",
    "local_rank",
    "raise_together",
    "rank",
    "shard",
    "world_size",
    "wrap_ddp",
]

_HEADER = 12  # ndim, dtype number, itemsize, then up to 9 dimensions


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


def all_reduce_max(values: np.ndarray) -> np.ndarray:
    """The element-wise maximum of ``values`` (a float32 array of the same shape on every rank)
    over ranks."""
    if not is_distributed():
        return values
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().numpy()


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
    # Every rank mined with the same code, so either all or none know each optional field.
    tails = local.tail_length if local.tail_length is not None else np.full(len(local), -1)
    meta = np.concatenate(
        [local.sizes[:, None], local.target_rank[:, None], local.drops, tails[:, None]], axis=1
    ).astype(np.int64)
    meta = all_gather_array(meta)
    indices = all_gather_array(local.indices.astype(np.int64))
    sizes = meta[:, 0]
    scores = target_score = removed = None
    if local.scores is not None and local.target_score is not None:
        scores = all_gather_array(local.scores.astype(np.float32))
        target_score = all_gather_array(local.target_score.astype(np.float32))
    if local.removed is not None:
        keys = sorted(local.removed)
        counts = all_gather_array(np.array([[local.removed[k] for k in keys]], dtype=np.int64))
        removed = dict(zip(keys, counts.sum(axis=0).tolist()))
    return HardNegatives(
        indptr=indptr_from_sizes(sizes),
        indices=indices,
        target_rank=np.ascontiguousarray(meta[:, 1]),
        drops=np.ascontiguousarray(meta[:, 2:4]),
        tail_length=None if local.tail_length is None else np.ascontiguousarray(meta[:, 4]),
        scores=scores,
        target_score=target_score,
        removed=removed,
    )


def exchange_rows(rows: np.ndarray, owner_sizes: Sequence[int]) -> list[np.ndarray]:
    """All-to-all: with ``off`` the running sums of ``owner_sizes``, rows ``[off[d], off[d + 1])``
    of ``rows`` (int64, 2-D, the same width on every rank) go to rank ``d``; returns what every
    rank sent to this one, by source rank (``[rows]`` outside a process group)."""
    if not is_distributed():
        return [rows]
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


# --------------------------------------------------------------------------------------------
# training


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a process group's rendezvous)."""
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

    mp.spawn(_launched, args=(fn, nprocs, free_port(), backend, args), nprocs=nprocs)
