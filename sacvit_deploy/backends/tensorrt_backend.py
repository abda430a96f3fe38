"""The TensorRT backend: one serialized engine per runner, on the API every release from 8.5 to 11.x has.

``activate()`` first compares the TensorRT version and GPU the engine was built for (the manifest's
``tensorrt`` section) with this machine's: an engine only loads on the TensorRT release that built it
(unless built version-compatible) and on the same GPU architecture (unless hardware-compatible), and
TensorRT's own error for a mismatch is cryptic. Then it deserializes the engine and reads its I/O
tensors by name (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_dtype``,
``get_tensor_profile_shape``). ``infer`` sets each input's shape (``set_input_shape``), every tensor's
address (``set_tensor_address``) and enqueues the engine (``execute_async_v3``).

Currency (PROTOCOL of issue 20): ``infer(feed)`` takes numpy arrays or device arrays and returns
device arrays (:class:`sacvit_deploy.backends.device.DeviceArray`): outputs stay on the GPU.

* a numpy input is copied to the device (host-to-device, on the runner's stream);
* a device array input (any object with ``ptr``/``shape``/``dtype``, e.g. a previous runner's output,
  a ``take_rows`` compaction of one, or a torch CUDA tensor wrapped by ``device.wrap_torch``) is bound
  as it is, without a copy. Device arrays are C-contiguous by construction; the feed check rejects a
  wrong dtype. One still being written on another memory's stream is waited for first;
* each output is a fresh device array per call (from the runner's pool, so steady-state calls allocate
  nothing). It stays valid until it (and every view of it) is dropped or ``free()``-d, or until the
  runner is deactivated, whichever comes first; ``to_host()`` copies it to numpy.

One stream per runner; ``infer`` synchronizes it once, after the engine, so its outputs are complete
when it returns. Every buffer whose address TensorRT holds stays referenced until then.

Buffers (device memory, :mod:`sacvit_deploy.backends.device`):

* ``buffers="cuda-python"``: NVIDIA's cuda-python, the new ``cuda.bindings.runtime`` (cuda-bindings
  12.x/13.x) or the old ``cuda.cudart`` (cuda-python 11.x/12.x, e.g. 11.8 for JetPack 5's CUDA 11.4);
* ``buffers="pycuda"``: pycuda's driver API on the device's primary context (the one TensorRT uses).
  pycuda's ``DeviceAllocation`` has no size (only ``__int__``, ``__index__``, ``as_buffer``, ``free``),
  so the memory keeps each allocation's size itself;
* ``buffers="torch"``: torch CUDA tensors as allocations, on a torch stream of the runner's own;
* ``buffers="auto"`` (default): cuda-python when it imports, else pycuda, else torch when it has CUDA;
  with none of them, ``activate()`` says what to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from sacvit_deploy.backends.arrays import is_device_array
from sacvit_deploy.backends.base import BackendError, Runner
from sacvit_deploy.backends.device import IMPLEMENTATIONS
from sacvit_deploy.backends.trt_logger import make_logger
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
BUFFERS = ("auto", *IMPLEMENTATIONS)  # the device memories (backends/device.py), or auto


def resolve_buffers(buffers: str) -> str:
    """``auto`` -> cuda-python when it imports, else pycuda, else torch with CUDA; still ``auto`` when
    none is installed (``activate()`` then says what to install)."""
    from sacvit_deploy.backends.device import DeviceError, resolve

    if buffers not in BUFFERS:
        raise BackendError(f"unknown TensorRT buffers {buffers!r}; use one of {', '.join(BUFFERS)}")
    try:
        return resolve(buffers)
    except DeviceError:
        return "auto"


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(
        self,
        path: Union[str, Path],
        entry: ArtifactFile,
        tensorrt: Mapping[str, Any],
        buffers: str = "auto",
        device_id: int = 0,
        **_other_backends: Any,  # options meant for other backends (threads, fp16, cache_dir) are ignored
    ) -> None:
        super().__init__(Path(path).name, entry.inputs, entry.outputs)
        self.path = Path(path)
        self.entry = entry
        self.build_info = dict(tensorrt)
        self.buffers = resolve_buffers(buffers)
        self.device_id = device_id
        self._trt: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._memory: Any = None  # device.DeviceMemory while active
        self._logger: Any = None  # trt_logger.make_logger's, while active
        self._version = ""
        self._output_dtypes = {name: np.dtype(spec.dtype) for name, spec in self.output_specs.items()}
        self._gpu: Any = None
        # What build-engine recorded (manifest: untrusted, checked here), until the engine's own
        # profiles replace it at activate().
        self._profiles: Dict[str, Tuple[Tuple[int, ...], ...]] = _profiles_from_info(entry.info, self.path)

    # ---- properties ------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """The protocol's "cuda:N"."""
        return f"cuda:{self.device_id}"

    @property
    def max_batch(self) -> Optional[int]:
        """The engine profile's largest batch (the pipeline splits bigger batches)."""
        profiles = self._profiles
        if not profiles:
            return self.fixed_batch
        return min(shapes[2][0] for shapes in profiles.values())

    @property
    def fixed_batch(self) -> Optional[int]:
        """A static profile (min = max, as DLA engines are built) is a fixed batch: the pipeline pads to it."""
        profiles = self._profiles
        batches = {(s[0][0], s[2][0]) for s in profiles.values()}
        if len(batches) == 1:
            low, high = batches.pop()
            if low == high:
                return low
        return super().fixed_batch

    @property
    def min_batch(self) -> int:
        profiles = self._profiles
        return max((shapes[0][0] for shapes in profiles.values()), default=1)

    def describe(self) -> Dict[str, Any]:
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
        from sacvit_deploy.backends.device import DeviceError, open_memory

        try:
            # Before deserializing: the memory makes the device's primary context current (TensorRT's).
            memory = open_memory(self.buffers, self.device_id)
        except DeviceError as exc:
            raise BackendError(str(exc)) from None
        try:
            # TensorRT's messages through ours, never raw to the terminal; kept as long as the runtime
            logger = self._logger = make_logger(trt)
            runtime = trt.Runtime(logger)
            if self.build_info.get("version_compatible"):
                # A version-compatible engine carries its own lean runtime: host code TensorRT must load.
                runtime.engine_host_code_allowed = True
            engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
            if engine is None:
                said = f" ({logger.errors[0][:300]})" if logger.errors else ""
                raise BackendError(
                    f"{self.path}: TensorRT {version} cannot load this engine{said}; {self._rebuild_hint()}"
                )
            self._check_io(trt, engine)
            context = engine.create_execution_context()
            if context is None:
                raise BackendError(
                    f"{self.path}: TensorRT cannot create an execution context (out of GPU memory?); "
                    "close other GPU programs or rebuild with a smaller --max-batch"
                )
        except BaseException:
            memory.close()
            raise
        self._trt, self._runtime, self._engine, self._context = trt, runtime, engine, context
        self._memory = memory
        self.buffers = memory.name
        self._version = str(version)

    def _deactivate(self) -> None:
        # The context before the engine before the runtime: each holds memory of the next. The device
        # memory last: closing it waits for the stream and frees every buffer (outputs included).
        self._context = self._engine = self._runtime = None
        self._logger = None
        if self._memory is not None:
            self._memory.close()
        self._memory = None

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
    def _infer(self, feed: Mapping[str, Any]) -> Dict[str, Any]:
        """numpy / device arrays in, fresh device arrays out; one stream synchronization."""
        context, memory = self._context, self._memory
        n = next(iter(feed.values())).shape[0]
        high = self.max_batch
        if (high is not None and n > high) or n < self.min_batch:
            raise BackendError(
                f"{self.name}: batch {n} is outside the engine's profile ({self.min_batch}..{high}); "
                "split the batch, or rebuild with other --min-batch/--max-batch"
            )
        staged = []  # device copies of host inputs: TensorRT holds their addresses until the sync
        try:
            for name in self.input_specs:
                a = feed[name]
                if is_device_array(a):
                    other = getattr(a, "memory", None)
                    if other is not None and other is not memory and other.pending:
                        other.synchronize()  # written on another stream: wait before this one reads it
                    address = int(a.ptr)
                else:
                    a = memory.from_host(a)
                    staged.append(a)
                    address = a.ptr
                shape = tuple(int(d) for d in a.shape)
                if not context.set_input_shape(name, shape):
                    raise BackendError(f"{self.name}: TensorRT refused the shape {shape} for input '{name}'")
                context.set_tensor_address(name, address)
            outputs = {}
            for name, dtype in self._output_dtypes.items():
                shape = tuple(int(d) for d in context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(f"{self.name}: TensorRT could not infer the shape of output '{name}'")
                outputs[name] = memory.empty(shape, dtype)
                context.set_tensor_address(name, outputs[name].ptr)
            if not context.execute_async_v3(memory.stream_handle):
                errors = getattr(self._logger, "errors", None) or ["no message"]
                raise BackendError(f"{self.name}: TensorRT failed to run the engine ({errors[-1][:300]})")
        finally:
            memory.synchronize()  # the one sync of the call (also after a failure: staged inputs in flight)
            staged.clear()
        return outputs


def _profiles_from_info(info: Mapping[str, Any], path: Path) -> Dict[str, Tuple[Tuple[int, ...], ...]]:
    """The profiles build-engine recorded: {input: {"min": [...], "opt": [...], "max": [...]}}, each a
    shape of positive ints, min <= opt <= max. The manifest is untrusted: anything else is one line."""
    recorded = info.get("profiles") or {}
    out: Dict[str, Tuple[Tuple[int, ...], ...]] = {}
    bad = f"{path}: the manifest's profiles for this engine"
    if not isinstance(recorded, Mapping):
        raise BackendError(f"{bad} are not a mapping; rebuild the engines with `sacvit-deploy build-engine`")
    for name, p in recorded.items():
        try:
            shapes = tuple(tuple(p[k]) for k in ("min", "opt", "max"))
            ok = len({len(s) for s in shapes}) == 1 and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for s in shapes for d in s
            )
        except (KeyError, TypeError):
            ok = False
        if not ok or not all(lo <= mid <= hi for lo, mid, hi in zip(*shapes)):
            raise BackendError(
                f"{bad} ({name!r}: {p!r:.80}) are not min <= opt <= max shapes of positive integers; "
                "rebuild the engines with `sacvit-deploy build-engine`"
            )
        out[str(name)] = shapes
    return out
