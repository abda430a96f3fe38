"""Device memory for the GPU runners: one small interface, three implementations, one device array.

A :class:`DeviceMemory` owns one CUDA stream and the device allocations made through it; every copy it
makes is asynchronous on that stream (``synchronize()`` waits for them). Implementations:

* ``"cuda-python"`` (the default): NVIDIA's cuda-python, either the ``cuda.bindings.runtime`` module
  (cuda-bindings 12.x/13.x) or the old ``from cuda import cudart`` module of cuda-python 11.x/12.x
  (JetPack 5's CUDA 11.4), whichever imports (the new one first). Every call returns a tuple
  ``(cudaError_t, value...)``; a non-success error becomes a :class:`DeviceError` naming the call.
* ``"pycuda"``: pycuda's driver API on the device's primary context (the one the CUDA runtime, and so
  TensorRT, uses), pushed while the memory is open.
* ``"torch"``: torch CUDA tensors as allocations, on a torch stream; :func:`wrap_torch` makes a torch
  CUDA tensor a :class:`DeviceArray` without copying it (torch users' inputs go to TensorRT as they are).

:class:`DeviceArray` is the device-array protocol of the runner currency (shape, dtype, nbytes, ptr,
``__len__``, ``to_host``, ``take_rows``, ``slice_rows``, ``pad_rows``, ``concat_rows``): a C-contiguous
array of rows in device memory. Its operations run on its memory's stream, device to device (no host
round trip); ``to_host`` synchronizes and returns a fresh numpy array.

Lifetimes are deterministic: an allocation belongs to the arrays that reference it (views from
``slice_rows`` share it) and goes back to its memory's pool as soon as the last of them is dropped or
``free()``-d (CPython reference counting, no garbage-collector timing involved). Closing the memory (the
runner's ``deactivate()``) waits for its stream, frees every allocation, pooled or still referenced, and
destroys the stream; an array of a closed memory raises :class:`DeviceError` when used.

numpy only at import: cuda-python, pycuda and torch are imported when a memory of that kind is opened.
"""

from __future__ import annotations

import abc
import contextlib
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sacvit_deploy.core.errors import SacvitError

IMPLEMENTATIONS = ("cuda-python", "pycuda", "torch")
INSTALL_HINT = (
    "install cuda-python for your CUDA version (pip install 'cuda-python==12.*'; on JetPack 5, CUDA 11.4: "
    "pip install 'cuda-python==11.8.*'), or pycuda (pip install pycuda), or use a CUDA build of torch"
)
_GRANULE = 512  # pool sizes are rounded up to this many bytes, so nearby batch sizes share blocks


class DeviceError(SacvitError):
    """Device memory that cannot be used: no CUDA library, no driver or GPU, a failed CUDA call."""


class NoSuchGpuError(DeviceError):
    """The GPU index asked for is not among those a CUDA library sees (no other library is asked)."""


