"""The runner currency: numpy arrays on the host, duck-typed *device arrays* on a GPU.

A device array (the TensorRT backend's outputs; see PROTOCOL in docs/architecture.md) has ``shape``,
``dtype`` (a numpy dtype), ``nbytes``, ``ptr``, ``__len__`` and the methods ``to_host()``,
``take_rows(index)``, ``slice_rows(start, stop)``, ``pad_rows(size)`` and ``concat_rows(others)``.
Nothing here imports a GPU library: a device array is recognised by its ``to_host`` and ``take_rows``
methods. The pipeline moves rows only through the helpers below, so its gate and compaction work
the same on numpy arrays and on device memory (where rows are copied device to device).
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

# Manifest dtype names -> numpy dtypes (the names are numpy's, so np.dtype(name) agrees).
DTYPES: Dict[str, np.dtype] = {
    name: np.dtype(name) for name in ("float32", "float16", "int32", "int64", "bool", "uint8")
}


def is_device_array(a: Any) -> bool:
    """True for a device array (duck-typed), False for numpy arrays and everything else."""
    return not isinstance(a, np.ndarray) and hasattr(a, "to_host") and hasattr(a, "take_rows")


def to_host(a: Any) -> np.ndarray:
    """A numpy array of ``a``: itself when it is one already (no copy), else the device's copy."""
    if isinstance(a, np.ndarray):
        return a
    if is_device_array(a):
        return a.to_host()
    return np.asarray(a)


def take_rows(a: Any, index: np.ndarray) -> Any:
    """``a[index]`` along the batch axis, as a new contiguous array on ``a``'s side (host or device)."""
    if isinstance(a, np.ndarray):
        return a.take(index, axis=0)
    return a.take_rows(np.asarray(index, dtype=np.int64))


def slice_rows(a: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` (a view for numpy)."""
    if isinstance(a, np.ndarray):
        return a[start:stop]
    return a.slice_rows(start, stop)


def pad_rows(a: Any, size: int) -> Any:
    """``a`` with its last row repeated up to ``size`` rows (real data: no NaN/inf paths)."""
    if isinstance(a, np.ndarray):
        extra = size - a.shape[0]
        if extra <= 0:
            return a
        return np.concatenate([a, np.repeat(a[-1:], extra, axis=0)])
    return a.pad_rows(size)


def concat_rows(parts: Sequence[Any]) -> Any:
    """The parts one after the other along the batch axis (all host or all device arrays)."""
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate([to_host(p) for p in parts]) if len(parts) > 1 else first
    return first.concat_rows(list(parts[1:]))


def as_host_batch(a: Any) -> np.ndarray:
    """An input batch as a numpy array: numpy as is, a CPU torch tensor without a copy, a CUDA tensor
    copied to the host; anything else through ``np.asarray``. Used at the API edge only."""
    if isinstance(a, np.ndarray):
        return a
    if is_device_array(a):
        return a.to_host()
    if type(a).__module__.startswith("torch") and hasattr(a, "detach"):
        t = a.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        return t.numpy()  # shares memory with a CPU tensor
    return np.asarray(a)
