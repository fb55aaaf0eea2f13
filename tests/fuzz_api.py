"""Fuzz driver for qure's public Python API: hypothesis draws the calls, a child process runs them.

Every call runs in a worker process, so an abort, a segfault or a hang is counted against the
input that caused it, and the worker is restarted. Its address space is capped at ``--memory``
GiB (6 by default: torch alone maps about 2.5, and every size the campaign means to be
unallocatable asks for 16 or more, so it fails there on any machine, overcommit or not).
An outcome is one of:

- ``ok``: the call returned, and its result passed the checks that exist for it (top-k, ranks
  and mining from features against the score matrix, mining against ``tests/reference.py``,
  draws inside their bands, results of several Python threads against one thread);
- ``error``: a documented exception with a message: ValueError, TypeError or MemoryError, and
  for loading files only ValueError (FileNotFoundError for a missing path);
- a failure: ``crash`` (the worker died: abort, signal), ``hang`` (no answer within
  ``--timeout`` seconds), ``unexpected`` (any other exception, a Rust panic included),
  ``wrong`` (a check failed) or ``code-ran`` (loading a file ran code from it).

Hypothesis shrinks a failure to a minimal call, which the report names. Inputs are small
descriptions (shape, dtype, layout, container, value style, seed, special values) that the
worker turns into arrays, so a call costs little to send and replays exactly.

    python tests/fuzz_api.py --seconds 120 --report fuzz-report.json

exits 1 if any call failed. ``--seconds`` bounds the generation; a call in flight finishes.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXPECTED = ("ValueError", "TypeError", "MemoryError")
"""The exceptions qure documents for bad input; loading files raises only ValueError (or
FileNotFoundError for a missing path)."""
CHUNK_SHARE = {"threads": 0.25, "huge": 0.25}
"""Targets whose calls are slow and repetitive (pools of up to 1024 threads, sizes of up to 16
TiB) get this share of each round's calls."""
EXPECTED_BY_TARGET = {
    "load_bands": ("ValueError", "FileNotFoundError"),
    "load_checkpoint": ("ValueError", "FileNotFoundError"),
}
FAILURES = ("crash", "hang", "unexpected", "wrong", "code-ran")
GiB = 1 << 30


# --------------------------------------------------------------------------------------------
# input descriptions (built in the worker)


@dataclass(frozen=True)
class Arr:
    """An array argument: what the worker builds and hands to qure."""

    shape: tuple[int, ...]
    dtype: str = "float32"  # numpy dtype name, or "bfloat16" (torch), "object", "str"
    style: str = "uniform"  # uniform quantized wide tiny huge constant index ones
    seed: int = 0
    specials: tuple[tuple[int, float], ...] = ()  # (position modulo size, value)
    layout: str = "c"  # c f strided transposed broadcast readonly
    container: str = "numpy"  # numpy list torch torch-strided torch-grad
    low: int = 0  # index style: values in [low, high)
    high: int = 1

    def size(self) -> int:
        return math.prod(self.shape)

    def kind(self) -> tuple[Any, ...]:
        n = self.size()
        size = "empty" if n == 0 else "huge" if n > 10**7 else "large" if n > 10**5 else "small"
        specials = tuple(sorted({_special_name(v) for _, v in self.specials}))
        ndim = len(self.shape)
        return (self.container, self.dtype, self.layout, ndim, size, self.style, specials)


