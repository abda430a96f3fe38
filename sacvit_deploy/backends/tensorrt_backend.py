"""The TensorRT backend: one serialized engine per runner, on the API every release from 8.5 to 11.x has.

``activate()`` first compares the TensorRT version and GPU the engine was built for (the manifest's
``tensorrt`` section) with this machine's: an engine only loads on the TensorRT release that built it
(unless built version-compatible) and on the same GPU architecture (unless hardware-compatible), and
TensorRT's own error for a mismatch is cryptic. Then it deserializes the engine and reads its I/O
tensors by name (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_dtype``,
``get_tensor_profile_shape``). ``infer`` sets each input's shape (``set_input_shape``), every tensor's
address (``set_tensor_address``) and enqueues the engine (``execute_async_v3``).

Buffers:

* ``buffers="torch"``: inputs and outputs are torch CUDA tensors, the engine runs on a torch stream of
  its own, ordered after the caller's current stream;
* ``buffers="pycuda"``: device memory from pycuda, for machines without a CUDA build of torch (common
  on Jetson). The runner's currency is then torch CPU tensors: inputs are copied to the device,
  outputs back;
* ``buffers="auto"`` (default): torch when it has CUDA, else pycuda when it imports.

pycuda's ``DeviceAllocation`` has no size (only ``__int__``, ``__index__``, ``as_buffer``, ``free``),
so the runner keeps each allocation's size itself.

Every tensor whose address TensorRT holds stays referenced until the stream is synchronized. Output
buffers are grow-only and reused across calls (same address for the same or a smaller batch); what
``infer`` returns are fresh tensors (clones), valid after the next call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sacvit_deploy.backends.base import DTYPE_NAMES, TORCH_DTYPES, BackendError, Runner
from sacvit_deploy.core.extras import install_hint, missing_module_message
from sacvit_deploy.core.manifest import ArtifactFile

# TensorRT DataType member name -> the manifest's dtype name.
TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}
BUFFERS = ("auto", "torch", "pycuda")


def resolve_buffers(buffers: str) -> str:
    """``auto`` -> ``torch`` when torch has CUDA, else ``pycuda`` when it imports, else ``torch``."""
    if buffers != "auto":
        return buffers
    if torch.cuda.is_available():
        return "torch"
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        return "torch"  # _TorchBuffers then says what to install
    return "pycuda"


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(
        self,
        path: str | Path,
        entry: ArtifactFile,
        tensorrt: Mapping[str, Any],
        buffers: str = "auto",
        device_id: int = 0,
        **_other_backends: Any,  # options meant for other backends (threads, fp16, cache_dir) are ignored
    ) -> None:
        super().__init__(Path(path).name, entry.inputs, entry.outputs)
        if buffers not in BUFFERS:
            raise BackendError(f"unknown TensorRT buffers {buffers!r}; use one of {', '.join(BUFFERS)}")
        self.path = Path(path)
        self.entry = entry
        self.build_info = dict(tensorrt)
        self.buffers = resolve_buffers(buffers)
        self.device_id = device_id
        self._trt: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._io: Any = None
        self._version = ""
        self._gpu: Any = None
        self._profiles: dict[str, tuple[tuple[int, ...], ...]] = {}

    # ---- properties ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        if self.buffers == "pycuda":
            return torch.device("cpu")
        return torch.device("cuda", self.device_id)

    @property
    def max_batch(self) -> int | None:
        """The engine profile's largest batch (the pipeline splits bigger batches)."""
        profiles = self._profiles or _profiles_from_info(self.entry.info)
        if not profiles:
            return self.fixed_batch
        return min(shapes[2][0] for shapes in profiles.values())

    @property
    def fixed_batch(self) -> int | None:
        """A static profile (min = max, as DLA engines are built) is a fixed batch: the pipeline pads to it."""
        profiles = self._profiles or _profiles_from_info(self.entry.info)
        batches = {(s[0][0], s[2][0]) for s in profiles.values()}
        if len(batches) == 1:
            low, high = batches.pop()
            if low == high:
                return low
        return super().fixed_batch

    @property
    def min_batch(self) -> int:
        profiles = self._profiles or _profiles_from_info(self.entry.info)
        return max((shapes[0][0] for shapes in profiles.values()), default=1)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            tensorrt=self._version or self.build_info.get("version"),
            precision=self.entry.info.get("precision") or self.build_info.get("precision"),
            gpu=self._gpu.name if self._gpu else self.build_info.get("gpu"),
            buffers=self.buffers,
            max_batch=self.max_batch,
        )
        return d

    # ---- lifecycle -------------------------------------------------------------------------------
    def _activate(self) -> None:
        from sacvit_deploy.backends import gpu as gpu_module
        from sacvit_deploy.backends.trt_version import (
            engine_compatibility_problem,
            import_tensorrt,
            installed_version,
        )

        trt = import_tensorrt()
        version = installed_version(trt)
        self._gpu = gpu_module.detect_gpu(self.device_id)
        problem = engine_compatibility_problem(self.build_info, version, self._gpu.compute_capability)
        if problem:
            raise BackendError(f"{self.path}: {problem}; {self._rebuild_hint()}")
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        if self.build_info.get("version_compatible"):
            # A version-compatible engine carries its own lean runtime: host code TensorRT must load.
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise BackendError(
                f"{self.path}: TensorRT {version} cannot load this engine (see TensorRT's message above); "
                f"{self._rebuild_hint()}"
            )
        self._check_io(trt, engine)
        context = engine.create_execution_context()
        if context is None:
            raise BackendError(
                f"{self.path}: TensorRT cannot create an execution context (out of GPU memory?); "
                "close other GPU programs or rebuild with a smaller --max-batch"
            )
        io = _PycudaBuffers(self.device_id) if self.buffers == "pycuda" else _TorchBuffers(self.device)
        self._trt, self._runtime, self._engine, self._context, self._io = trt, runtime, engine, context, io
        self._version = str(version)

    def _deactivate(self) -> None:
        if self._io is not None:
            self._io.close()
        # The context before the engine before the runtime: each holds memory of the next.
        self._context = self._engine = self._runtime = self._io = None

    def _rebuild_hint(self) -> str:
        return f"rebuild the engines on this device: sacvit-deploy build-engine EXPORT_DIR --out {self.path.parent}"

    def _check_io(self, trt: Any, engine: Any) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if set(inputs) != set(self.input_specs) or set(outputs) != set(self.output_specs):
            raise BackendError(
                f"{self.path}: engine tensors {sorted(inputs)} -> {sorted(outputs)} differ from the manifest's "
                f"{sorted(self.input_specs)} -> {sorted(self.output_specs)}; {self._rebuild_hint()}"
            )
        for name in names:
            spec = self.input_specs.get(name) or self.output_specs[name]
            dtype = TRT_DTYPES.get(engine.get_tensor_dtype(name).name)
            if dtype != spec.dtype:
                raise BackendError(
                    f"{self.path}: tensor '{name}' is {engine.get_tensor_dtype(name).name} in the engine but "
                    f"{spec.dtype} in the manifest; {self._rebuild_hint()}"
                )
        self._profiles = {}
        for name in inputs:
            shapes = tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0))
            self._profiles[name] = shapes

    # ---- running ---------------------------------------------------------------------------------
    def _infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        context, io = self._context, self._io
        n = next(iter(feed.values())).shape[0]
        high = self.max_batch
        if (high is not None and n > high) or n < self.min_batch:
            raise BackendError(
                f"{self.name}: batch {n} is outside the engine's profile ({self.min_batch}..{high}); "
                "split the batch, or rebuild with other --min-batch/--max-batch"
            )
        try:
            for name in self.input_specs:
                tensor = feed[name]
                address = io.input(name, tensor)
                if not context.set_input_shape(name, tuple(int(d) for d in tensor.shape)):
                    raise BackendError(
                        f"{self.name}: TensorRT refused the shape {tuple(tensor.shape)} for input '{name}'"
                    )
                context.set_tensor_address(name, address)
            shapes = {}
            for name, spec in self.output_specs.items():
                shape = tuple(int(d) for d in context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(f"{self.name}: TensorRT could not infer the shape of output '{name}'")
                shapes[name] = shape
                context.set_tensor_address(name, io.output(name, shape, TORCH_DTYPES[spec.dtype]))
            io.before_execute()
            if not context.execute_async_v3(io.stream_handle):
                raise BackendError(
                    f"{self.name}: TensorRT failed to run the engine (see TensorRT's message above)"
                )
            return io.finish(shapes)
        finally:
            io.release()


def _profiles_from_info(info: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The profiles build-engine recorded: {input: {"min": [...], "opt": [...], "max": [...]}}."""
    out = {}
    for name, p in (info.get("profiles") or {}).items():
        try:
            out[name] = (tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
        except (KeyError, TypeError):
            continue
    return out


class _TorchBuffers:
    """torch CUDA tensors as TensorRT buffers, on a stream of the runner's own."""

    def __init__(self, device: torch.device) -> None:
        if not torch.cuda.is_available():
            raise BackendError(
                "buffers='torch' needs a CUDA build of torch; install one, or pycuda for buffers='pycuda' "
                f"({install_hint('pycuda')})"
            )
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._storage: dict[str, torch.Tensor] = {}  # grow-only, flat
        self._views: dict[str, torch.Tensor] = {}
        self._held: list[torch.Tensor] = []  # inputs whose addresses TensorRT holds

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def input(self, name: str, tensor: torch.Tensor) -> int:
        t = tensor.to(self.device, non_blocking=True).contiguous()
        self._held.append(t)
        return int(t.data_ptr())

    def output(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> int:
        numel = math.prod(shape)
        storage = self._storage.get(name)
        if storage is None or storage.dtype != dtype or storage.numel() < numel:
            storage = torch.empty(max(numel, 1), dtype=dtype, device=self.device)
            self._storage[name] = storage
        self._views[name] = storage[:numel].view(shape)
        return int(storage.data_ptr())

    def before_execute(self) -> None:
        # The inputs were written on the caller's stream; the last call's clones read the outputs there.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))

    def finish(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        self.stream.synchronize()
        # Clones on the caller's stream: the buffers are reused by the next call.
        return {name: self._views[name].clone() for name in shapes}

    def release(self) -> None:
        self._held.clear()
        self._views.clear()

    def close(self) -> None:
        self.stream.synchronize()
        self.release()
        self._storage.clear()


class _PycudaBuffers:
    """pycuda device memory (grow-only, per tensor), a pycuda stream, host copies in and out."""

    def __init__(self, device_id: int) -> None:
        try:
            import pycuda.driver as cuda
        except ImportError as exc:
            raise BackendError(
                missing_module_message("pycuda", exc, "buffers='pycuda'") + " (or use buffers='torch')"
            ) from None
        cuda.init()
        self.cuda = cuda
        # The primary context is the one the CUDA runtime (and so TensorRT) uses.
        self.context = cuda.Device(device_id).retain_primary_context()
        self.context.push()
        self.stream = cuda.Stream()
        self._allocations: dict[str, tuple[Any, int]] = {}  # name -> (DeviceAllocation, its size)
        self._pending: dict[str, tuple[Any, np.dtype]] = {}
        self._held: list[np.ndarray] = []  # host arrays being copied asynchronously

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def _allocation(self, name: str, nbytes: int) -> Any:
        current, size = self._allocations.get(name, (None, 0))
        if current is None or size < nbytes:
            if current is not None:
                self.stream.synchronize()
                current.free()
            size = max(nbytes, 1)
            current = self.cuda.mem_alloc(size)
            self._allocations[name] = (current, size)
        return current

    def input(self, name: str, tensor: torch.Tensor) -> int:
        host = np.ascontiguousarray(tensor.detach().cpu().numpy())
        allocation = self._allocation(name, host.nbytes)
        self.cuda.memcpy_htod_async(allocation, host, self.stream)
        self._held.append(host)
        return int(allocation)

    def output(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> int:
        np_dtype = np.dtype(DTYPE_NAMES[dtype])
        allocation = self._allocation(name, math.prod(shape) * np_dtype.itemsize)
        self._pending[name] = (allocation, np_dtype)
        return int(allocation)

    def before_execute(self) -> None:
        pass

    def finish(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        hosts = {}
        for name, shape in shapes.items():
            allocation, np_dtype = self._pending[name]
            hosts[name] = np.empty(shape, dtype=np_dtype)
            self.cuda.memcpy_dtoh_async(hosts[name], allocation, self.stream)
        self.stream.synchronize()
        return {name: torch.from_numpy(host) for name, host in hosts.items()}

    def release(self) -> None:
        self.stream.synchronize()  # the asynchronous copies may still read the held host arrays
        self._held.clear()
        self._pending.clear()

    def close(self) -> None:
        self.stream.synchronize()
        for allocation, _size in self._allocations.values():
            allocation.free()
        self._allocations.clear()
        self.release()
        self.context.pop()
