"""Input conversion shared by qure's public functions.

Everything the native core receives is a C-contiguous NumPy array of the exact dtype it expects.
NumPy float32 input and CPU float32 torch tensors pass through without a copy; other float
dtypes (float64, and float16/bfloat16 where not a gallery) and CUDA tensors are converted.
Galleries in float16 (NumPy or torch) or bfloat16 (torch) reach the core as their raw 16-bit
patterns (:func:`as_gallery`), a view of the caller's buffer, never a float32 copy.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = [
    "as_float32_matrix",
    "as_gallery",
    "as_index_vector",
    "as_ids",
    "as_ragged_indices",
    "is_torch_tensor",
    "like_input",
]


def is_torch_tensor(x: Any) -> bool:
    """True when ``x`` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def like_input(result: np.ndarray, source: Any) -> Any:
    """``result`` as a torch tensor on ``source``'s device when ``source`` is a torch tensor,
    else unchanged (torch in, torch out)."""
    if not is_torch_tensor(source):
        return result
    torch = sys.modules["torch"]
    return torch.from_numpy(result).to(source.device)


def _tensor_to_numpy(x: Any, float32: bool) -> np.ndarray:
    torch = sys.modules["torch"]
    x = x.detach()
    if x.device.type != "cpu":
        x = x.to("cpu")
    if float32 and x.dtype != torch.float32 and (x.is_floating_point() or x.is_complex()):
        if x.is_complex():
            raise TypeError(f"expected real numbers, got a torch tensor of dtype {x.dtype}")
        x = x.to(torch.float32)
    elif x.dtype == torch.bfloat16:
        x = x.to(torch.float32)
    return x.numpy()


def _real_dtype_check(array: np.ndarray, name: str) -> None:
    kind = array.dtype.kind
    if kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")


def as_float32_matrix(x: Any, name: str, ndim: int = 2) -> np.ndarray:
    """``x`` as a C-contiguous float32 array with ``ndim`` dimensions (no copy when possible)."""
    array = _tensor_to_numpy(x, float32=True) if is_torch_tensor(x) else np.asarray(x)
    _real_dtype_check(array, name)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array, dtype=np.float32)


def as_gallery(x: Any, name: str, ndim: int) -> tuple[np.ndarray, str]:
    """``(array, format)``: ``x`` as a C-contiguous array for the core, with ``ndim`` dimensions.

    float16 (NumPy or torch) and bfloat16 (torch) stay half precision: the array is a uint16
    view of their bits (copied only when not C-contiguous, or off the CPU) and ``format`` is
    ``"float16"`` or ``"bfloat16"``. Anything else is :func:`as_float32_matrix` (``"float32"``).
    """
    if is_torch_tensor(x):
        torch = sys.modules["torch"]
        if x.dtype in (torch.float16, torch.bfloat16):
            fmt = "float16" if x.dtype == torch.float16 else "bfloat16"
            t = x.detach()
            if t.device.type != "cpu":
                t = t.to("cpu")
            if t.ndim != ndim:
                raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
            bits = t.contiguous().view(torch.int16).numpy().view(np.uint16)
            return bits, fmt
    elif isinstance(x, np.ndarray) and x.dtype == np.float16:
        if x.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
        return np.ascontiguousarray(x).view(np.uint16), "float16"
    return as_float32_matrix(x, name, ndim=ndim), "float32"


def as_index_vector(x: Any, name: str, length: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous int64 vector; floats and booleans are refused."""
    array = _tensor_to_numpy(x, float32=False) if is_torch_tensor(x) else np.asarray(x)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
    if array.dtype.kind not in "iu":
        if array.size == 0 and array.dtype.kind == "f":
            array = array.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values too large for int64")
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{name} has {array.shape[0]} entries, expected {length}")
    return np.ascontiguousarray(array, dtype=np.int64)


def as_ids(x: Any, name: str, length: int) -> np.ndarray:
    """Gallery ids as int64: integers pass through, anything else (names, paths) is factorised."""
    array = _tensor_to_numpy(x, float32=False) if is_torch_tensor(x) else np.asarray(x)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
    if array.shape[0] != length:
        raise ValueError(f"{name} has {array.shape[0]} entries but the gallery has {length} items")
    if array.dtype.kind in "iu":
        return as_index_vector(array, name)
    if array.dtype.kind == "f":
        raise TypeError(f"{name} must hold integers or names, got dtype {array.dtype}")
    _, inverse = np.unique(array.astype(str), return_inverse=True)
    return np.ascontiguousarray(inverse.reshape(-1), dtype=np.int64)


def as_ragged_indices(x: Any, name: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """A per-row list of integer lists as CSR ``(indptr, indices)`` (int64)."""
    indptr_attr = getattr(x, "indptr", None)
    if indptr_attr is not None and hasattr(x, "indices"):
        indptr = as_index_vector(indptr_attr, f"{name}.indptr")
        indices = as_index_vector(x.indices, f"{name}.indices")
    else:
        if isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
            raise TypeError(f"{name} must be a sequence with one list of indices per query")
        parts = []
        for i, row in enumerate(x):
            part = np.atleast_1d(np.asarray(row))
            if part.ndim != 1 or (part.size and part.dtype.kind not in "iu"):
                raise TypeError(f"{name}[{i}] must be a list of integer gallery indices")
            parts.append(part.astype(np.int64, copy=False))
        sizes = np.array([p.size for p in parts], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        indices = np.ascontiguousarray(indices, dtype=np.int64)
    if indptr.shape[0] != rows + 1:
        raise ValueError(f"{name} has {indptr.shape[0] - 1} rows but there are {rows} queries")
    return indptr, indices