def _special_name(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf"
    if v == 0:
        return "-0.0" if math.copysign(1, v) < 0 else "0.0"
    if abs(v) < 1.2e-38:
        return "subnormal"
    if abs(v) > 1e30:
        return "huge"
    return "other"


@dataclass(frozen=True)
class Ragged:
    """Per-query index lists (positives, exclusions)."""

    form: str  # none lists csr-object array1d bad-type wrong-rows nested-floats
    seed: int = 0
    max_len: int = 3
    high: int = 1


@dataclass(frozen=True)
class Ids:
    form: str  # none ints names floats wrong-length
    seed: int = 0
    distinct: int = 1


@dataclass(frozen=True)
class Call:
    target: str
    params: dict[str, Any] = field(default_factory=dict)

    def kind(self) -> tuple[Any, ...]:
        parts: list[Any] = [self.target]
        for name in sorted(self.params):
            value = self.params[name]
            if isinstance(value, Arr):
                parts.append((name, value.kind()))
            elif isinstance(value, (Ragged, Ids)):
                parts.append((name, value.form))
            elif name in ("content", "mode", "which", "pairing"):
                parts.append((name, value if isinstance(value, str) else type(value).__name__))
            elif value is None:
                parts.append((name, None))
            else:
                parts.append((name, type(value).__name__))
        return tuple(parts)


# --------------------------------------------------------------------------------------------
# the worker: builds inputs, runs the call, checks the result


def _values(a: Arr, n: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(a.seed)
    if a.style == "index":
        return rng.integers(a.low, max(a.high, a.low + 1), size=n)
    if a.style == "quantized":
        v = rng.integers(-8, 9, size=n) / 4.0
    elif a.style == "wide":
        v = rng.standard_normal((n, 4)).sum(axis=1)
    elif a.style == "tiny":
        v = rng.uniform(-1, 1, size=n) * 1e-40
    elif a.style == "huge":
        v = rng.uniform(-1, 1, size=n) * 1e19
    elif a.style == "constant":
        v = np.full(n, 0.5)
    elif a.style == "ones":
        v = np.ones(n)
    else:
        v = rng.uniform(-1, 1, size=n)
    for position, value in a.specials:
        if n:
            v[position % n] = value
    return v


def build(a: Arr) -> Any:
    import numpy as np

    shape = a.shape
    if a.layout == "broadcast":  # a zero-stride view: any logical size, one row of memory
        row = build(Arr(shape=(1, *shape[1:]), dtype=a.dtype, style=a.style, seed=a.seed))
        return np.broadcast_to(row, shape) if len(shape) else row
    if a.layout == "transposed" and len(shape) >= 2:
        base = build(
            Arr(shape=shape[::-1], dtype=a.dtype, style=a.style, seed=a.seed, specials=a.specials)
        )
        array = base.T
    elif a.layout == "strided" and len(shape) >= 1:
        base = build(
            Arr(
                shape=(2 * shape[0], *shape[1:]),
                dtype=a.dtype,
                style=a.style,
                seed=a.seed,
                specials=a.specials,
            )
        )
        array = base[::2]
    else:
        n = a.size()
        raw = _values(a, n)
        with np.errstate(all="ignore"):
            if a.dtype == "object":
                array = np.array([float(x) for x in raw] or [], dtype=object).reshape(shape)
            elif a.dtype == "str":
                array = raw.astype(str).reshape(shape)
            elif a.dtype == "bfloat16":
                array = raw.astype(np.float32).reshape(shape)
            else:
                dtype = np.dtype(a.dtype)
                if dtype.kind in "iub" and a.style != "index":
                    raw = np.nan_to_num(raw * 8, nan=0, posinf=0, neginf=0)
                array = raw.astype(dtype).reshape(shape)
        if a.layout == "f":
            array = np.asfortranarray(array)
        if a.layout == "readonly":
            array.setflags(write=False)
    return _contain(array, a)


def _contain(array: Any, a: Arr) -> Any:
    if a.container == "list" and array.size <= 10_000:
        return array.tolist()
    if not a.container.startswith("torch") or array.dtype.kind in "OUV":
        return array
    import numpy as np
    import torch

    tensor = torch.from_numpy(np.array(array, copy=True))
    if a.dtype == "bfloat16":
        tensor = tensor.to(torch.bfloat16)
    if a.container == "torch-strided" and tensor.ndim >= 1:
        tensor = torch.cat([tensor, tensor]).__getitem__(slice(None, None, 2))
    if a.container == "torch-grad" and tensor.is_floating_point():
        tensor.requires_grad_(True)
    return tensor


class _Csr:
    """An object with ``indptr`` and ``indices``, as SciPy's CSR matrices have."""

    def __init__(self, indptr: Any, indices: Any) -> None:
        self.indptr, self.indices = indptr, indices


def build_ragged(r: Ragged | None, rows: int) -> Any:
    import numpy as np

    if r is None or r.form == "none":
        return None
    rng = np.random.default_rng(r.seed)
    lists = [
        rng.integers(
            -1 if r.form == "out-of-range" else 0,
            r.high + (r.form == "out-of-range"),
            size=rng.integers(0, r.max_len + 1),
        ).tolist()
        for _ in range(rows)
    ]
    if r.form == "wrong-rows":
        return lists + [[0]]
    if r.form == "bad-type":
        return 7
    if r.form == "nested-floats":
        return [[0.5] for _ in range(rows)]
    if r.form == "array1d":
        return np.array([x[0] if x else 0 for x in lists], dtype=np.int64)
    if r.form == "csr-object":
        indptr = np.cumsum([0] + [len(x) for x in lists])
        flat = np.array([v for x in lists for v in x], dtype=np.int64)
        return _Csr(indptr, flat)
    return lists


def build_ids(ids: Ids | None, n: int) -> Any:
    import numpy as np

    if ids is None or ids.form == "none":
        return None
    rng = np.random.default_rng(ids.seed)
    values = rng.integers(0, max(ids.distinct, 1), size=n)
    if ids.form == "names":
        return [f"img{v}" for v in values]
    if ids.form == "floats":
        return values.astype(np.float64)
    if ids.form == "wrong-length":
        return values[: max(n - 1, 0)]
    return values


def _reference():
    sys.path.insert(0, str(HERE))
    import reference

    return reference


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise _Wrong(message)


class _Wrong(Exception):
    """A result that fails its check."""


def _plain(x: Any) -> Any:
    """What qure converts an input to (for checks): float32 C-contiguous NumPy."""
    from qure._arrays import as_float32_matrix

    ndim = x.ndim if hasattr(x, "ndim") else len(__import__("numpy").shape(x))
    return as_float32_matrix(x, "x", ndim=ndim)


def _out(result: Any, queries: Any) -> Any:
    """A retrieval result as NumPy, after checking its type: torch queries give torch tensors on
    their device, anything else gives NumPy."""
    import numpy as np

    if hasattr(queries, "device") and type(queries).__module__.startswith("torch"):
        _check(hasattr(result, "device") and result.device == queries.device, "torch in, out")
        return result.cpu().numpy()
    _check(isinstance(result, np.ndarray), "NumPy in, NumPy out")
    return result


def _gallery3(g: Any) -> Any:
    g = _plain(g)
    return g.reshape(g.shape[0], 1, g.shape[1]) if g.ndim == 2 else g


def run_mine(p: dict[str, Any]) -> str:
    import numpy as np

    import qure

    scores = build(p["scores"])
    targets = build(p["targets"])
    rows = p["scores"].shape[0] if p["scores"].shape else 0
    cols = p["scores"].shape[1] if len(p["scores"].shape) > 1 else 0
    kwargs = {
        "consecutive_threshold": p["threshold"],
        "pairing": p["pairing"],
        "max_rank": p["max_rank"],
        "positives": build_ragged(p["positives"], rows),
        "gallery_ids": build_ids(p["ids"], cols),
    }
    selection = dict(p.get("selection") or {})
    got = qure.mine_negatives(scores, targets, **kwargs, **selection)
    _check(len(got) == rows, "one band per query")
    _check(bool((np.diff(got.indptr) >= 0).all()), "indptr goes backwards")
    _check(got.scores is not None and got.scores.shape == got.indices.shape, "scores align")
    if selection:  # another miner: its invariants (the strategy tests hold the exact rule)
        k = selection.get("num_negatives")
        if k is not None and rows:
            _check(int(got.sizes.max()) <= k, "more negatives than num_negatives")
        _check(bool(np.isfinite(got.scores).all()), "non-finite scores kept")
        if selection.get("max_score") is not None and got.scores.size:
            _check(float(got.scores.max()) <= np.float32(selection["max_score"]), "max_score")
        return f"{len(got)} queries, {len(got.indices)} negatives"
    positives = kwargs["positives"]
    plain_lists = positives is None or isinstance(positives, (list, _Csr))
    if rows * cols <= 4000 and kwargs["gallery_ids"] is None and plain_lists:
        plain = _plain(scores)
        ref = _reference()
        if isinstance(positives, _Csr):
            positives = [
                positives.indices[a:b].tolist()
                for a, b in zip(positives.indptr[:-1], positives.indptr[1:])
            ]
        bands, ranks, drops = ref.reference_mine(
            plain,
            np.asarray(targets.cpu() if hasattr(targets, "cpu") else targets),
            consecutive_threshold=min(int(p["threshold"]), 2**63 - 1),
            pairing=p["pairing"],
            max_rank=None if p["max_rank"] is None else min(int(p["max_rank"]), 2**63 - 1),
            positives=positives,
        )
        for i in range(rows):
            _check(got[i].tolist() == list(bands[i]), f"band {i} differs from the reference")
            _check(int(got.target_rank[i]) == ranks[i], f"rank {i} differs")
            _check(tuple(got.drops[i]) == tuple(drops[i]), f"drops {i} differ")
    return f"{len(got)} queries"


def _score_matrix(queries: Any, gallery: Any) -> Any:
    import qure

    return qure.score(_plain(queries), _gallery3(gallery))


def run_score(p: dict[str, Any]) -> str:
    import numpy as np

    import qure

    queries, gallery = build(p["queries"]), build(p["gallery"])
    got = _out(qure.score(queries, gallery), queries)
    q, g = _plain(queries), _gallery3(gallery)
    _check(got.shape == (q.shape[0], g.shape[0]) and got.dtype == np.float32, "shape/dtype")
    if got.size and got.size * g.shape[1] * g.shape[2] <= 2_000_000:
        with np.errstate(all="ignore"):
            want = np.einsum("qd,ntd->qnt", q.astype(np.float64), g.astype(np.float64)).max(-1)
            scale = np.abs(q).max() * np.abs(g).max() * q.shape[1] + 1e-30
        finite = np.isfinite(want) & (np.abs(want) < 1e37)
        _check(
            bool((np.abs(got[finite] - want[finite]) <= 1e-5 * scale + 1e-37).all()),
            "scores differ from float64 by more than rounding",
        )
    return str(got.shape)


def run_topk(p: dict[str, Any]) -> str:
    import numpy as np

    import qure

    queries, gallery = build(p["queries"]), build(p["gallery"])
    rows = p["queries"].shape[0] if p["queries"].shape else 0
    exclude = build_ragged(p["exclude"], rows)
    values, indices = (
        _out(x, queries) for x in qure.topk(queries, gallery, p["k"], exclude=exclude)
    )
    full = _score_matrix(queries, gallery)
    k = int(p["k"])
    for i in range(full.shape[0]):
        row = full[i]
        if exclude is None:
            excluded = set()
        elif isinstance(exclude, np.ndarray):
            excluded = {int(exclude[i])}
        elif isinstance(exclude, _Csr):
            excluded = set(exclude.indices[exclude.indptr[i] : exclude.indptr[i + 1]].tolist())
        else:
            excluded = set(exclude[i])
        keep = [j for j in range(len(row)) if j not in excluded and row[j] > -np.inf]
        keep.sort(key=lambda j: (-float(row[j]), j))
        want = (keep[:k] + [-1] * k)[:k]
        _check(indices[i].tolist() == want, f"top-k of query {i} differs from sorting scores")
        got_values = [float(v) for v in values[i]]
        _check(
            got_values == [float(row[j]) if j >= 0 else -math.inf for j in want],
            f"top-k values of query {i}",
        )
    return str(values.shape)


def run_target_rank(p: dict[str, Any]) -> str:
    import numpy as np

    import qure

    queries, gallery, targets = build(p["queries"]), build(p["gallery"]), build(p["targets"])
    ranks = _out(qure.target_rank(queries, gallery, targets), queries)
    full = _score_matrix(queries, gallery)
    t = np.asarray(targets)
    for i in range(full.shape[0]):
        row, ti = full[i], int(t[i])
        before = np.arange(len(row)) < ti
        want = int(((row > row[ti]) | ((row == row[ti]) & before)).sum())
        _check(int(ranks[i]) == want, f"rank of query {i}")
    return str(ranks.shape)


def run_mine_features(p: dict[str, Any]) -> str:
    import qure

    queries, gallery, targets = build(p["queries"]), build(p["gallery"]), build(p["targets"])
    rows = p["queries"].shape[0] if p["queries"].shape else 0
    n = p["gallery"].shape[0] if p["gallery"].shape else 0
    kwargs = {
        "consecutive_threshold": p["threshold"],
        "pairing": p["pairing"],
        "max_rank": p["max_rank"],
        "positives": build_ragged(p["positives"], rows),
        "gallery_ids": build_ids(p["ids"], n),
    }
    block = p["block"]
    if isinstance(block, int) and block < 1:  # only mining from features takes a block size
        qure.mine_from_features(queries, gallery, targets, block_size=block, **kwargs)
        raise _Wrong(f"block_size={block} was accepted")
    try:
        got = qure.mine_from_features(queries, gallery, targets, block_size=block, **kwargs)
    except (ValueError, MemoryError) as exc:
        got = exc
    try:
        want = qure.mine_negatives(_score_matrix(queries, gallery), targets, **kwargs)
    except (ValueError, MemoryError) as exc:
        want = exc
    if isinstance(got, Exception) or isinstance(want, Exception):
        _check(type(got) is type(want), f"mine_from_features {got!r} vs mining scores {want!r}")
        raise got if isinstance(got, Exception) else want  # type: ignore[misc]
    _check(got == want, "mine_from_features differs from mining the score matrix")
    return f"{len(got)} queries"


def run_sampler(p: dict[str, Any]) -> str:
    import numpy as np

    import qure
    from qure import HardNegatives, NegativeSampler

    rng = np.random.default_rng(p["seed_bands"])
    q = p["queries_in_bands"]
    sizes = rng.integers(0, p["max_band"] + 1, size=q)
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    indices = rng.integers(0, 1000, size=int(indptr[-1])).astype(np.int64)
    if p["damage"] and q:
        indptr[int(rng.integers(0, q + 1))] += int(rng.integers(-3, 4))
    negatives = HardNegatives(
        indptr=indptr,
        indices=indices,
        target_rank=np.zeros(q, np.int64),
        drops=np.zeros((q, 2), np.int64),
    )
    query_idx = build(p["query_idx"])
    drawn = NegativeSampler(negatives, seed=p["seed"]).sample(query_idx, p["epoch"])
    flat = np.atleast_1d(drawn)
    asked = np.atleast_1d(np.asarray(query_idx))
    for qi, g in zip(asked.tolist(), flat.tolist()):
        band = negatives[int(qi)]
        _check((g == -1) if band.size == 0 else bool((band == g).any()), "draw outside band")
    del qure
    return f"{flat.size} draws"


def _bands_file(folder: Path, content: str, seed: int) -> Path:
    import numpy as np

    import qure

    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((5, 30)).astype(np.float32)
    good = folder / "good.npz"
    qure.mine_negatives(scores, np.arange(5)).save(good)
    data = good.read_bytes()
    path = folder / "bands.npz"
    if content == "valid":
        return good
    if content == "truncate":
        path.write_bytes(data[: int(rng.integers(0, len(data)))])
    elif content == "flip":
        damaged = bytearray(data)
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
            damaged[at] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
    elif content == "random":
        path.write_bytes(rng.bytes(int(rng.integers(0, 2000))))
    elif content == "npy":
        np.save(path.with_suffix(".npy"), np.arange(4))
        return path.with_suffix(".npy")
    elif content == "pickle-object":
        evil = np.empty(1, dtype=object)
        evil[0] = _Marker(folder / "marker")
        np.savez(
            path,
            indptr=np.array([0]),
            indices=evil,
            target_rank=np.zeros(0, np.int64),
            drops=np.zeros((0, 2), np.int64),
        )
    elif content == "forged-header":
        header = io.BytesIO()
        shape = (int(rng.integers(1, 2**40)),)
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<i8", "fortran_order": False, "shape": shape}
        )
        with zipfile.ZipFile(path, "w") as archive:
            for name in ("indptr", "target_rank", "drops"):
                buffer = io.BytesIO()
                np.save(buffer, np.zeros((1, 2) if name == "drops" else 2, np.int64))
                archive.writestr(f"{name}.npy", buffer.getvalue())
            archive.writestr("indices.npy", header.getvalue() + rng.bytes(16))
    elif content == "directory":
        return folder
    elif content == "missing":
        return folder / "missing.npz"
    return path


class _Marker:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def run_load_bands(p: dict[str, Any]) -> str:
    from qure import HardNegatives

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = _bands_file(folder, p["content"], p["seed"])
        try:
            loaded = HardNegatives.load(path)
        finally:
            if (folder / "marker").exists():
                raise _CodeRan("loading bands ran code from the file")
        _check(loaded.indptr[-1] == loaded.indices.shape[0], "inconsistent bands loaded")
        return f"{len(loaded)} queries"


class _CodeRan(Exception):
    """A load ran code from the file it read."""


def _checkpoint_file(folder: Path, content: str, seed: int) -> Path:
    import numpy as np
    import torch

    from qure.checkpoint import save_checkpoint

    rng = np.random.default_rng(seed)
    path = folder / "last.pt"
    state = {
        "model": {"w": torch.from_numpy(rng.standard_normal(8).astype(np.float32))},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "scheduler": {"last_epoch": 1},
        "scaler": {},
        "epoch": 1,
        "history": [{"epoch": 0, "loss": float(rng.standard_normal())}],
        "negatives": {
            "indptr": np.array([0, 1]),
            "indices": np.array([3]),
            "target_rank": np.array([0]),
            "drops": np.array([[0, 2]]),
            "tail_length": None,
        },
        "config": {"method": "qure"},
    }
    save_checkpoint(state, path)
    data = path.read_bytes()
    marker = _Marker(folder / "marker")
    if content == "truncate":
        path.write_bytes(data[: int(rng.integers(0, len(data)))])
    elif content == "flip":
        damaged = bytearray(data)
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
            damaged[at] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
    elif content == "random":
        path.write_bytes(rng.bytes(int(rng.integers(0, 3000))))
    elif content == "evil-zip":
        torch.save({"model": marker, "epoch": 0}, path)
    elif content == "evil-raw":
        path.write_bytes(pickle.dumps(marker))
    elif content == "evil-nested":
        torch.save({**state, "history": [marker]}, path)
    elif content == "state-dict":
        torch.save(state["model"], path)
    elif content == "list":
        torch.save([1, 2, 3], path)
    return path


def run_load_checkpoint(p: dict[str, Any]) -> str:
    from qure.checkpoint import load_checkpoint, load_model_state

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = _checkpoint_file(folder, p["content"], p["seed"])
        load = load_checkpoint if p["which"] == "training" else load_model_state
        try:
            state = load(path)
        finally:
            if (folder / "marker").exists():
                raise _CodeRan("loading a checkpoint ran code from the file")
        return f"{len(state)} entries"


def run_threads(p: dict[str, Any]) -> str:
    """Several Python threads call qure at once while the pool size changes under them."""
    import numpy as np

    import qure

    for n in p["counts"]:
        try:
            qure.set_num_threads(n)
        except (ValueError, TypeError):
            pass
    _check(1 <= qure.get_num_threads() <= qure.MAX_THREADS, "pool size outside its bounds")
    rng = np.random.default_rng(p["seed"])
    queries = rng.standard_normal((p["rows"], 8)).astype(np.float32)
    gallery = rng.standard_normal((p["items"], 2, 8)).astype(np.float32)
    targets = rng.integers(0, p["items"], size=p["rows"])
    want_scores = qure.score(queries, gallery)
    want_bands = qure.mine_from_features(queries, gallery, targets)
    results: list[Any] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            if i % 3 == 0:
                results.append(("score", qure.score(queries, gallery)))
            elif i % 3 == 1:
                results.append(("bands", qure.mine_from_features(queries, gallery, targets)))
            else:
                qure.set_num_threads(1 + i % 4)
                results.append(("bands", qure.mine_negatives(want_scores, targets)))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(p["python_threads"])]
    started = []
    try:
        for t in threads:
            t.start()
            started.append(t)
    except RuntimeError:  # the worker's address-space cap, not qure: run fewer threads
        pass
    finally:
        for t in started:
            t.join()
        qure.set_num_threads(2)  # do not leave a big pool behind for later calls
    if errors:
        raise errors[0]
    for what, value in results:
        same = np.array_equal(value, want_scores) if what == "score" else value == want_bands
        _check(bool(same), f"{what} from a concurrent thread differs")
    return f"{len(results)} concurrent calls"


