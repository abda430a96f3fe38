"""Pick a backend for an artifact folder and build its runners from the manifest.

One table, :data:`REGISTRY`, holds every backend: its name, the extra that installs it, its priority
for ``auto``, an availability probe and a runner factory. It drives ``--backend``'s choices (the CLI's
enum is built from it), ``auto`` selection (highest priority whose probe accepts the folder; the chosen
row's reason names what was passed over and why) and install hints. A new backend is one module and
one :func:`register_backend` call.

Today's rows: ``tensorrt`` (engines in the folder, TensorRT and a GPU here), ``onnxruntime`` (CUDA
provider when there is one, else the CPU), ``openvino`` (a CPU, or an Intel GPU/NPU, when
OpenVINO is installed and no CUDA provider answers first: it ran float graphs faster than ONNX Runtime
on a CPU, docs/openvino.md), ``torch`` (the folder's weights; the reference, last).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from sacvit_deploy.backends.errors import BackendError
from sacvit_deploy.core.extras import install_hint

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # a REGISTRY name: tensorrt | onnxruntime | openvino | torch | ...
    device: str  # cpu | cuda
    provider: Optional[str]  # ONNX Runtime provider: cpu | cuda | tensorrt; OpenVINO device: CPU | GPU | NPU
    reason: str

    def describe(self) -> str:
        what = self.backend if self.provider is None else f"{self.backend} ({self.provider} provider)"
        if self.backend == "openvino":
            what = f"openvino ({self.provider} device)"
        return f"{what} on {self.device}: {self.reason}"


def cpu_reference(reason: str) -> BackendChoice:
    """ONNX Runtime on the CPU: the reference every parity check compares against (export
    verification, check --run, quantize, build-engine), whatever ``auto`` would pick here."""
    return BackendChoice("onnxruntime", "cpu", "cpu", reason)


# A probe answers for ``auto``: a BackendChoice when the backend can run the folder here, else the
# reason it cannot (one short clause). ``select`` answers an explicit ``--backend NAME``: a choice, or a
# BackendError saying what is missing and how to get it.
if TYPE_CHECKING:
    # subscripted collections.abc.Callable fails at run time on Python 3.8
    from typing import Callable

    from sacvit_deploy.backends.base import Runner  # numpy: not needed to pick a backend
    from sacvit_deploy.core.manifest import Manifest  # annotations only: --help never loads it

    Probe = Callable[[Manifest, Union[str, None]], Union[BackendChoice, str]]
    Select = Callable[[Manifest, Union[str, None], Union[str, None]], BackendChoice]
    Factory = Callable[..., Runner]  # (folder, manifest, role, choice, **options) -> Runner


@dataclass(frozen=True)
class BackendSpec:
    name: str
    factory: Factory
    probe: Probe
    select: Select
    priority: int  # auto tries higher first
    extra: str  # the extra that installs it (core/extras.install_hint spells the command)
    module: str  # the top-level module whose presence means "installed"
    summary: str = ""  # one clause for --help

    def install_hint(self) -> str:
        return install_hint(self.extra)

    def installed(self) -> bool:
        return has_module(self.module)


REGISTRY: Dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add (or replace) a row of the backend table."""
    if spec.name == "auto" or not spec.name.isidentifier():
        raise ValueError(f"bad backend name {spec.name!r}")
    REGISTRY[spec.name] = spec
    return spec


def unregister_backend(name: str) -> None:
    REGISTRY.pop(name, None)


def backend_names(auto: bool = True) -> Tuple[str, ...]:
    """Backend names for ``--backend``: ``auto`` first, then by priority."""
    names = tuple(s.name for s in sorted(REGISTRY.values(), key=lambda s: -s.priority))
    return ("auto", *names) if auto else names