# ---- choosing an implementation ------------------------------------------------------------------------
def import_cudart() -> Optional[Tuple[Any, str]]:
    """cuda-python's runtime module and its import name: ``cuda.bindings.runtime`` or old ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime

        return runtime, "cuda.bindings.runtime"
    except ImportError:
        pass
    try:
        from cuda import cudart

        return cudart, "cuda.cudart"
    except ImportError:
        return None


def _pycuda_imports() -> bool:
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_has_cuda() -> bool:
    import importlib.util
    import sys

    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve(implementation: str) -> str:
    """``auto`` -> cuda-python when it imports, else pycuda when it imports, else torch (with CUDA).

    Raises :class:`DeviceError` (with what to install) when ``auto`` finds none; an explicit name is
    returned as is (opening it says what is missing).
    """
    if implementation != "auto":
        if implementation not in IMPLEMENTATIONS:
            raise DeviceError(
                f"unknown device memory {implementation!r}; use auto or one of {', '.join(IMPLEMENTATIONS)}"
            )
        return implementation
    if import_cudart() is not None:
        return "cuda-python"
    if _pycuda_imports():
        return "pycuda"
    if _torch_has_cuda():
        return "torch"
    raise DeviceError(f"no library for GPU memory is installed: {INSTALL_HINT}")


def open_memory(implementation: str = "auto", device_id: int = 0) -> DeviceMemory:
    """A :class:`DeviceMemory` (with its own stream) on GPU ``device_id``."""
    kind = resolve(implementation)
    if kind == "cuda-python":
        return CudaPythonMemory(device_id)
    if kind == "pycuda":
        return PycudaMemory(device_id)
    return TorchMemory(device_id)


# ---- the interface ---------------------------------------------------------------------------------------
class _Block:
    """One device allocation (or a wrapped foreign one); back to the pool when the last array drops it."""

    __slots__ = ("__weakref__", "keep", "memory", "owned", "ptr", "size")

    def __init__(
        self, memory: DeviceMemory, ptr: int, size: int, owned: bool = True, keep: Any = None
    ) -> None:
        self.memory = memory
        self.ptr = ptr
        self.size = size
        self.owned = owned
        self.keep = keep  # a foreign object the block keeps alive (a wrapped torch tensor)

    def __del__(self) -> None:
        memory = self.memory
        if memory is not None and self.owned and not memory.closed:
            with contextlib.suppress(Exception):  # at interpreter shutdown
                memory._recycle(self.ptr, self.size)


class DeviceMemory(abc.ABC):
    """Allocations, a stream, and asynchronous copies on it. Subclasses implement the ``_`` primitives."""

    name = "abstract"

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self.closed = False
        self.pending = False  # work enqueued since the last synchronize()
        self._pool: Dict[int, List[int]] = {}
        self._blocks: weakref.WeakSet = weakref.WeakSet()  # of _Block
        self._held: List[Any] = []  # host arrays that asynchronous copies still read or write
        self.allocated_bytes = 0

    # -- what an implementation provides
    @abc.abstractmethod
    def _malloc(self, nbytes: int) -> int: ...

    @abc.abstractmethod
    def _free(self, ptr: int) -> None: ...

    @abc.abstractmethod
    def _htod(self, dst: int, src: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _dtoh(self, dst: np.ndarray, src: int) -> None: ...

    @abc.abstractmethod
    def _dtod(self, dst: int, src: int, nbytes: int) -> None: ...

    @abc.abstractmethod
    def _sync(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None:
        """Destroy the stream, release the context."""

    @property
    @abc.abstractmethod
    def stream_handle(self) -> int:
        """The stream as an integer handle (what TensorRT's ``execute_async_v3`` takes)."""

    # -- allocations
    def _check_open(self) -> None:
        if self.closed:
            raise DeviceError(
                f"this {self.name} device memory is closed (its runner was deactivated): "
                "use device arrays only while their runner is active, or copy them with to_host()"
            )

    def allocate(self, nbytes: int) -> _Block:
        self._check_open()
        size = max(_GRANULE, -(-nbytes // _GRANULE) * _GRANULE)
        free = self._pool.get(size)
        if free:
            ptr = free.pop()
        else:
            ptr = self._malloc(size)
            self.allocated_bytes += size
        block = _Block(self, ptr, size)
        self._blocks.add(block)
        return block

    def _recycle(self, ptr: int, size: int) -> None:
        self._pool.setdefault(size, []).append(ptr)

    def empty(self, shape: Sequence[int], dtype: Any) -> DeviceArray:
        dtype = np.dtype(dtype)
        shape = tuple(int(d) for d in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return DeviceArray(self.allocate(nbytes), 0, shape, dtype)

    def from_host(self, array: np.ndarray) -> DeviceArray:
        """A device copy of ``array`` (asynchronous: the host array is held until the next synchronize)."""
        host = np.ascontiguousarray(array)
        out = self.empty(host.shape, host.dtype)
        if host.nbytes:
            self.htod(out.ptr, host)
        return out

    # -- copies (asynchronous on this memory's stream)
    def htod(self, dst: int, src: np.ndarray) -> None:
        self._check_open()
        self._held.append(src)
        self._htod(dst, src)
        self.pending = True

    def dtoh(self, dst: np.ndarray, src: int) -> None:
        self._check_open()
        self._held.append(dst)
        self._dtoh(dst, src)
        self.pending = True

    def dtod(self, dst: int, src: int, nbytes: int) -> None:
        self._check_open()
        self._dtod(dst, src, nbytes)
        self.pending = True

    def synchronize(self) -> None:
        """Wait for every copy and kernel enqueued on this memory's stream."""
        if not self.closed:
            self._sync()
        self.pending = False
        self._held.clear()

    def close(self) -> None:
        """Wait for the stream, free every allocation (pooled or referenced), destroy the stream."""
        if self.closed:
            return
        self._sync()
        self._held.clear()
        for block in list(self._blocks):
            if block.owned:
                self._free(block.ptr)
            block.keep = None
        for ptrs in self._pool.values():
            for ptr in ptrs:
                self._free(ptr)
        self._pool.clear()
        self.closed = True
        self.pending = False
        self._close()

    def __enter__(self) -> DeviceMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the device array ------------------------------------------------------------------------------------
class DeviceArray:
    """A C-contiguous array of rows in device memory: the runner currency's device array."""

    __slots__ = ("__weakref__", "_block", "_offset", "dtype", "nbytes", "shape")

    def __init__(self, block: _Block, offset: int, shape: Tuple[int, ...], dtype: np.dtype) -> None:
        self._block: Optional[_Block] = block
        self._offset = offset
        self.shape = shape
        self.dtype = dtype
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    # -- what it is
    @property
    def memory(self) -> DeviceMemory:
        return self._live().memory

    @property
    def ptr(self) -> int:
        return self._live().ptr + self._offset

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def _row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __repr__(self) -> str:
        where = "freed" if self._block is None else f"{self._block.memory.name} {self.ptr:#x}"
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, {where})"

    def _live(self) -> _Block:
        block = self._block
        if block is None:
            raise DeviceError("this device array was freed")
        block.memory._check_open()
        return block

    def free(self) -> None:
        """Drop this array's reference to its allocation (it is reused once no view references it)."""
        self._block = None

    # -- the protocol
    def to_host(self) -> np.ndarray:
        """A fresh numpy copy (waits for the stream: the copy and everything enqueued before it)."""
        memory = self.memory
        out = np.empty(self.shape, dtype=self.dtype)
        if self.nbytes:
            memory.dtoh(out, self.ptr)
        memory.synchronize()
        return out

    def take_rows(self, index: Any) -> DeviceArray:
        """Rows ``index`` (host ints, in order) in a new array: one device-to-device copy per run of
        consecutive rows (asynchronous on this array's stream)."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        n = len(self)
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"row index out of range for {n} rows: {index.tolist()}")
        index = np.where(index < 0, index + n, index)
        memory, row = self.memory, self._row_bytes
        out = memory.empty((index.size, *self.shape[1:]), self.dtype)
        if not index.size or not row:
            return out
        # runs of consecutive rows: breaks where the next index is not this one + 1
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        starts = np.concatenate(([0], breaks))
        stops = np.concatenate((breaks, [index.size]))
        src, dst = self.ptr, out.ptr
        for a, b in np.stack((starts, stops), axis=1).tolist():
            memory.dtod(dst + a * row, src + int(index[a]) * row, (b - a) * row)
        return out

    def slice_rows(self, start: int, stop: int) -> DeviceArray:
        """Rows ``start:stop`` as a view sharing this array's allocation (no copy)."""
        n = len(self)
        start, stop, _ = slice(start, stop).indices(n)
        stop = max(start, stop)
        block = self._live()
        return DeviceArray(
            block, self._offset + start * self._row_bytes, (stop - start, *self.shape[1:]), self.dtype
        )

    def pad_rows(self, size: int) -> DeviceArray:
        """A new array of ``size`` rows: these, then the last row repeated (this array when already that long)."""
        n = len(self)
        if size <= n:
            return self
        if n == 0:
            raise ValueError("cannot pad an array of 0 rows (no last row to repeat)")
        memory, row = self.memory, self._row_bytes
        out = memory.empty((size, *self.shape[1:]), self.dtype)
        if row:
            memory.dtod(out.ptr, self.ptr, n * row)
            # doubling: each copy repeats every last row written so far
            filled = n
            last = self.ptr + (n - 1) * row
            memory.dtod(out.ptr + filled * row, last, row)
            filled += 1
            while filled < size:
                count = min(filled - n, size - filled)
                memory.dtod(out.ptr + filled * row, out.ptr + n * row, count * row)
                filled += count
        return out

    def concat_rows(self, others: Sequence[Any]) -> DeviceArray:
        """A new array: these rows, then each of ``others`` (device arrays of the same dtype and row shape)."""
        parts = [self, *others]
        for p in parts[1:]:
            if np.dtype(p.dtype) != self.dtype or tuple(p.shape[1:]) != self.shape[1:]:
                raise ValueError(
                    f"cannot concatenate rows of {tuple(p.shape)} {p.dtype} to rows of {self.shape} {self.dtype}"
                )
        memory = self.memory
        foreign = False
        for p in parts[1:]:
            other = getattr(p, "memory", None)
            if other is not memory:
                foreign = True
                if other is not None and other.pending:
                    other.synchronize()  # written on another stream: finished before this one reads it
        out = memory.empty((sum(len(p) for p in parts), *self.shape[1:]), self.dtype)
        offset = out.ptr
        for p in parts:
            if p.nbytes:
                memory.dtod(offset, int(p.ptr), int(p.nbytes))
            offset += int(p.nbytes)
        if foreign:
            memory.synchronize()  # the other memories may reuse their blocks once this returns
        return out


# ---- cuda-python ------------------------------------------------------------------------------------------
class CudaPythonMemory(DeviceMemory):
    """cuda-python's runtime API (``cuda.bindings.runtime`` or the old ``cuda.cudart``)."""

    name = "cuda-python"

    def __init__(self, device_id: int = 0) -> None:
        super().__init__(device_id)
        found = import_cudart()
        if found is None:
            raise DeviceError(f"buffers='cuda-python' needs cuda-python: {INSTALL_HINT}")
        self.cudart, self.module_name = found
        rt = self.cudart
        self._success = rt.cudaError_t.cudaSuccess
        self._kinds = (
            rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
            rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
            rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
        )
        self.call("cudaSetDevice", device_id)  # the device's primary context, as TensorRT uses
        self._stream = self.call("cudaStreamCreateWithFlags", rt.cudaStreamNonBlocking)
        self._handle = int(self._stream)

    def call(self, function: str, *args: Any) -> Any:
        """``cudart.function(*args)``: its value (None, one value, or a tuple), or :class:`DeviceError`."""
        try:
            result = getattr(self.cudart, function)(*args)
        except DeviceError:
            raise
        except (
            Exception
        ) as exc:  # no driver: the old cudart raises RuntimeError("Failed to dlopen libcuda.so.1")
            raise DeviceError(f"{self.module_name}.{function} failed: {_first_line(exc)}") from None
        err = result[0]
        if err != self._success:
            raise DeviceError(f"{self.module_name}.{function} failed: {error_name(self.cudart, err)}")
        if len(result) == 1:
            return None
        return result[1] if len(result) == 2 else result[1:]

    def _malloc(self, nbytes: int) -> int:
        return int(self.call("cudaMalloc", nbytes))

    def _free(self, ptr: int) -> None:
        self.call("cudaFree", ptr)

    def _htod(self, dst: int, src: np.ndarray) -> None:
        self.call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes, self._kinds[0], self._stream)

    def _dtoh(self, dst: np.ndarray, src: int) -> None:
        self.call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes, self._kinds[1], self._stream)

    def _dtod(self, dst: int, src: int, nbytes: int) -> None:
        self.call("cudaMemcpyAsync", dst, src, nbytes, self._kinds[2], self._stream)

    def _sync(self) -> None:
        self.call("cudaStreamSynchronize", self._stream)

    def _close(self) -> None:
        self.call("cudaStreamDestroy", self._stream)

    @property
    def stream_handle(self) -> int:
        return self._handle


def error_name(cudart: Any, err: Any) -> str:
    try:
        result = cudart.cudaGetErrorName(err)
        name = result[1]
        return name.decode() if isinstance(name, bytes) else str(name)  # novermin (bytes.decode)
    except Exception:
        return str(err)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


# ---- pycuda ------------------------------------------------------------------------------------------------
class PycudaMemory(DeviceMemory):
    """pycuda's driver API. A ``DeviceAllocation`` has no size: the pool keeps sizes itself."""

    name = "pycuda"

    def __init__(self, device_id: int = 0) -> None:
        super().__init__(device_id)
        try:
            import pycuda.driver as cuda
        except ImportError as exc:
            from sacvit_deploy.core.extras import missing_module_message

            raise DeviceError(
                missing_module_message("pycuda", exc, "buffers='pycuda'") + " (or use buffers='cuda-python')"
            ) from None
        self.cuda = cuda
        try:
            cuda.init()
            # The primary context is the one the CUDA runtime (and so TensorRT) uses.
            self.context = cuda.Device(device_id).retain_primary_context()
            self.context.push()
        except Exception as exc:  # pycuda raises its own error types when there is no driver or device
            raise DeviceError(f"pycuda cannot open GPU {device_id}: {_first_line(exc)}") from None
        self.stream = cuda.Stream()
        self._allocations: Dict[int, Any] = {}

    def _malloc(self, nbytes: int) -> int:
        allocation = self.cuda.mem_alloc(nbytes)
        ptr = int(allocation)
        self._allocations[ptr] = allocation
        return ptr

    def _free(self, ptr: int) -> None:
        self._allocations.pop(ptr).free()

    def _htod(self, dst: int, src: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(dst, src, self.stream)

    def _dtoh(self, dst: np.ndarray, src: int) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, self.stream)

    def _dtod(self, dst: int, src: int, nbytes: int) -> None:
        self.cuda.memcpy_dtod_async(dst, src, nbytes, self.stream)

    def _sync(self) -> None:
        self.stream.synchronize()

    def _close(self) -> None:
        self.context.pop()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)


