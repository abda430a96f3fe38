"""Pick a backend for an artifact folder and build its runners from the manifest.

``auto`` prefers TensorRT engines (when the folder has them and TensorRT + a GPU are present), then
ONNX Runtime on the GPU, then OpenVINO on the CPU when installed (faster there for float graphs: docs/openvino.md),
then ONNX Runtime on the CPU, then the PyTorch weights; it says why.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sacvit_deploy.backends.base import BackendError, Runner
from sacvit_deploy.core.manifest import Manifest

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino", "torch")


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # tensorrt | onnxruntime | openvino | torch
    device: str  # cpu | cuda
    provider: str | None  # ONNX Runtime provider: cpu | cuda | tensorrt; OpenVINO device: CPU | GPU | NPU
    reason: str

    def describe(self) -> str:
        what = self.backend if self.provider is None else f"{self.backend} ({self.provider} provider)"
        if self.backend == "openvino":
            what = f"openvino ({self.provider} device)"
        return f"{what} on {self.device}: {self.reason}"


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _ort_providers() -> list[str]:
    from sacvit_deploy.backends.onnxruntime_backend import available_providers

    return available_providers()


def choose_backend(
    manifest: Manifest, backend: str = "auto", device: str | None = None, provider: str | None = None
) -> BackendChoice:
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if device not in (None, "cpu", "cuda"):
        raise BackendError(f"unknown device {device!r}; use cpu or cuda")
    if backend == "tensorrt":
        if not manifest.engines:
            raise BackendError(
                "--backend tensorrt needs engines: run `sacvit-deploy build-engine` and use --artifacts engines/"
            )
        if device == "cpu":
            raise BackendError("TensorRT runs on the GPU only; use --device cuda or another backend")
        return BackendChoice("tensorrt", "cuda", None, "asked for")
    if backend == "onnxruntime":
        if not manifest.graphs:
            raise BackendError(
                "--backend onnxruntime needs ONNX graphs: use the export folder (--artifacts export/)"
            )
        prov = provider or ("cuda" if device == "cuda" else "cpu")
        return BackendChoice("onnxruntime", "cpu" if prov == "cpu" else "cuda", prov, "asked for")
    if backend == "openvino":
        return _openvino_choice(manifest, device, provider, "asked for")
    if backend == "torch":
        if manifest.weights is None:
            raise BackendError(
                "--backend torch needs model.safetensors in the folder: re-export without --no-weights"
            )
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return BackendChoice("torch", dev, None, "asked for")

    # auto
    gpu_ok = device != "cpu"
    if manifest.engines and gpu_ok and _has_module("tensorrt") and torch.cuda.is_available():
        return BackendChoice("tensorrt", "cuda", None, "engines in the folder, TensorRT and a GPU present")
    if manifest.graphs:
        providers = _ort_providers()
        if not providers:
            if manifest.weights is not None:
                dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
                return BackendChoice("torch", dev, None, "onnxruntime is not installed")
            raise BackendError("onnxruntime is not installed; pip install 'sacvit-deploy[cpu]' (or '[gpu]')")
        if gpu_ok and "CUDAExecutionProvider" in providers:
            return BackendChoice("onnxruntime", "cuda", "cuda", "ONNX Runtime has the CUDA provider")
        if device != "cuda" and _has_module("openvino"):
            return _openvino_choice(
                manifest,
                device,
                provider,
                "OpenVINO is installed; on a CPU it ran float graphs faster than ONNX Runtime (docs/openvino.md)",
            )
        if device == "cuda":
            raise BackendError(
                "--device cuda: ONNX Runtime has no CUDA provider here (pip install 'sacvit-deploy[gpu]'); use --device cpu"
            )
        return BackendChoice("onnxruntime", "cpu", "cpu", "no GPU backend available")
    if manifest.engines:
        raise BackendError("this folder holds TensorRT engines, but TensorRT or a CUDA GPU is missing here")
    raise BackendError("the folder has neither graphs nor engines; re-run `sacvit-deploy export`")


def _openvino_choice(
    manifest: Manifest, device: str | None, ov_device: str | None, reason: str
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
    folder = Path(folder)
    if choice.backend == "onnxruntime":
        from sacvit_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner
        from sacvit_deploy.core.onnx_files import external_data_files

        entry = _entry(manifest.graphs, role, folder, "ONNX graph")
        manifest.verify(folder, "graphs", roles=(role,))
        external_data_files(manifest.file_path(folder, entry))
        return OnnxRuntimeRunner(
            manifest.file_path(folder, entry),
            entry.inputs,
            entry.outputs,
            provider=choice.provider or "cpu",
            threads=options.get("threads"),
            fp16=bool(options.get("fp16", False)),
            cache_dir=options.get("cache_dir"),
            spinning=bool(options.get("spinning", False)),
        )
    if choice.backend == "openvino":
        from sacvit_deploy.backends.openvino_backend import DEFAULT_CACHE, OpenVinoRunner
        from sacvit_deploy.core.onnx_files import external_data_files

        entry = _entry(manifest.graphs, role, folder, "ONNX graph")
        manifest.verify(folder, "graphs", roles=(role,))
        external_data_files(manifest.file_path(folder, entry))
        return OpenVinoRunner(
            manifest.file_path(folder, entry),
            entry.inputs,
            entry.outputs,
            device=choice.provider or "CPU",
            hint=options.get("hint") or "LATENCY",
            threads=options.get("threads"),
            cache_dir=options.get("ov_cache", DEFAULT_CACHE),
            pinning=bool(options.get("pinning", False)),
        )
    if choice.backend == "torch":
        from sacvit_deploy.backends.torch_backend import TorchRunner
        from sacvit_deploy.model.graphs import graph_module, graph_specs

        model = _torch_model(folder, manifest)
        if options.get("threads"):
            torch.set_num_threads(int(options["threads"]))  # process-wide: torch has no per-module setting
        inputs, outputs = graph_specs(manifest.model, role)
        return TorchRunner(
            f"{role} (torch)", graph_module(model, role), inputs, outputs, device=choice.device
        )
    if choice.backend == "tensorrt":
        from sacvit_deploy.backends.tensorrt_backend import TensorRTRunner

        entry = _entry(manifest.engines, role, folder, "TensorRT engine")
        manifest.verify(folder, "engines", roles=(role,))
        return TensorRTRunner(
            manifest.file_path(folder, entry),
            entry,
            manifest.tensorrt.to_dict() if manifest.tensorrt else {},
            **options,
        )
    raise BackendError(f"unknown backend {choice.backend!r}")


def _entry(entries: dict, role: str, folder: Path, what: str) -> Any:
    if role not in entries:
        hint = " (export with --baseline)" if role == "baseline" else ""
        raise BackendError(f"{folder}: no {role} {what} in the manifest{hint}")
    return entries[role]


_MODEL_CACHE: dict[tuple[str, str], Any] = {}


def _torch_model(folder: Path, manifest: Manifest) -> Any:
    from sacvit_deploy.model.checkpoint import load_checkpoint

    assert manifest.weights is not None
    manifest.verify(folder, "weights")
    key = (str(folder.resolve()), manifest.weights.sha256)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_checkpoint(manifest.file_path(folder, manifest.weights), "sacvit").model
    return _MODEL_CACHE[key]