def auto_order_help() -> str:
    """``auto``'s order in words, for --help."""
    rows = sorted(REGISTRY.values(), key=lambda s: -s.priority)
    return "auto: " + ", then ".join(s.summary or s.name for s in rows) + "."


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken parent package, or sys.modules[name] = None
        return False


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA GPUs the driver sees (libcuda through ctypes: no torch, no CUDA Python package needed)."""
    name = ctypes.util.find_library("cuda")
    if not name:
        return 0
    try:
        lib = ctypes.CDLL(name)
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    except (OSError, AttributeError):
        return 0


def choose_backend(
    manifest: Manifest, backend: str = "auto", device: Optional[str] = None, provider: Optional[str] = None
) -> BackendChoice:
    if backend != "auto" and backend not in REGISTRY:
        raise BackendError(f"unknown backend {backend!r}; use one of {', '.join(backend_names())}")
    if device not in (None, *DEVICES):
        raise BackendError(f"unknown device {device!r}; use cpu or cuda")
    if backend != "auto":
        return REGISTRY[backend].select(manifest, device, provider)
    passed: List[str] = []
    for spec in sorted(REGISTRY.values(), key=lambda s: -s.priority):
        got = spec.probe(manifest, device)
        if isinstance(got, BackendChoice):
            if passed:
                got = BackendChoice(
                    got.backend, got.device, got.provider, f"{got.reason} (passed over: {'; '.join(passed)})"
                )
            return got
        passed.append(f"{spec.name}: {got}")
    if not manifest.graphs and not manifest.engines:
        raise BackendError("the folder has neither graphs nor engines; re-run `sacvit-deploy export`")
    raise BackendError("no backend can run this folder here: " + "; ".join(passed))


def _openvino_choice(
    manifest: Manifest, device: Optional[str], ov_device: Optional[str], reason: str
) -> BackendChoice:
    from sacvit_deploy.backends.openvino_backend import check_device, import_openvino

    if not manifest.graphs:
        raise BackendError(
            "--backend openvino needs ONNX graphs: use the export folder (--artifacts export/)"
        )
    if device == "cuda":
        raise BackendError(
            "OpenVINO does not run on CUDA GPUs; use --device cpu (or --ov-device GPU for an Intel GPU)"
        )
    import_openvino()
    return BackendChoice("openvino", "cpu", check_device(ov_device or "CPU"), reason)


def make_runner(folder: Path, manifest: Manifest, role: str, choice: BackendChoice, **options: Any) -> Runner:
    """One runner for one graph role (stage1, stage2, baseline), files checked against the manifest."""
    spec = REGISTRY.get(choice.backend)
    if spec is None:
        raise BackendError(f"unknown backend {choice.backend!r}")
    return spec.factory(Path(folder), manifest, role, choice, **options)


def _entry(entries: dict, role: str, folder: Path, what: str) -> Any:
    if role not in entries:
        hint = " (export with --baseline)" if role == "baseline" else ""
        raise BackendError(f"{folder}: no {role} {what} in the manifest{hint}")
    return entries[role]


def _checked_graph(folder: Path, manifest: Manifest, role: str) -> Tuple[Path, Any]:
    """An ONNX graph's path and manifest entry, its hash and external data checked before any
    runtime opens it (every backend that reads the ONNX files)."""
    from sacvit_deploy.core.onnx_files import external_data_files

    entry = _entry(manifest.graphs, role, folder, "ONNX graph")
    manifest.verify(folder, "graphs", roles=(role,))
    path = manifest.file_path(folder, entry)
    external_data_files(path)
    return path, entry


# ---- tensorrt --------------------------------------------------------------------------------------
def _trt_select(manifest: Manifest, device: Optional[str], provider: Optional[str]) -> BackendChoice:
    if not manifest.engines:
        raise BackendError(
            "--backend tensorrt needs engines: run `sacvit-deploy build-engine` and use --artifacts engines/"
        )
    if device == "cpu":
        raise BackendError("TensorRT runs on the GPU only; use --device cuda or another backend")
    return BackendChoice("tensorrt", "cuda", None, "asked for")


def _trt_probe(manifest: Manifest, device: Optional[str]) -> Union[BackendChoice, str]:
    if not manifest.engines:
        return "no engines in the folder"
    if device == "cpu":
        return "--device cpu"
    if not has_module("tensorrt"):
        return f"TensorRT is not installed ({REGISTRY['tensorrt'].install_hint()})"
    if not cuda_device_count():
        return "no CUDA GPU visible"
    return BackendChoice("tensorrt", "cuda", None, "engines in the folder, TensorRT and a GPU present")


def _trt_factory(
    folder: Path, manifest: Manifest, role: str, choice: BackendChoice, **options: Any
) -> Runner:
    from sacvit_deploy.backends.tensorrt_backend import TensorRTRunner

    entry = _entry(manifest.engines, role, folder, "TensorRT engine")
    manifest.verify(folder, "engines", roles=(role,))
    return TensorRTRunner(
        manifest.file_path(folder, entry),
        entry,
        manifest.tensorrt.to_dict() if manifest.tensorrt else {},
        **options,
    )


# ---- onnxruntime -----------------------------------------------------------------------------------
def _ort_providers() -> List[str]:
    from sacvit_deploy.backends.onnxruntime_backend import available_providers

    return available_providers()


def _ort_select(manifest: Manifest, device: Optional[str], provider: Optional[str]) -> BackendChoice:
    if not manifest.graphs:
        raise BackendError(
            "--backend onnxruntime needs ONNX graphs: use the export folder (--artifacts export/)"
        )
    prov = provider or ("cuda" if device == "cuda" else "cpu")
    return BackendChoice("onnxruntime", "cpu" if prov == "cpu" else "cuda", prov, "asked for")


def _ort_probe(manifest: Manifest, device: Optional[str]) -> Union[BackendChoice, str]:
    if not manifest.graphs:
        return "no ONNX graphs in the folder"
    providers = _ort_providers()
    if not providers:
        return f"onnxruntime is not installed ({install_hint('cpu', 'gpu')})"
    if device != "cpu" and "CUDAExecutionProvider" in providers:
        return BackendChoice("onnxruntime", "cuda", "cuda", "ONNX Runtime has the CUDA provider")
    if device == "cuda":
        return f"--device cuda: ONNX Runtime has no CUDA provider here ({install_hint('gpu')})"
    return BackendChoice("onnxruntime", "cpu", "cpu", "no GPU backend available")


def _ort_factory(
    folder: Path, manifest: Manifest, role: str, choice: BackendChoice, **options: Any
) -> Runner:
    from sacvit_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner

    path, entry = _checked_graph(folder, manifest, role)
    return OnnxRuntimeRunner(
        path,
        entry.inputs,
        entry.outputs,
        provider=choice.provider or "cpu",
        threads=options.get("threads"),
        fp16=bool(options.get("fp16", False)),
        cache_dir=options.get("cache_dir"),
        spinning=bool(options.get("spinning", False)),
    )


# ---- openvino --------------------------------------------------------------------------------------
OPENVINO_REASON = (
    "OpenVINO is installed; on a CPU it ran float graphs faster than ONNX Runtime (docs/openvino.md)"
)


def _ov_select(manifest: Manifest, device: Optional[str], provider: Optional[str]) -> BackendChoice:
    return _openvino_choice(manifest, device, provider, "asked for")


def _ov_probe(manifest: Manifest, device: Optional[str]) -> Union[BackendChoice, str]:
    if not manifest.graphs:
        return "no ONNX graphs in the folder"
    if device == "cuda":
        return "--device cuda (OpenVINO runs on CPUs and Intel GPUs/NPUs)"
    if not has_module("openvino"):
        return f"OpenVINO is not installed ({install_hint('openvino')})"
    if device is None and has_module("onnxruntime") and "CUDAExecutionProvider" in _ort_providers():
        return "ONNX Runtime has the CUDA provider (a CUDA GPU first)"
    try:
        return _openvino_choice(manifest, device, None, OPENVINO_REASON)
    except BackendError as exc:
        return str(exc)


def _ov_factory(folder: Path, manifest: Manifest, role: str, choice: BackendChoice, **options: Any) -> Runner:
    from sacvit_deploy.backends.openvino_backend import DEFAULT_CACHE, OpenVinoRunner

    path, entry = _checked_graph(folder, manifest, role)
    return OpenVinoRunner(
        path,
        entry.inputs,
        entry.outputs,
        device=choice.provider or "CPU",
        hint=options.get("hint") or "LATENCY",
        threads=options.get("threads"),
        cache_dir=options.get("ov_cache", DEFAULT_CACHE),
        pinning=bool(options.get("pinning", False)),
        static_shapes=options.get("ov_static_shapes"),  # None: on an AMX int8 CPU for int8 graphs
    )


# ---- torch -----------------------------------------------------------------------------------------
def _torch_device(device: Optional[str]) -> str:
    if device:
        return device
    if not cuda_device_count():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_select(manifest: Manifest, device: Optional[str], provider: Optional[str]) -> BackendChoice:
    if manifest.weights is None:
        raise BackendError(
            "--backend torch needs model.safetensors in the folder: re-export without --no-weights"
        )
    if not has_module("torch"):
        raise BackendError(
            f"--backend torch needs PyTorch, which is not installed: {REGISTRY['torch'].install_hint()}"
        )
    return BackendChoice("torch", _torch_device(device), None, "asked for")


def _torch_probe(manifest: Manifest, device: Optional[str]) -> Union[BackendChoice, str]:
    if manifest.weights is None:
        return "no model.safetensors in the folder"
    if not has_module("torch"):
        return f"PyTorch is not installed ({REGISTRY['torch'].install_hint()})"
    if device == "cuda" and not cuda_device_count():
        return "--device cuda: no CUDA GPU visible"
    return BackendChoice("torch", _torch_device(device), None, "the folder's PyTorch weights")


def _torch_factory(
    folder: Path, manifest: Manifest, role: str, choice: BackendChoice, **options: Any
) -> Runner:
    import torch

    from sacvit_deploy.backends.torch_backend import TorchRunner
    from sacvit_deploy.core.graph_io import graph_specs
    from sacvit_deploy.model.graphs import graph_module

    model = _torch_model(folder, manifest)
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))  # process-wide: torch has no per-module setting
    inputs, outputs = graph_specs(manifest.model, role)
    return TorchRunner(f"{role} (torch)", graph_module(model, role), inputs, outputs, device=choice.device)


_MODEL_CACHE: Dict[Tuple[str, str], Any] = {}


def _torch_model(folder: Path, manifest: Manifest) -> Any:
    from sacvit_deploy.model.checkpoint import load_checkpoint

    assert manifest.weights is not None
    manifest.verify(folder, "weights")
    key = (str(folder.resolve()), manifest.weights.sha256)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_checkpoint(manifest.file_path(folder, manifest.weights), "sacvit").model
    return _MODEL_CACHE[key]


register_backend(
    BackendSpec(
        "tensorrt",
        _trt_factory,
        _trt_probe,
        _trt_select,
        30,
        "tensorrt",
        "tensorrt",
        "TensorRT engines on the GPU",
    )
)
register_backend(
    BackendSpec(
        "onnxruntime",
        _ort_factory,
        _ort_probe,
        _ort_select,
        20,
        "cpu",
        "onnxruntime",
        "ONNX Runtime (GPU, then CPU)",
    )
)
register_backend(
    BackendSpec(
        "torch", _torch_factory, _torch_probe, _torch_select, 10, "torch", "torch", "the PyTorch weights"
    )
)
register_backend(
    BackendSpec(
        "openvino",
        _ov_factory,
        _ov_probe,
        _ov_select,
        25,  # above ONNX Runtime on a CPU; its probe gives way to ONNX Runtime's CUDA provider
        "openvino",
        "openvino",
        "OpenVINO on a CPU when installed (after ONNX Runtime's CUDA provider)",
    )
)
