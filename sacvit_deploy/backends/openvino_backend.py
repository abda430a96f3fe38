"""The OpenVINO backend: the exported ONNX graphs (float, or the Q/DQ int8 folders of ``quantize``)
compiled by OpenVINO for a CPU (or an Intel GPU / NPU where OpenVINO finds one).

OpenVINO reads ONNX directly; a Q/DQ graph runs its quantized ops in int8 (``docs/openvino.md``).
numpy in, numpy out, as every CPU runner (the runner protocol of backends/base.py).

Options: ``device`` (``CPU``, ``GPU``, ``NPU``, ``GPU.1`` ...; asked for and absent: one clear line),
``hint`` (OpenVINO's performance hint: ``LATENCY``, one request per call; ``THROUGHPUT``, the batch
split over the compiled model's optimal number of infer requests, run together), ``threads``
(``INFERENCE_NUM_THREADS``), ``pinning`` (``ENABLE_CPU_PINNING``, off: see ``_config``) and ``cache_dir`` (OpenVINO's compiled-model cache: the second start of
the same graph on the same device and options loads the compiled blob instead of compiling;
:data:`DEFAULT_CACHE` unless ``None``/``""`` turns it off). Float graphs run in float32
(``INFERENCE_PRECISION_HINT f32``): OpenVINO would otherwise pick bf16 on CPUs that have it, and
parity with the exported graph is the contract.

Static shapes on Intel AMX CPUs: OpenVINO's CPU plugin corrupts memory running an int8
(FakeQuantize) graph with a dynamic input dimension on CPUs with AMX int8 (Sapphire Rapids and
newer; openvinotoolkit/openvino#37577, open: segfaults at inference or when the compiled model is
freed; AMD and pre-AMX Intel are unaffected, static int8 and dynamic float graphs are fine). Such a
graph is therefore compiled with static shapes there: the batch is padded (last row repeated) to the
next power of two; bucket 1 is compiled on activation, every other bucket once, on first use, and
all are kept while the runner is active. ``static_shapes`` forces it on (``True``) or off (``False``); ``None`` decides as above.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from sacvit_deploy.backends.arrays import pad_rows
from sacvit_deploy.backends.base import BackendError, Runner, check_graph_io
from sacvit_deploy.core.extras import install_hint
from sacvit_deploy.core.manifest import TensorSpec

HINTS = ("LATENCY", "THROUGHPUT")
AMX_INT8_BUG = "openvinotoolkit/openvino#37577"
DEVICE_KINDS = ("CPU", "GPU", "NPU")
INSTALL_HINT = install_hint("openvino")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sacvit-deploy/openvino`` (``~/.cache/...``): outside every artifact folder."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sacvit-deploy" / "openvino"


DEFAULT_CACHE = "default"


def import_openvino() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise BackendError(f"openvino is not installed; {INSTALL_HINT}") from None
    return ov


def is_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


_CORE: Any = None


def core() -> Any:
    """One ``openvino.Core`` per process (creating one loads the plugins: ~0.1 s)."""
    global _CORE
    if _CORE is None:
        _CORE = import_openvino().Core()
    return _CORE


def available_devices() -> List[str]:
    """What OpenVINO finds here (``['CPU']``, ``['CPU', 'GPU.0', 'GPU.1']`` ...); [] without openvino."""
    try:
        return list(core().available_devices)
    except BackendError:
        return []


def normalize_device(device: str) -> str:
    d = str(device).strip().upper()
    kind = d.split(".", 1)[0]
    if kind not in DEVICE_KINDS:
        raise BackendError(
            f"unknown OpenVINO device {device!r}; use one of {', '.join(DEVICE_KINDS)} (or GPU.1 ...)"
        )
    return d


def check_device(device: str) -> str:
    """``device`` normalized, or one line saying it is absent and what is there."""
    d = normalize_device(device)
    found = available_devices()
    if d not in found and not any(f.split(".", 1)[0] == d for f in found):
        raise BackendError(
            f"OpenVINO finds no {d} device here (available: {', '.join(found) or 'none'}); "
            "use --ov-device CPU, or install the device's OpenVINO driver"
        )
    return d


def cpu_has_amx_int8(cpuinfo: Union[str, Path] = "/proc/cpuinfo") -> bool:
    """True when the CPU flags (Linux ``/proc/cpuinfo``) list ``amx_int8``; False where unreadable."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:  # the first CPU's flags: stop there (the file has one block per CPU)
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return "amx_int8" in value.split()
    except OSError:
        pass
    return False