# ---- torch -------------------------------------------------------------------------------------------------
class TorchMemory(DeviceMemory):
    """torch CUDA tensors as allocations (uint8), copies on a torch stream of this memory's own."""

    name = "torch"

    def __init__(self, device_id: int = 0) -> None:
        super().__init__(device_id)
        try:
            import torch
        except ImportError:
            raise DeviceError(f"buffers='torch' needs torch with CUDA; {INSTALL_HINT}") from None
        if not torch.cuda.is_available():
            raise DeviceError(f"buffers='torch' needs a CUDA build of torch and a GPU; {INSTALL_HINT}")
        self.torch = torch
        self.device = torch.device("cuda", device_id)
        self.stream = torch.cuda.Stream(self.device)
        self._regions: Dict[int, Any] = {}  # start address -> uint8 tensor (owned or wrapped)

    def _bytes_at(self, ptr: int, nbytes: int) -> Any:
        for start, t in self._regions.items():
            if start <= ptr and ptr + nbytes <= start + t.numel():
                return t[ptr - start : ptr - start + nbytes]
        raise DeviceError(
            f"address {ptr:#x} (+{nbytes} bytes) is not in memory this torch device memory knows"
        )

    def _malloc(self, nbytes: int) -> int:
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device)
        self._regions[t.data_ptr()] = t
        return int(t.data_ptr())

    def _free(self, ptr: int) -> None:
        self._regions.pop(ptr, None)

    def wrap(self, tensor: Any) -> DeviceArray:
        """A torch CUDA tensor as a :class:`DeviceArray` (no copy; the array keeps the tensor alive).

        The array is ordered after the work torch's current stream has queued (it waits for it).
        """
        torch = self.torch
        if not tensor.is_contiguous():
            tensor = tensor.contiguous()
        flat = (
            tensor.reshape(-1).view(torch.uint8) if tensor.numel() else tensor.new_empty(0, dtype=torch.uint8)
        )
        if tensor.numel():
            self._regions[int(flat.data_ptr())] = flat
        self._after_current_stream()
        dtype = np.dtype(str(tensor.dtype).replace("torch.", ""))
        block = _Block(self, int(tensor.data_ptr()), int(flat.numel()), owned=False, keep=flat)
        self._blocks.add(block)
        return DeviceArray(block, 0, tuple(int(d) for d in tensor.shape), dtype)

    def _after_current_stream(self) -> None:
        """Order this memory's stream after the work torch's current stream has queued (the caller's)."""
        self.stream.wait_stream(self.torch.cuda.current_stream(self.device))
        self.pending = True

    def _copy(self, dst: Any, src: Any) -> None:
        with self.torch.cuda.stream(self.stream):
            dst.copy_(src, non_blocking=True)

    def _htod(self, dst: int, src: np.ndarray) -> None:
        self._copy(self._bytes_at(dst, src.nbytes), self.torch.from_numpy(src.reshape(-1).view(np.uint8)))

    def _dtoh(self, dst: np.ndarray, src: int) -> None:
        self._copy(self.torch.from_numpy(dst.reshape(-1).view(np.uint8)), self._bytes_at(src, dst.nbytes))

    def _dtod(self, dst: int, src: int, nbytes: int) -> None:
        self._copy(self._bytes_at(dst, nbytes), self._bytes_at(src, nbytes))

    def _sync(self) -> None:
        self.stream.synchronize()

    def _close(self) -> None:
        self._regions.clear()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)


