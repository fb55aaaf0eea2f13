"""The one input conversion and validation layer of qure's public functions.

Every public function checks its arguments here, so the same mistake gets the same exception and
message everywhere: ``TypeError`` for the wrong kind of value, ``ValueError`` for a value out of
range or of the wrong shape, each naming the argument.

Everything the native core receives is a C-contiguous NumPy array of the exact dtype it expects.
NumPy float32 input and CPU float32 torch tensors pass through without a copy; other float
dtypes (float64, and float16/bfloat16 where not a gallery) and CUDA tensors are converted.
Galleries in float16 (NumPy or torch) or bfloat16 (torch) reach the core as their raw 16-bit
patterns (:func:`as_gallery`), a view of the caller's buffer, never a float32 copy.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "COUNT_MAX",
    "GALLERY_FORMATS",
    "as_float32_matrix",
    "as_gallery",
    "as_ids",
    "as_index_vector",
    "as_int_array",
    "as_ragged_indices",
    "as_real_array",
    "check_choice",
    "check_int",
    "csr_from_rows",
    "gallery_from_bits",
    "indptr_from_sizes",
    "is_torch_tensor",
    "like_input",
    "to_numpy",
]

COUNT_MAX = 2**63 - 1
"""Counts above this (thresholds, windows, block sizes) mean "more than any gallery holds"; the
native core takes 64-bit sizes."""


# --------------------------------------------------------------------------------------------
# scalars


def check_int(
    value: Any,
    name: str,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    clamp: bool = False,
) -> int:
    """``value`` as a Python int (``bool`` and floats refused with ``TypeError``), within
    ``[minimum, maximum]`` (``ValueError`` outside). With ``clamp``, values above ``COUNT_MAX``
    become ``COUNT_MAX`` instead (the same meaning: more than any gallery holds)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    if clamp:
        number = min(number, COUNT_MAX)
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {number}")
    return number


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices`` (strings), else ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# arrays


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


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a NumPy array; torch tensors are detached and moved to the CPU first (bfloat16,
    which NumPy lacks, becomes float32)."""
    return _tensor_to_numpy(x, float32=False) if is_torch_tensor(x) else np.asarray(x)


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


def gallery_from_bits(bits: np.ndarray, fmt: str) -> Any:
    """The inverse of :func:`as_gallery`: ``bits`` (as it returned them) as a typed gallery, a view.

    ``"float16"`` gives a NumPy float16 array, ``"bfloat16"`` a CPU torch bfloat16 tensor (NumPy
    has no bfloat16), ``"float32"`` the array itself.
    """
    if fmt == "float32":
        return bits
    if fmt == "float16":
        return bits.view(np.float16)
    if fmt == "bfloat16":
        torch = sys.modules.get("torch")
        if torch is None:
            import torch
        return torch.from_numpy(np.ascontiguousarray(bits).view(np.int16)).view(torch.bfloat16)
    raise ValueError(f"unknown gallery format {fmt!r}")


GALLERY_FORMATS = ("float32", "float16", "bfloat16")
"""The gallery formats of :func:`as_gallery`, in the order of their codes."""


def _check_ndim(array: np.ndarray, name: str, ndim: int) -> None:
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(array.shape)}")


def as_int_array(x: Any, name: str, ndim: int = 1) -> np.ndarray:
    """``x`` as a C-contiguous int64 array with ``ndim`` dimensions; floats and booleans are
    refused (an empty float or object array, e.g. ``np.asarray([])``, is taken as empty)."""
    array = to_numpy(x)
    _check_ndim(array, name, ndim)
    if array.dtype.kind not in "iu":
        if array.size == 0 and array.dtype.kind in "fO":
            return np.zeros(array.shape, dtype=np.int64)
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values too large for int64")
    return np.ascontiguousarray(array, dtype=np.int64)


def as_index_vector(x: Any, name: str, length: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous int64 vector (of ``length`` entries when given)."""
    array = as_int_array(x, name, 1)
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{name} has {array.shape[0]} entries, expected {length}")
    return array


def as_real_array(x: Any, name: str, ndim: int, *, nonnegative: bool = False) -> np.ndarray:
    """``x`` as a finite float64 array with ``ndim`` dimensions (and ``>= 0`` if asked); the
    error names the first offending row."""
    array = to_numpy(x)
    _check_ndim(array, name, ndim)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ValueError(f"{name} holds NaN or infinite values (first in row {row})")
    if nonnegative and (array < 0).any():
        row = int(np.argwhere(array < 0)[0][0])
        raise ValueError(f"{name} must be >= 0, found a negative value in row {row}")
    return array


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


def indptr_from_sizes(sizes: Any) -> np.ndarray:
    """CSR row offsets (int64, ``len(sizes) + 1``) of rows with ``sizes`` entries."""
    return np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))]).astype(np.int64)


def csr_from_rows(rows: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr, indices)`` (int64) of per-row integer arrays, in order."""
    parts = [np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]
    indptr = indptr_from_sizes([p.size for p in parts])
    indices = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    return indptr, np.ascontiguousarray(indices)


def as_ragged_indices(x: Any, name: str, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row integer lists as CSR ``(indptr, indices)`` (int64).

    Takes anything with ``indptr`` and ``indices`` (:class:`qure.HardNegatives`, a SciPy CSR
    matrix) or a sequence with one 1-D integer list per row; ``rows`` is the expected row count.
    """
    if hasattr(x, "indptr") and hasattr(x, "indices"):
        indptr = as_int_array(x.indptr, f"{name}.indptr")
        indices = as_int_array(x.indices, f"{name}.indices")
        if indptr.size == 0:
            raise ValueError(f"{name}.indptr must have at least one entry (Q + 1)")
        if indptr[0] != 0 or indptr[-1] != indices.size or (np.diff(indptr) < 0).any():
            raise ValueError(
                f"{name}.indptr must start at 0, never decrease and end at len(indices)"
            )
    else:
        if isinstance(x, (str, bytes)) or not isinstance(x, Iterable):
            raise TypeError(
                f"{name} must be a sequence with one list of indices per query, "
                f"got {type(x).__name__}"
            )
        parts = []
        for i, row in enumerate(x):
            part = np.atleast_1d(to_numpy(row))
            if part.ndim != 1 or (part.size and part.dtype.kind not in "iu"):
                raise TypeError(f"{name}[{i}] must be a list of integer gallery indices")
            parts.append(as_int_array(part, f"{name}[{i}]"))
        indptr, indices = csr_from_rows(parts)
    if rows is not None and indptr.shape[0] != rows + 1:
        raise ValueError(f"{name} has {indptr.shape[0] - 1} rows but there are {rows} queries")
    return indptr, indices
