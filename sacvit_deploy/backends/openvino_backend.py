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
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from sacvit_deploy.backends.base import BackendError, Runner, check_graph_io
from sacvit_deploy.core.extras import install_hint
from sacvit_deploy.core.manifest import TensorSpec

HINTS = ("LATENCY", "THROUGHPUT")
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
        self._compiled: Any = None
        self._requests: List[Any] = []
        self._queue: Any = None
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
        start = time.perf_counter()
        try:
            # A path (not a read Model) lets OpenVINO load a cached blob without reading the ONNX.
            compiled = ov_core.compile_model(str(self.path), device, self._config())
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line message
            raise BackendError(
                f"{self.path}: OpenVINO cannot compile it for {device} ({ov_reason(exc)}); re-export the folder"
            ) from None
        self.compile_seconds = time.perf_counter() - start
        try:
            self.loaded_from_cache = bool(compiled.get_property("LOADED_FROM_CACHE"))
        except Exception:  # devices without the property
            self.loaded_from_cache = None
        self._check_io(compiled)
        self._compiled = compiled
        n = 1
        if self.hint == "THROUGHPUT":
            try:
                n = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            except Exception:
                n = 1
        self._requests = [compiled.create_infer_request() for _ in range(n)]

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
        self._compiled = None

    # ---- running -------------------------------------------------------------------------------
    def _infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        arrays = {name: np.ascontiguousarray(feed[name]) for name in self.input_specs}
        batch = next(iter(arrays.values())).shape[0]
        parts = min(len(self._requests), batch) if self.fixed_batch is None else 1
        try:
            if parts <= 1:
                return self._run(self._requests[0], arrays)
            # THROUGHPUT: one slice of the batch per infer request, all started before any is awaited.
            bounds = np.linspace(0, batch, parts + 1).astype(int)
            started = []
            for req, lo, hi in zip(self._requests, bounds[:-1], bounds[1:]):
                req.start_async({k: v[lo:hi] for k, v in arrays.items()}, share_inputs=True)
                started.append(req)
            for req in started:
                req.wait()
            outs = [self._collect(req) for req in started]
            return {name: np.concatenate([o[name] for o in outs]) for name in self._out_names}
        except BackendError:
            raise
        except Exception as exc:  # a graph that compiles but cannot run these inputs
            raise BackendError(
                f"{self.path}: OpenVINO cannot run it ({ov_reason(exc)}); re-export the folder"
            ) from None

    def _run(self, request: Any, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        request.infer(arrays, share_inputs=True)
        return self._collect(request)

    def _collect(self, request: Any) -> Dict[str, np.ndarray]:
        # The request's output memory is reused by its next run: copy (astype copies).
        return {
            name: request.get_tensor(name).data.astype(self._out_dtypes[name], copy=True)
            for name in self._out_names
        }

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(
            ov_device=self.ov_device,
            hint=self.hint,
            pinning=self.pinning,
            requests=len(self._requests) or None,
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