def run_huge(p: dict[str, Any]) -> str:
    """Sizes that cannot be allocated: MemoryError, never an abort."""
    import numpy as np

    import qure

    mode = p["mode"]
    if mode == "score":
        ones = np.ones((p["n"], 1), np.float32)
        qure.score(ones, ones)
    elif mode == "topk":
        n = p["n"]
        qure.topk(np.ones((4096, 1), np.float32), np.ones((n, 1), np.float32), k=n)
    elif mode == "broadcast":
        n = p["n"]
        targets = np.broadcast_to(np.int64(0), (n,))
        qure.mine_negatives(np.broadcast_to(np.float32(1), (n, n)), targets)
    elif mode == "mine-features":  # the target ranks first: bands of up to 65,534 items
        q = np.linspace(1, 2, p["n"], dtype=np.float32).reshape(-1, 1)
        g = np.linspace(-1, 1, 1 << 16, dtype=np.float32).reshape(-1, 1)
        targets = np.full(p["n"], (1 << 16) - 1, np.int64)
        qure.mine_from_features(q, g, targets, max_rank=p["max_rank"])
    elif mode == "threads":
        try:
            qure.set_num_threads(p["n"])
        finally:
            qure.set_num_threads(2)
    return mode


def run_self_test(p: dict[str, Any]) -> str:
    """Misbehaves on purpose, to show that the driver counts what it must count."""
    if p["mode"] == "abort":
        os.abort()
    if p["mode"] == "hang":
        time.sleep(3600)
    if p["mode"] == "panic":  # an unexpected exception type
        raise SystemError("stands in for a Rust panic")
    if p["mode"] == "memory":  # the worker's address space and resident memory
        status = Path("/proc/self/status").read_text().splitlines()
        return " ".join(line.split()[1] for line in status if line.startswith(("VmSize", "VmRSS")))
    return "fine"


