"""A fake ``pycuda`` (``pycuda.driver``) whose "device memory" is host memory, for the TensorRT fake.

``install_fake_pycuda(monkeypatch)`` puts ``pycuda`` and ``pycuda.driver`` in ``sys.modules`` and
returns the driver module; ``driver.allocations`` lists every allocation (live or freed), and
``driver.copies`` every host<->device copy.
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

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            if not isinstance(nbytes, int) or nbytes <= 0:
                raise ValueError(f"mem_alloc: a positive int size, got {nbytes!r}")
            self._buffer = ctypes.create_string_buffer(nbytes)
            self.nbytes = nbytes
            self.freed = False
            driver.allocations.append(self)

        def __int__(self) -> int:
            if self.freed:
                raise RuntimeError("use of a freed device allocation")
            return ctypes.addressof(self._buffer)

        def free(self) -> None:
            self.freed = True

    class Stream:
        def __init__(self) -> None:
            self._handle = ctypes.create_string_buffer(8)
            self.synchronized = 0

        @property
        def handle(self) -> int:
            return ctypes.addressof(self._handle)

        def synchronize(self) -> None:
            self.synchronized += 1

    class Context:
        def push(self) -> None:
            driver.contexts.append(self)

        def pop(self) -> None:
            assert driver.contexts and driver.contexts[-1] is self, "popping a context that is not current"
            driver.contexts.pop()

        @staticmethod
        def pop_current() -> None:
            driver.contexts.pop()

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        def name(self) -> str:
            return "Fake GPU"

        def compute_capability(self) -> tuple[int, int]:
            return (8, 6)

        def total_memory(self) -> int:
            return 8 << 30

        def retain_primary_context(self) -> Context:
            return Context()

    def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Stream | None = None) -> None:
        src = np.ascontiguousarray(src)
        if src.nbytes > dest.nbytes:
            raise ValueError(f"htod copy of {src.nbytes} bytes into a {dest.nbytes}-byte allocation")
        ctypes.memmove(int(dest), src.ctypes.data, src.nbytes)
        driver.copies.append(("htod", src.nbytes))

    def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Stream | None = None) -> None:
        if not dest.flags.c_contiguous:
            raise ValueError("dtoh destination must be contiguous")
        ctypes.memmove(dest.ctypes.data, int(src), dest.nbytes)
        driver.copies.append(("dtoh", dest.nbytes))

    def memcpy_htod(dest: Any, src: np.ndarray) -> None:
        memcpy_htod_async(dest, src)

    driver.init = lambda flags=0: None
    driver.memcpy_htod = memcpy_htod
    driver.Device = Device
    driver.Stream = Stream
    driver.Context = Context
    driver.DeviceAllocation = DeviceAllocation
    driver.mem_alloc = DeviceAllocation
    driver.memcpy_htod_async = memcpy_htod_async
    driver.memcpy_dtoh_async = memcpy_dtoh_async
    package = types.ModuleType("pycuda")
    package.driver = driver
    package.__path__ = []
    return package, driver


def install_fake_pycuda(monkeypatch: Any) -> types.ModuleType:
    package, driver = make_fake_pycuda()
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    return driver