_TORCH_MEMORIES: Dict[int, TorchMemory] = {}


def wrap_torch(tensor: Any) -> DeviceArray:
    """A torch CUDA tensor as a device array, zero copy (for torch users at the API edge)."""
    index = tensor.device.index or 0
    memory = _TORCH_MEMORIES.get(index)
    if memory is None or memory.closed:
        memory = _TORCH_MEMORIES[index] = TorchMemory(index)
    return memory.wrap(tensor)


# ---- the GPU ---------------------------------------------------------------------------------------------
def gpu_properties(index: int = 0) -> Tuple[str, Tuple[int, int], int, str]:
    """(name, (major, minor), total memory in bytes, "cuda-python"|"pycuda"|"torch") of GPU ``index``.

    Asked of cuda-python, else pycuda, else torch; :class:`DeviceError` when none can (the message says
    why: no library, no driver, no such GPU).
    """
    reasons = []
    found = import_cudart()
    if found is not None:
        rt, module = found
        try:
            err, count = rt.cudaGetDeviceCount()
            if err != rt.cudaError_t.cudaSuccess:
                raise DeviceError(f"{module}.cudaGetDeviceCount: {error_name(rt, err)}")
            if index >= count:
                raise NoSuchGpuError(f"GPU {index} does not exist: cuda-python sees {count} CUDA GPU(s)")
            err, prop = rt.cudaGetDeviceProperties(index)
            if err != rt.cudaError_t.cudaSuccess:
                raise DeviceError(f"{module}.cudaGetDeviceProperties: {error_name(rt, err)}")
            name = (
                prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
            )  # novermin
            return (
                name.rstrip("\x00"),
                (int(prop.major), int(prop.minor)),
                int(prop.totalGlobalMem),
                "cuda-python",
            )
        except NoSuchGpuError:
            raise
        except DeviceError as exc:
            reasons.append(f"cuda-python: {exc}")
        except Exception as exc:
            reasons.append(f"cuda-python: {_first_line(exc)}")
    if _pycuda_imports():
        import pycuda.driver as cuda

        try:
            cuda.init()
            device = cuda.Device(index)
            major, minor = device.compute_capability()
            return device.name(), (int(major), int(minor)), int(device.total_memory()), "pycuda"
        except Exception as exc:  # pycuda raises its own error types when there is no driver or device
            reasons.append(f"pycuda: {_first_line(exc)}")
    if _torch_has_cuda():
        import torch

        if index >= torch.cuda.device_count():
            raise NoSuchGpuError(
                f"GPU {index} does not exist: torch sees {torch.cuda.device_count()} CUDA GPU(s)"
            )
        p = torch.cuda.get_device_properties(index)
        return p.name, (int(p.major), int(p.minor)), int(p.total_memory), "torch"
    if not reasons:
        reasons.append(f"none of cuda-python, pycuda, torch with CUDA is installed ({INSTALL_HINT})")
    raise DeviceError("; ".join(reasons))
