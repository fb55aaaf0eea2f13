"""Training checkpoints: written atomically and durably, read without running code.

A checkpoint is read with ``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler:
tensors, numbers, strings and plain containers only, so a file from someone else cannot run code
when it is loaded. Everything qure stores that is not a tensor goes in as JSON (the history and
the config) or as tensors (the mined bands); :func:`load_checkpoint` gives back exactly what
:func:`save_checkpoint` was given, so ``resume=True`` continues bit for bit.

Checkpoints written before this format (no ``"format"`` entry, the bands as NumPy arrays) still
load: NumPy arrays and scalars are plain data, and the restricted unpickler is allowed to rebuild
them and nothing else.

Writing goes to a temporary file in the same folder, which is flushed to disk (``fsync``) and
then renamed over the checkpoint: a process killed at any point, even with SIGKILL, leaves the
previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FORMAT", "VERSION", "load_checkpoint", "load_model_state", "save_checkpoint"]

FORMAT = "qure-checkpoint"
VERSION = 2
_TRAINING_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "history", "negatives")


def _plain(value: Any) -> Any:
    """JSON fallback for NumPy and torch scalars (their exact value, as a Python number)."""
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint's JSON")


def _encode(state: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(state)
    out["format"], out["version"] = FORMAT, VERSION
    for key in ("history", "config"):
        if key in state:
            out[key] = json.dumps(state[key], default=_plain, allow_nan=True)
    negatives = state.get("negatives")
    if negatives is not None:
        out["negatives"] = {
            name: None
            if array is None
            else torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
            for name, array in negatives.items()
        }
    return out


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Writes a training checkpoint atomically and durably.

    ``state`` holds state dicts (``model``, ``optimizer``, ...), ``epoch``, ``history`` (a list
    of JSON-able dicts), ``config`` (a JSON-able dict) and ``negatives`` (None or a dict of int
    arrays, entries may be None). The file is written next to ``path``, flushed to disk and
    renamed over it; then the folder entry is flushed too.
    """
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        torch.save(_encode(state), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # no directory handles here (e.g. Windows): the rename is what matters
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def _numpy_globals() -> list[Any]:
    """What the restricted unpickler needs to rebuild NumPy arrays and scalars: data only (no
    object dtype, so nothing but plain values comes out of an array), under the names NumPy 1
    and NumPy 2 pickle them with."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [type(np.dtype(t)) for t in np.typecodes["All"] if t not in "OMm"]
    found: list[Any] = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]
    for name in ("_reconstruct", "scalar"):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            found.append((getattr(multiarray, name), f"{module}.{name}"))
    return found


def _torch_load(path: Path, map_location: Any) -> Any:
    """``torch.load`` with ``weights_only=True``; every failure a ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
            # A foreign pickle's protocol is not worth a warning: it is refused or read safely.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next(
            (
                line.strip()
                for line in str(exc).splitlines()
                if "GLOBAL" in line or "Unsupported" in line
            ),
            "",
        )
        raise ValueError(
            f"refused to load {path}: it holds something other than tensors and plain data "
            "(Python objects, whose unpickling could run code, or corrupt bytes); qure reads "
            f"only its own checkpoints and plain state dicts ({detail or 'not a pickle'})"
        ) from None
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch.load on damaged bytes fails in many ways; all mean this
        raise ValueError(
            f"cannot load {path}: it is truncated, corrupt or not a torch checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _decode(state: dict[str, Any], path: Path) -> dict[str, Any]:
    def malformed(what: str) -> ValueError:
        return ValueError(f"{path} is a malformed qure checkpoint: {what}")

    out = dict(state)
    for key, kind in (("history", list), ("config", dict)):
        if key in state:
            value = state[key]
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise malformed(f"{key} is not JSON ({exc})") from None
            if not isinstance(value, kind):
                raise malformed(f"{key} is a {type(value).__name__}, not a {kind.__name__}")
            out[key] = value
    if not all(isinstance(r, dict) for r in out["history"]):
        raise malformed("history holds records that are not dicts")
    if isinstance(state["epoch"], bool) or not isinstance(state["epoch"], int):
        raise malformed(f"epoch is a {type(state['epoch']).__name__}")
    negatives = state["negatives"]
    if negatives is not None:
        if not isinstance(negatives, Mapping):
            raise malformed("negatives is not a dict of arrays")
        decoded = {}
        for name, array in negatives.items():
            if array is None:
                decoded[name] = None
                continue
            if isinstance(array, torch.Tensor):
                array = array.cpu().numpy()
            if not isinstance(array, np.ndarray) or array.dtype.kind not in "iu":
                raise malformed(f"negatives[{name!r}] is not an integer array")
            decoded[name] = array.astype(np.int64)
        out["negatives"] = decoded
    for key in ("model", "optimizer", "scheduler", "scaler"):
        if not isinstance(state[key], Mapping):
            raise malformed(f"{key} is not a state dict")
    return out


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """A training checkpoint written by :func:`save_checkpoint` (or by an older qure), decoded:
    ``history`` a list of dicts, ``config`` a dict, ``negatives`` None or a dict of int64 arrays.

    Raises ``FileNotFoundError`` when ``path`` does not exist and ``ValueError`` naming it when
    it is not a qure training checkpoint (a file that would need code to load is refused before
    any of it runs).
    """
    path = Path(path)
    state = _torch_load(path, map_location)
    if not isinstance(state, dict):
        kind = type(state).__name__
        raise ValueError(f"{path} is not a qure training checkpoint (it holds a {kind})")
    fmt = state.get("format")
    if fmt is not None and (fmt != FORMAT or state.get("version") != VERSION):
        raise ValueError(
            f"{path} is a {fmt!r} file of version {state.get('version')!r}, not a "
            f"{FORMAT!r} of version {VERSION} (written by a newer qure?)"
        )
    missing = [k for k in _TRAINING_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is not a qure training checkpoint (missing {missing})")
    return _decode(state, path)


def load_model_state(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The model weights in ``path``: a qure checkpoint's ``model`` entry, a ``{"model": state
    dict, ...}`` file, or a plain state dict. Anything else is a ``ValueError`` naming the file;
    a file that would need code to load is refused before any of it runs."""
    path = Path(path)
    state = _torch_load(path, map_location)
    if isinstance(state, Mapping) and "model" in state and _is_state_dict(state["model"]):
        return dict(state["model"])
    if _is_state_dict(state):
        return dict(state)
    raise ValueError(
        f"{path} is neither a qure checkpoint nor a state dict (a mapping of parameter names to "
        "tensors)"
    )