RUNNERS = {
    "self_test": run_self_test,
    "mine_negatives": run_mine,
    "score": run_score,
    "topk": run_topk,
    "target_rank": run_target_rank,
    "mine_from_features": run_mine_features,
    "sampler": run_sampler,
    "load_bands": run_load_bands,
    "load_checkpoint": run_load_checkpoint,
    "threads": run_threads,
    "huge": run_huge,
}


def _send(stream: Any, payload: Any) -> None:
    data = pickle.dumps(payload)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _read_exact(stream: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def worker_main() -> None:
    import warnings

    warnings.simplefilter("ignore")
    proto = os.fdopen(os.dup(1), "wb")  # the protocol's channel...
    os.dup2(2, 1)  # ...and anything printed goes to stderr
    inbox = sys.stdin.buffer
    _send(proto, ("ready", ""))
    while True:
        try:
            (size,) = struct.unpack("<Q", _read_exact(inbox, 8))
        except EOFError:
            return
        call: Call = pickle.loads(_read_exact(inbox, size))
        try:
            note = RUNNERS[call.target](call.params)
            reply = ("ok", note)
        except _Wrong as exc:
            reply = ("wrong", str(exc))
        except _CodeRan as exc:
            reply = ("code-ran", str(exc))
        except BaseException as exc:  # noqa: BLE001 (a Rust panic is a BaseException)
            name = type(exc).__name__
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if name in EXPECTED_BY_TARGET.get(call.target, EXPECTED) and str(exc):
                reply = ("error", f"{name}: {str(exc)[:200]}")
            else:
                lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
                detail = "".join(lines[-3:])
                reply = ("unexpected", f"{name}: {exc!s:.300}\n{detail[-1500:]}")
        _send(proto, reply)


# --------------------------------------------------------------------------------------------
# the parent: a worker process, the strategies, the campaign


class Worker:
    def __init__(self, memory: int, timeout: float) -> None:
        self.memory, self.timeout = memory, timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _start(self) -> None:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (self.memory, self.memory))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        env.pop("QURE_NUM_THREADS", None)
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=limit,
            env=env,
        )
        self.starts += 1
        status = self._receive(120.0)
        if status[0] != "ready":
            raise RuntimeError(f"fuzz worker did not start: {status}")

    def _receive(self, timeout: float) -> tuple[str, str]:
        assert self.process is not None and self.process.stdout is not None
        out = self.process.stdout
        deadline = time.monotonic() + timeout
        data = b""
        need = 8
        header = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return ("hang", f"no answer within {timeout:.0f} s")
            ready, _, _ = select.select([out], [], [], left)
            if not ready:
                continue
            chunk = os.read(out.fileno(), need - len(data))
            if not chunk:
                code = self.process.wait()
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
                return ("crash", f"the worker died ({how})")
            data += chunk
            if len(data) == need:
                if header:
                    need, data, header = struct.unpack("<Q", data)[0], b"", False
                else:
                    return pickle.loads(data)

    def call(self, call: Call) -> tuple[str, str]:
        if self.process is None or self.process.poll() is not None:
            self._start()
        assert self.process is not None and self.process.stdin is not None
        try:
            _send(self.process.stdin, call)
        except BrokenPipeError:
            self.process = None
            return ("crash", "the worker was gone")
        status, detail = self._receive(self.timeout)
        if status in ("hang", "crash"):
            self.stop()
        return status, detail

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process = None


