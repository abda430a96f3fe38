"""A fake cuda-python runtime module whose "device memory" is host memory, for the TensorRT fake.

``install_fake_cuda_python(monkeypatch, api)`` puts it in ``sys.modules`` as the new
``cuda.bindings.runtime`` (``api="bindings"``, cuda-bindings 12.x/13.x; ``cuda.cudart`` then does not
import, as in 13.x) or as the old ``cuda.cudart`` (``api="cudart"``, cuda-python 11.x/12.x; then
``cuda.bindings`` does not import, as in 12.2), and returns the module.

It offers only names the real modules have (tests/test_cuda_memory.py holds it against
tests/data/cuda_surface/, recorded from the real wheels by scripts/cuda_surface.py) and answers as
they do: every function returns a tuple, ``(cudaError_t,)`` or ``(cudaError_t, value)``; failures are
error codes, not exceptions. Allocations are ctypes buffers (real host addresses, so the fake TensorRT
reads and writes them); copies are bounds-checked against live allocations as the driver would fault.

Test-only attributes (never compared with the real surface): ``copies`` lists ``(kind, nbytes)`` for
every copy, kind ``"htod"``/``"dtoh"``/``"dtod"``; ``allocations`` every allocation ever made;
``syncs`` counts stream synchronizations; ``streams`` the live streams.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import types
from typing import Any

API_MODULES = {"bindings": "cuda.bindings.runtime", "cudart": "cuda.cudart"}
KINDS = {1: "htod", 2: "dtoh", 3: "dtod"}


def make_fake_cuda_python(gpus: int = 1) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.copies = []
    rt.allocations = []
    rt.syncs = 0
    rt.streams = []
    current = {"device": 0}

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorMemoryAllocation = 2
        cudaErrorInvalidDevice = 101
        cudaErrorInvalidResourceHandle = 400
        cudaErrorIllegalAddress = 700

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToHost = 0
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3
        cudaMemcpyDefault = 4

    class cudaStream_t:
        def __init__(self) -> None:
            self._cell = ctypes.create_string_buffer(8)
            self._destroyed = False

        def getPtr(self) -> int:
            return ctypes.addressof(self._cell)

        def __int__(self) -> int:
            return ctypes.addressof(self._cell)

        __index__ = __int__

    class cudaDeviceProp:
        def __init__(self) -> None:
            self.name = b"Fake GPU"
            self.major = 8
            self.minor = 6
            self.totalGlobalMem = 8 << 30

    class _Allocation:
        def __init__(self, nbytes: int) -> None:
            self.buffer = ctypes.create_string_buffer(nbytes)
            self.start = ctypes.addressof(self.buffer)
            self.size = nbytes
            self.freed = False

    ok = cudaError_t.cudaSuccess
    bad = cudaError_t.cudaErrorInvalidValue

    def _live(address: int, nbytes: int) -> bool:
        for a in rt.allocations:
            if not a.freed and a.start <= address and address + nbytes <= a.start + a.size:
                return True
        return False

    def _stream_ok(stream: Any) -> bool:
        if isinstance(stream, cudaStream_t):
            return not stream._destroyed
        return isinstance(stream, int)  # 0: the legacy default stream; ints are accepted as handles

    def cudaMalloc(size: int) -> tuple:
        if not isinstance(size, int) or size < 0:
            return (bad, None)
        a = _Allocation(max(size, 1))
        rt.allocations.append(a)
        return (ok, a.start)

    def cudaFree(devPtr: Any) -> tuple:
        for a in rt.allocations:
            if a.start == int(devPtr) and not a.freed:
                a.freed = True
                return (ok,)
        return (bad,)

    def cudaMemcpyAsync(dst: Any, src: Any, count: int, kind: Any, stream: Any) -> tuple:
        kind = cudaMemcpyKind(kind)
        if kind.value not in KINDS or not _stream_ok(stream):
            return (bad,)
        name = KINDS[kind.value]
        dst, src = int(dst), int(src)
        if (name in ("htod", "dtod") and not _live(dst, count)) or (
            name in ("dtoh", "dtod") and not _live(src, count)
        ):
            return (cudaError_t.cudaErrorIllegalAddress,)
        ctypes.memmove(dst, src, count)
        rt.copies.append((name, count))
        return (ok,)

    def cudaStreamCreateWithFlags(flags: int) -> tuple:
        stream = cudaStream_t()
        rt.streams.append(stream)
        return (ok, stream)

    def cudaStreamSynchronize(stream: Any) -> tuple:
        if not _stream_ok(stream):
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        rt.syncs += 1
        return (ok,)

    def cudaStreamDestroy(stream: Any) -> tuple:
        if not isinstance(stream, cudaStream_t) or stream._destroyed:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        stream._destroyed = True
        rt.streams.remove(stream)
        return (ok,)

    def cudaDeviceSynchronize() -> tuple:
        rt.syncs += 1
        return (ok,)

    def cudaSetDevice(device: int) -> tuple:
        if not 0 <= device < gpus:
            return (cudaError_t.cudaErrorInvalidDevice,)
        current["device"] = device
        return (ok,)

    def cudaGetDevice() -> tuple:
        return (ok, current["device"])

    def cudaGetDeviceCount() -> tuple:
        return (ok, gpus)

    def cudaGetDeviceProperties(device: int) -> tuple:
        if not 0 <= device < gpus:
            return (cudaError_t.cudaErrorInvalidDevice, None)
        return (ok, cudaDeviceProp())

    def cudaGetErrorName(error: Any) -> tuple:
        return (ok, cudaError_t(error).name.encode())

    for value in list(locals().values()):
        if callable(value) and getattr(value, "__name__", "").startswith("cuda"):
            setattr(rt, value.__name__, value)
    rt.cudaStreamDefault = 0
    rt.cudaStreamNonBlocking = 1
    return rt


def install_fake_cuda_python(monkeypatch: Any, api: str = "bindings", gpus: int = 1) -> types.ModuleType:
    """The fake as ``cuda.bindings.runtime`` (new API) or ``cuda.cudart`` (old API); the other fails to import."""
    rt = make_fake_cuda_python(gpus)
    cuda = types.ModuleType("cuda")
    cuda.__path__ = []
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    if api == "bindings":
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__ = []
        bindings.runtime = rt
        cuda.bindings = bindings
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
        monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    elif api == "cudart":
        rt.__name__ = "cuda.cudart"
        cuda.cudart = rt
        monkeypatch.setitem(sys.modules, "cuda.cudart", rt)
        monkeypatch.setitem(sys.modules, "cuda.bindings", None)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    else:
        raise ValueError(api)
    return rt


def hide_cuda_python(monkeypatch: Any) -> None:
    """cuda-python not installed (neither API imports)."""
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
