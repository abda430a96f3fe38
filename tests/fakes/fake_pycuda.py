"""A fake ``pycuda`` (``pycuda.driver``) whose "device memory" is host memory, for the TensorRT fake.

``install_fake_pycuda(monkeypatch)`` puts ``pycuda`` and ``pycuda.driver`` in ``sys.modules`` and
returns the driver module; ``driver.allocations`` lists every allocation (live or freed), and
``driver.copies`` every copy as ``(kind, nbytes)``, kind ``htod``/``dtoh``/``dtod``.

Its classes have exactly the members of pycuda's (tests/test_trt_conformance.py holds them against
src/wrapper/wrap_cudadrv.cpp): a ``DeviceAllocation`` has ``__int__``, ``__index__``, ``__long__``,
``as_buffer`` and ``free``, and no size. Copies are bounds-checked against the allocation that holds
the address, as the real driver would fault; :func:`is_freed` tells tests whether one was freed.
"""

from __future__ import annotations

import ctypes
import sys
import types
from typing import Any

import numpy as np


def make_fake_pycuda() -> tuple[types.ModuleType, types.ModuleType]:
    driver = types.ModuleType("pycuda.driver")
    driver.allocations = []
    driver.copies = []
    driver.contexts = []
    primary: dict[int, Any] = {}

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self._buffer = ctypes.create_string_buffer(nbytes)
            self._size = nbytes
            self._freed = False
            driver.allocations.append(self)

        def __int__(self) -> int:
            if self._freed:
                raise RuntimeError("use of a freed device allocation")
            return ctypes.addressof(self._buffer)

        __index__ = __long__ = __int__

        def as_buffer(self, size: int, offset: int = 0) -> memoryview:
            return memoryview(self._buffer)[offset : offset + size]

        def free(self) -> None:
            self._freed = True

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        if not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"mem_alloc: a positive int size, got {nbytes!r}")
        return DeviceAllocation(nbytes)

    def _room(dest: Any) -> int:
        """Bytes from ``dest`` (an allocation or an address) to the end of the live allocation holding it."""
        address = int(dest)
        for a in driver.allocations:
            start = ctypes.addressof(a._buffer)
            if not a._freed and start <= address < start + a._size:
                return start + a._size - address
        raise RuntimeError(f"address {address:#x} is not in a live device allocation")

    class Stream:
        def __init__(self) -> None:
            self._handle = ctypes.create_string_buffer(8)
            self._synchronized = 0

        @property
        def handle(self) -> int:
            return ctypes.addressof(self._handle)

        def synchronize(self) -> None:
            self._synchronized += 1

    class Context:
        def push(self) -> None:
            driver.contexts.append(self)

        @staticmethod
        def pop() -> None:  # static in pycuda: pops whatever context is current
            if not driver.contexts:
                raise RuntimeError("cuCtxPopCurrent failed: no current context")
            driver.contexts.pop()

    class Device:
        def __init__(self, index: int) -> None:
            self._index = index

        def name(self) -> str:
            return "Fake GPU"

        def compute_capability(self) -> tuple[int, int]:
            return (8, 6)

        def total_memory(self) -> int:
            return 8 << 30

        def retain_primary_context(self) -> Context:
            # One primary context per device, however often it is retained (as in CUDA).
            return primary.setdefault(self._index, Context())

    def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Stream | None = None) -> None:
        src = np.ascontiguousarray(src)
        if src.nbytes > _room(dest):
            raise ValueError(f"htod copy of {src.nbytes} bytes into {_room(dest)} bytes of device memory")
        ctypes.memmove(int(dest), src.ctypes.data, src.nbytes)
        driver.copies.append(("htod", src.nbytes))

    def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Stream | None = None) -> None:
        if not dest.flags.c_contiguous:
            raise ValueError("dtoh destination must be contiguous")
        if dest.nbytes > _room(src):
            raise ValueError(f"dtoh copy of {dest.nbytes} bytes from {_room(src)} bytes of device memory")
        ctypes.memmove(dest.ctypes.data, int(src), dest.nbytes)
        driver.copies.append(("dtoh", dest.nbytes))

    def memcpy_dtod_async(dest: Any, src: Any, size: int, stream: Stream | None = None) -> None:
        if size > _room(dest) or size > _room(src):
            raise ValueError(f"dtod copy of {size} bytes beyond a device allocation")
        ctypes.memmove(int(dest), int(src), size)
        driver.copies.append(("dtod", size))

    def memcpy_htod(dest: Any, src: np.ndarray) -> None:
        memcpy_htod_async(dest, src)

    driver.init = lambda flags=0: None
    driver.memcpy_htod = memcpy_htod
    driver.Device = Device
    driver.Stream = Stream
    driver.Context = Context
    driver.DeviceAllocation = DeviceAllocation
    driver.mem_alloc = mem_alloc
    driver.memcpy_htod_async = memcpy_htod_async
    driver.memcpy_dtoh_async = memcpy_dtoh_async
    driver.memcpy_dtod_async = memcpy_dtod_async
    package = types.ModuleType("pycuda")
    package.driver = driver
    package.__path__ = []
    return package, driver


def install_fake_pycuda(monkeypatch: Any) -> types.ModuleType:
    package, driver = make_fake_pycuda()
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    return driver


def is_freed(allocation: Any) -> bool:
    return allocation._freed