def strategies() -> dict[str, Any]:
    from hypothesis import strategies as st

    specials = st.sampled_from(
        [
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            1.2e-38,
            3e38,
            -3e38,
            1.0,
            float("nan"),
            float("inf"),
            float("-inf"),
        ]
    )
    finite_specials = st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1.2e-38, 3e38, -3e38, 1.0])
    float_dtypes = st.sampled_from(
        ["float32"] * 8
        + [
            "float64",
            "float16",
            "bfloat16",
            "int32",
            "int64",
            "uint8",
            "bool",
            "complex64",
            "object",
            "str",
        ]
    )
    layouts = st.sampled_from(["c"] * 5 + ["f", "strided", "transposed", "broadcast", "readonly"])
    containers = st.sampled_from(["numpy"] * 6 + ["list", "torch", "torch-strided", "torch-grad"])
    styles = st.sampled_from(
        ["uniform", "quantized", "quantized", "wide", "tiny", "huge", "constant"]
    )
    seeds = st.integers(0, 2**32 - 1)

    # Every call is well-formed (valid shapes, dtypes, ranges and options, finite values, so
    # that the result is checked) or wild (any of the above broken), about half and half.
    well_formed = st.integers(0, 9).map(lambda x: x < 5)
    valid_dtypes = st.sampled_from(["float32"] * 6 + ["float64", "float16", "bfloat16"])

    def floats(shape: Any, special: Any = specials, valid: bool = False) -> Any:
        return st.builds(
            Arr,
            shape=shape,
            dtype=valid_dtypes if valid else float_dtypes,
            style=styles,
            seed=seeds,
            specials=st.lists(
                st.tuples(st.integers(0, 10**6), finite_specials if valid else special),
                max_size=3,
            ).map(tuple),
            layout=layouts,
            container=containers,
        )

    index_dtypes = st.sampled_from(["int64"] * 6 + ["int32", "uint64", "uint8", "float64", "bool"])

    def indices(length: Any, high: int, valid: bool = False) -> Any:
        in_range = st.just((0, max(high, 1)))
        bounds = (
            in_range
            if valid
            else st.one_of(
                in_range,
                st.tuples(st.integers(-3, 0), st.integers(high, high + 3)),
                st.just((2**62, 2**62 + 1)),
            )
        )
        return st.builds(
            lambda n, b, dt, s, lay, c: Arr(
                shape=(n,),
                dtype=dt,
                style="index",
                seed=s,
                layout=lay,
                container=c,
                low=b[0],
                high=b[1],
            ),
            length,
            bounds,
            st.sampled_from(["int64", "int64", "int32"]) if valid else index_dtypes,
            seeds,
            st.sampled_from(["c", "c", "strided", "readonly"]),
            st.sampled_from(["numpy"] * 4 + ["list", "torch"]),
        )

    small = st.integers(0, 12)
    gallery_n = st.one_of(st.integers(0, 40), st.integers(40, 600))

    def counts(valid: bool) -> Any:
        if valid:
            return st.one_of(st.integers(0, 6), st.integers(0, 60))
        return st.one_of(
            st.integers(0, 6),
            st.just(2**64 + 5),
            st.just(-1),
            st.sampled_from([1.0, "1", None, True]),
        )

    def max_ranks(valid: bool) -> Any:
        if valid:
            return st.one_of(st.none(), st.integers(1, 100), st.just(2**70))
        return st.one_of(st.none(), st.integers(-1, 8))

    def pairings(valid: bool) -> Any:
        if valid:
            return st.sampled_from(["consecutive", "anchored"])
        return st.sampled_from(["consecutive", "anchored", "bad", 3])

    def ragged(high: int, valid: bool = False, one_per_row: bool = False) -> Any:
        good = ["none"] * 3 + ["lists", "lists", "csr-object"] + ["array1d"] * one_per_row
        bad = ["bad-type", "wrong-rows", "nested-floats", "out-of-range", "lists"]
        return st.builds(
            Ragged,
            form=st.sampled_from(good if valid else good + bad),
            seed=seeds,
            max_len=st.integers(0, 4),
            high=st.just(max(high, 1)),
        )

    def ids(valid: bool) -> Any:
        forms = ["none"] * 3 + ["ints", "names"] + ([] if valid else ["floats", "wrong-length"])
        return st.builds(Ids, form=st.sampled_from(forms), seed=seeds, distinct=st.integers(1, 30))

    @st.composite
    def mine(draw: Any) -> Call:
        valid = draw(well_formed)
        q, n = draw(small), draw(gallery_n)
        if valid:
            n = max(n, 1)
        shapes = [(q, n)] if valid else [(q, n)] * 6 + [(n,), (q, n, 2), ()]
        lengths = [q] if valid else [q] * 6 + [q + 1, 0]
        return Call(
            "mine_negatives",
            {
                "scores": draw(floats(st.sampled_from(shapes), valid=valid)),
                "targets": draw(indices(st.sampled_from(lengths), n, valid)),
                "threshold": draw(counts(valid)),
                "pairing": draw(pairings(valid)),
                "max_rank": draw(max_ranks(valid)),
                "positives": draw(ragged(n, valid)),
                "ids": draw(ids(valid)),
                "selection": draw(selections(valid)),
            },
        )

    def selections(valid: bool) -> Any:
        """The other miners' keywords: sensible values when ``valid``, absurd ones too when not
        (negative or huge windows and counts, NaN and infinite margins, wrong types)."""
        numbers = st.one_of(st.none(), st.sampled_from([-1.0, 0.0, 0.05, 0.5, 3.0]))
        counts_ = st.one_of(st.none(), st.integers(1, 12), st.just(2**62))
        windows = st.one_of(
            st.none(), st.tuples(st.integers(0, 30), st.one_of(st.none(), st.integers(31, 80)))
        )
        if not valid:
            numbers = st.one_of(numbers, st.sampled_from([float("nan"), float("inf"), "5%", True]))
            counts_ = st.one_of(counts_, st.sampled_from([0, -3, 1.5, 2**70]))
            windows = st.one_of(windows, st.sampled_from([(5, 5), (-1, 3), 7, (0, None, 1)]))
        keywords = st.fixed_dictionaries(
            {},
            optional={
                "strategy": st.sampled_from(["topk", "window"] + ([] if valid else ["bm25", 1])),
                "rank_range": windows,
                "margin": numbers,
                "relative_margin": numbers,
                "max_score": numbers,
                "min_score": numbers,
                "num_negatives": counts_,
                "sampling": st.sampled_from(["top", "random", "simans"] + ([] if valid else ["x"])),
                "simans": st.sampled_from(
                    [(1.0, 0.0), (50.0, -0.5)]
                    + ([] if valid else [(0.0, 0.0), (1e30, 1e30), (float("nan"), 0)])
                ),
                "seed": st.integers(0, 2**64 - 1) if valid else st.integers(-5, 2**65),
                "reference": st.sampled_from(
                    ["target", "lowest_positive"] + ([] if valid else ["mean"])
                ),
            },
        )
        return st.one_of(st.just({}), st.just({}), keywords)

    @st.composite
    def features(draw: Any) -> tuple[Arr, Arr, int, int, bool]:
        valid = draw(well_formed)
        low = 1 if valid else 0
        q, n = draw(st.integers(0, 70)), draw(st.integers(low, 60))
        d = draw(st.integers(low, 20))
        t = draw(st.sampled_from([None, None, 1, 2, 5]))
        gshape = (n, d) if t is None else (n, t, d)
        qd = d if valid else draw(st.sampled_from([d] * 8 + [d + 1]))
        feature_specials = (
            st.one_of(finite_specials, specials) if draw(st.booleans()) else finite_specials
        )
        return (
            draw(floats(st.just((q, qd)), feature_specials, valid)),
            draw(floats(st.just(gshape), feature_specials, valid)),
            q,
            n,
            valid,
        )

    @st.composite
    def score(draw: Any) -> Call:
        queries, gallery, _, _, _ = draw(features())
        return Call("score", {"queries": queries, "gallery": gallery})

    @st.composite
    def topk(draw: Any) -> Call:
        queries, gallery, q, n, valid = draw(features())
        k = draw(
            st.integers(1, n)
            if valid
            else st.one_of(st.integers(0, n + 2), st.just(2**65), st.sampled_from([1.5, None, "3"]))
        )
        exclude = draw(ragged(n, valid, one_per_row=True))
        return Call("topk", {"queries": queries, "gallery": gallery, "k": k, "exclude": exclude})

    @st.composite
    def ranks(draw: Any) -> Call:
        queries, gallery, q, n, valid = draw(features())
        targets = draw(indices(st.just(q), n, valid))
        return Call("target_rank", {"queries": queries, "gallery": gallery, "targets": targets})

    @st.composite
    def mine_features(draw: Any) -> Call:
        queries, gallery, q, n, valid = draw(features())
        blocks = st.one_of(st.none(), st.integers(1, 80), st.just(2**64 + 1))
        return Call(
            "mine_from_features",
            {
                "queries": queries,
                "gallery": gallery,
                "targets": draw(indices(st.just(q), n, valid)),
                "threshold": draw(counts(valid)),
                "pairing": draw(pairings(valid)),
                "max_rank": draw(max_ranks(valid)),
                "positives": draw(ragged(n, valid)),
                "ids": draw(ids(valid)),
                "block": draw(blocks if valid else st.one_of(blocks, st.integers(-1, 0))),
            },
        )

    @st.composite
    def sampler(draw: Any) -> Call:
        q = draw(st.integers(0, 20))
        return Call(
            "sampler",
            {
                "seed_bands": draw(seeds),
                "queries_in_bands": q,
                "max_band": draw(st.sampled_from([0, 3, 50, 2000])),
                "damage": draw(st.booleans()),
                "query_idx": draw(indices(st.integers(0, 30), q)),
                "seed": draw(st.one_of(st.integers(0, 2**64 - 1), st.just(-1), st.just(2**64))),
                "epoch": draw(
                    st.one_of(
                        st.integers(0, 100),
                        st.integers(0, 2**64 - 1),
                        st.just(-1),
                        st.just(2**64),
                        st.just(1.5),
                    )
                ),
            },
        )

    load_bands = st.builds(
        lambda c, s: Call("load_bands", {"content": c, "seed": s}),
        st.sampled_from(
            [
                "valid",
                "truncate",
                "truncate",
                "flip",
                "flip",
                "random",
                "npy",
                "pickle-object",
                "forged-header",
                "directory",
                "missing",
            ]
        ),
        seeds,
    )
    load_checkpoint = st.builds(
        lambda c, s, w: Call("load_checkpoint", {"content": c, "seed": s, "which": w}),
        st.sampled_from(
            [
                "valid",
                "truncate",
                "truncate",
                "flip",
                "flip",
                "random",
                "evil-zip",
                "evil-raw",
                "evil-nested",
                "state-dict",
                "list",
            ]
        ),
        seeds,
        st.sampled_from(["training", "model"]),
    )
    threads = st.builds(
        lambda c, s, r, i, t: Call(
            "threads", {"counts": c, "seed": s, "rows": r, "items": i, "python_threads": t}
        ),
        st.lists(
            # Mostly small pools; one count in twenty is a bound case (a 1024-thread pool is
            # slow to start and stop, and says nothing new the second time).
            st.integers(0, 19).flatmap(
                lambda i: (
                    st.sampled_from([1024, 1025, 100000, 2**70]) if i == 0 else st.integers(-2, 8)
                )
            ),
            max_size=3,
        ),
        seeds,
        st.integers(0, 80),
        st.integers(1, 300),
        st.integers(2, 6),
    )
    huge = st.one_of(
        st.builds(
            lambda n: Call("huge", {"mode": "score", "n": n}),
            st.sampled_from([1 << 17, 1 << 20, 1 << 22]),
        ),
        st.builds(
            lambda n: Call("huge", {"mode": "topk", "n": n}), st.sampled_from([1 << 20, 1 << 22])
        ),
        st.builds(
            lambda n: Call("huge", {"mode": "broadcast", "n": n}),
            st.sampled_from([1 << 16, 1 << 20, 1 << 31]),
        ),
        st.builds(
            lambda n, m: Call("huge", {"mode": "mine-features", "n": n, "max_rank": m}),
            st.sampled_from([1 << 8, 1 << 10]),
            st.sampled_from([None, 50]),
        ),
        st.builds(
            lambda n: Call("huge", {"mode": "threads", "n": n}),
            st.sampled_from([1025, 100000, 2**40]),
        ),
    )
    return {
        "mine_negatives": mine(),
        "score": score(),
        "topk": topk(),
        "target_rank": ranks(),
        "mine_from_features": mine_features(),
        "sampler": sampler(),
        "load_bands": load_bands,
        "load_checkpoint": load_checkpoint,
        "threads": threads,
        "huge": huge,
    }