def _static_shapes_reason(model: Any) -> Optional[str]:
    """Why ``model`` (a read ov.Model) must run with static shapes on an AMX int8 CPU, or None."""
    if not any(p.get_partial_shape().is_dynamic for p in model.inputs):
        return None
    if not any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()):
        return None
    return f"an int8 graph with a dynamic input on an AMX int8 CPU ({AMX_INT8_BUG})"


def bucket(batch: int) -> int:
    """The static batch a batch of ``batch`` is padded to: the next power of two."""
    return 1 << max(0, int(batch) - 1).bit_length()


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(
        self,
        path: Union[str, Path],
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: str = "CPU",
        hint: str = "LATENCY",
        threads: Optional[int] = None,
        cache_dir: Optional[Union[str, Path]] = DEFAULT_CACHE,
        precision: Optional[str] = "f32",
        pinning: bool = False,
        static_shapes: Optional[bool] = None,
    ) -> None:
        super().__init__(Path(path).name, inputs, outputs)
        self.path = Path(path)
        self.ov_device = normalize_device(device)
        hint = str(hint).upper()
        if hint not in HINTS:
            raise BackendError(f"unknown OpenVINO performance hint {hint!r}; use one of {', '.join(HINTS)}")
        self.hint = hint
        if threads is not None and int(threads) < 1:
            raise BackendError(f"threads {threads!r}: give 1 or more")
        self.threads = threads
        if cache_dir == DEFAULT_CACHE:
            cache_dir = default_cache_dir()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.precision = precision
        self.pinning = bool(pinning)
        self.compile_seconds: Optional[float] = None
        self.loaded_from_cache: Optional[bool] = None
        self.static_shapes = static_shapes
        self.static_reason: Optional[str] = None  # set on activation when shapes are made static
        self._compiled: Any = None
        self._requests: List[Any] = []
        self._model: Any = None  # the read graph, kept to reshape per bucket (static shapes only)
        self._buckets: Dict[Tuple[Tuple[int, ...], ...], List[Any]] = {}
        self._static_parts = 1  # static shapes: the parts a THROUGHPUT call is split into
        self._out_names: List[str] = list(self.output_specs)
        self._out_dtypes = {n: np.dtype(s.dtype) for n, s in self.output_specs.items()}

    # ---- lifecycle -----------------------------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        config: Dict[str, Any] = {"PERFORMANCE_HINT": self.hint}
        if self.threads and self.ov_device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.precision and self.ov_device.startswith("CPU"):
            config["INFERENCE_PRECISION_HINT"] = self.precision
        if self.ov_device.startswith("CPU"):
            # OpenVINO pins its CPU threads to cores by default. On a machine whose cores other
            # processes also use, a pinned worker waits for its core: the tiny test graph's batch-1
            # latency measured 14.5 ms pinned vs 1.26 ms unpinned (median of 60, 2 cores, load 17;
            # ONNX Runtime 2.2 ms). Like ONNX Runtime's spinning (off here), pinning is opt-in.
            config["ENABLE_CPU_PINNING"] = self.pinning
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(
                    f"{self.cache_dir}: cannot create the OpenVINO cache folder ({exc.strerror or exc}); "
                    "give another cache_dir, or cache_dir=None to compile every time"
                ) from None
            config["CACHE_DIR"] = str(self.cache_dir)
        return config

    def _activate(self) -> None:
        ov_core = core()
        device = check_device(self.ov_device)
        self.compile_seconds, self.static_reason, self.loaded_from_cache = 0.0, None, None
        # The graph is read first only where static shapes may be needed: forced, or a CPU with AMX
        # int8 (then they are, for an int8 graph with a dynamic input: openvino#37577).
        if self.static_shapes or (
            self.static_shapes is None and device.startswith("CPU") and cpu_has_amx_int8()
        ):
            model = self._read(ov_core)
            reason = "asked for" if self.static_shapes else _static_shapes_reason(model)
            if reason is not None:
                self._check_io(model)
                self._model, self.static_reason = model, reason
                # Bucket 1 compiles now, as the dynamic graph would: a graph that does not compile
                # fails here, and THROUGHPUT learns how many requests (parts) a call is split into
                # before the first call. Other buckets compile on first use (_requests_for).
                first = [(1, *t.shape[1:]) for t in self.input_specs.values()]
                if all(isinstance(d, int) for shape in first for d in shape):
                    self._static_parts = len(self._bucket(tuple(first)))  # type: ignore[arg-type]
                return
        # A path (not a read Model) lets OpenVINO load a cached blob without reading the ONNX.
        compiled = self._compile(ov_core, str(self.path))
        self._check_io(compiled)
        self._compiled = compiled
        self._requests = self._make_requests(compiled)

    def _read(self, ov_core: Any) -> Any:
        try:
            return ov_core.read_model(str(self.path))
        except Exception as exc:
            raise BackendError(  # the same line as a failed compile: reading is its first step
                f"{self.path}: OpenVINO cannot compile it for {self.ov_device} ({ov_reason(exc)}); "
                "re-export the folder"
            ) from None

    def _compile(self, ov_core: Any, model: Any) -> Any:
        start = time.perf_counter()
        try:
            compiled = ov_core.compile_model(model, self.ov_device, self._config())
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line message
            raise BackendError(
                f"{self.path}: OpenVINO cannot compile it for {self.ov_device} ({ov_reason(exc)}); "
                "re-export the folder"
            ) from None
        self.compile_seconds = (self.compile_seconds or 0.0) + time.perf_counter() - start
        try:  # static shapes: True only when every bucket so far came from the cache
            cached = bool(compiled.get_property("LOADED_FROM_CACHE"))
        except Exception:  # devices without the property
            cached = None
        first = not self._buckets
        self.loaded_from_cache = (
            cached if first or cached is None else bool(self.loaded_from_cache and cached)
        )
        return compiled

    def _make_requests(self, compiled: Any) -> List[Any]:
        n = 1
        if self.hint == "THROUGHPUT":
            try:
                n = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            except Exception:
                n = 1
        return [compiled.create_infer_request() for _ in range(n)]

    def _requests_for(self, arrays: Dict[str, np.ndarray]) -> Tuple[List[Any], Dict[str, np.ndarray]]:
        """The infer requests that run ``arrays``, and ``arrays`` as they are fed to them (static
        shapes: padded to the bucket, whose compiled model is made on first use)."""
        if self._model is None:
            return self._requests, arrays
        size = bucket(next(iter(arrays.values())).shape[0])
        arrays = {k: pad_rows(v, size) for k, v in arrays.items()}
        return self._bucket(tuple(tuple(arrays[name].shape) for name in self.input_specs)), arrays

    def _bucket(self, key: Tuple[Tuple[int, ...], ...]) -> List[Any]:
        """The requests of the graph compiled for the input shapes ``key`` (compiled on first use)."""
        requests = self._buckets.get(key)
        if requests is None:
            model = self._model.clone()
            model.reshape({name: list(shape) for name, shape in zip(self.input_specs, key)})
            requests = self._buckets[key] = self._make_requests(self._compile(core(), model))
        return requests

    def _check_io(self, compiled: Any) -> None:
        """The compiled graph's inputs and outputs must be the manifest's (base.check_graph_io)."""
        for kind, ports, specs in (
            ("input", compiled.inputs, self.input_specs),
            ("output", compiled.outputs, self.output_specs),
        ):
            by_name = {name: port for port in ports for name in port.get_names()}  # every alias
            graph = {name: _port_type(port) if name in specs else None for name, port in by_name.items()}
            check_graph_io(self.path, kind, graph, specs, [p.get_any_name() for p in ports])

    def _deactivate(self) -> None:
        self._requests = []
        self._buckets = {}
        self._static_parts = 1
        self._compiled = None
        self._model = None

    # ---- running -------------------------------------------------------------------------------
    def _infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        arrays = {name: np.ascontiguousarray(feed[name]) for name in self.input_specs}
        batch = next(iter(arrays.values())).shape[0]
        # THROUGHPUT: one slice of the batch per infer request, all started before any is awaited.
        parts = max(1, min(len(self._requests) if self._model is None else self._static_parts, batch))
        if self.fixed_batch is not None:
            parts = 1
        bounds = np.linspace(0, batch, parts + 1).astype(int)
        try:
            jobs, taken = [], {}  # (request, fed arrays, rows to keep); requests taken per bucket
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                chunk = arrays if parts == 1 else {k: v[lo:hi] for k, v in arrays.items()}
                requests, fed = self._requests_for(chunk)
                i = taken[id(requests)] = taken.get(id(requests), -1) + 1
                if i == len(requests):  # a bucket whose compiled model offered fewer requests
                    requests.append(requests[0].get_compiled_model().create_infer_request())
                jobs.append((requests[i], fed, hi - lo))
            if len(jobs) == 1:
                request, fed, rows = jobs[0]
                request.infer(fed, share_inputs=True)
                return self._collect(request, rows)
            for request, fed, _ in jobs:
                request.start_async(fed, share_inputs=True)
            for request, _, _ in jobs:
                request.wait()
            outs = [self._collect(request, rows) for request, _, rows in jobs]
            return {name: np.concatenate([o[name] for o in outs]) for name in self._out_names}
        except BackendError:
            raise
        except Exception as exc:  # a graph that compiles but cannot run these inputs
            raise BackendError(
                f"{self.path}: OpenVINO cannot run it ({ov_reason(exc)}); re-export the folder"
            ) from None

    def _collect(self, request: Any, rows: int) -> Dict[str, np.ndarray]:
        # The request's output memory is reused by its next run: copy (astype copies). Static
        # shapes: the padded rows are dropped.
        return {
            name: request.get_tensor(name).data[:rows].astype(self._out_dtypes[name], copy=True)
            for name in self._out_names
        }

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(
            ov_device=self.ov_device,
            hint=self.hint,
            pinning=self.pinning,
            requests=len(self._requests) or None,
            static_shapes=self.static_reason,
            buckets=sorted(k[0][0] for k in self._buckets) if self._model is not None else None,
            threads=self.threads or os.cpu_count(),
            cache_dir=str(self.cache_dir) if self.cache_dir else None,
            compile_seconds=self.compile_seconds,
            loaded_from_cache=self.loaded_from_cache,
        )
        return d


def _port_type(port: Any) -> Tuple[str, List[Optional[int]]]:
    """(dtype name, dims with None where dynamic) of a compiled model's port."""
    dims = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    return str(port.get_element_type().to_dtype()), dims


def ov_reason(exc: BaseException) -> str:
    """OpenVINO's message on one line (it spans many, with source locations), kept short."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # Drop OpenVINO's "Exception from src/...cpp:123:" location lines; keep what they say.
    kept = [ln for ln in lines if not (ln.startswith("Exception from ") and ln.endswith(":"))]
    text = " ".join(kept or lines) or type(exc).__name__
    return text if len(text) <= 600 else f"{text[:160]} … {text[-420:]}"