@dataclass
class Campaign:
    worker: Worker
    outcomes: Counter[str] = field(default_factory=Counter)
    by_target: dict[str, Counter[str]] = field(default_factory=dict)
    errors: dict[str, Counter[str]] = field(default_factory=dict)
    seconds: Counter[str] = field(default_factory=Counter)
    kinds: set[tuple[Any, ...]] = field(default_factory=set)
    failures: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0

    def run(self, call: Call) -> None:
        started = time.monotonic()
        status, detail = self.worker.call(call)
        self.seconds[call.target] += time.monotonic() - started
        self.calls += 1
        self.outcomes[status] += 1
        self.by_target.setdefault(call.target, Counter())[status] += 1
        self.kinds.add(call.kind())
        if status == "error":  # the most common messages, digits folded, per target
            message = "".join("#" if c.isdigit() else c for c in detail[:70])
            self.errors.setdefault(call.target, Counter())[message] += 1
        if status in FAILURES:
            self.failures.append({"status": status, "detail": detail, "call": repr(call)})
            raise AssertionError(f"{status}: {detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="generation budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a call may take")
    parser.add_argument("--memory", type=float, default=6.0, help="worker address space, GiB")
    parser.add_argument("--chunk", type=int, default=20, help="calls per target per round")
    parser.add_argument("--targets", default=None, help="comma-separated subset of targets")
    parser.add_argument("--report", default=None, help="write the figures as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main()
        return 0

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    chosen = strategies()
    if args.targets:
        chosen = {k: v for k, v in chosen.items() if k in args.targets.split(",")}
    campaign = Campaign(Worker(int(args.memory * GiB), args.timeout))
    started = time.monotonic()
    round_ = 0
    try:
        while time.monotonic() - started < args.seconds:
            for name, strategy in chosen.items():
                if time.monotonic() - started >= args.seconds:
                    break

                @settings(
                    max_examples=max(1, round(args.chunk * CHUNK_SHARE.get(name, 1.0))),
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.generate, Phase.shrink],
                    report_multiple_bugs=False,
                )
                @given(strategy)
                def one(call: Call) -> None:
                    campaign.run(call)

                try:
                    hypothesis_seed(args.seed * 1_000_003 + round_ * 101 + len(name))(one)()
                except Exception as exc:  # shrunk (one failure or a group); recorded already
                    print(f"FAILURE in {name}: {str(exc)[:500]}", flush=True)
            round_ += 1
    finally:
        memory = campaign.worker.call(Call("self_test", {"mode": "memory"}))[1].split()
        campaign.worker.stop()
    seconds = time.monotonic() - started
    failed = sum(campaign.outcomes[s] for s in FAILURES)
    figures = {
        "calls": campaign.calls,
        "distinct_input_kinds": len(campaign.kinds),
        "crashes": campaign.outcomes["crash"],
        "hangs": campaign.outcomes["hang"],
        "unexpected_errors": campaign.outcomes["unexpected"],
        "wrong_results": campaign.outcomes["wrong"],
        "code_ran": campaign.outcomes["code-ran"],
        "outcomes": dict(campaign.outcomes),
        "by_target": {k: dict(v) for k, v in sorted(campaign.by_target.items())},
        "seconds_in_calls": {k: round(v, 1) for k, v in sorted(campaign.seconds.items())},
        "common_errors": {k: dict(v.most_common(4)) for k, v in sorted(campaign.errors.items())},
        "worker_starts": campaign.worker.starts,
        "worker_kib_at_end": dict(zip(("address_space", "resident"), memory)),
        "rounds": round_,
        "seconds": round(seconds, 1),
        "failures": campaign.failures[:20],
    }
    text = json.dumps(figures, indent=2)
    if args.report:
        Path(args.report).write_text(text + "\n")
        for failure in campaign.failures[:5]:
            print(json.dumps(failure, indent=2))
    else:
        print(text)
    print(
        f"FUZZ python calls={campaign.calls} kinds={len(campaign.kinds)} "
        f"crashes={figures['crashes']} hangs={figures['hangs']} failures={failed} "
        f"seconds={seconds:.1f}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
