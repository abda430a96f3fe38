"""The ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

ONNX Runtime silently falls back to the CPU when a GPU provider's libraries are missing, so after
creating the session we compare ``get_providers()`` with what was asked and fail clearly.

Takes and returns numpy arrays. With a GPU provider ONNX Runtime copies inputs to the device and
outputs back inside ``run`` (the outputs are host arrays; only the TensorRT backend keeps them on the
device). A device array in the feed is brought to the host first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from sacvit_deploy.backends.arrays import to_host
from sacvit_deploy.backends.base import BackendError, Runner, check_graph_io
from sacvit_deploy.core.extras import missing_module_message
from sacvit_deploy.core.manifest import TensorSpec

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendError(
            missing_module_message("onnxruntime", exc, "ONNX Runtime")
            + " ('[gpu]' for the CUDA/TensorRT providers)"
        ) from None
    return ort


def available_providers() -> List[str]:
    try:
        return list(import_onnxruntime().get_available_providers())
    except BackendError:
        return []


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
}


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self,
        path: Union[str, Path],
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        provider: str = "cpu",
        threads: Optional[int] = None,
        fp16: bool = False,
        cache_dir: Optional[Union[str, Path]] = None,
        device_id: int = 0,
        spinning: bool = False,
    ) -> None:
        super().__init__(Path(path).name, inputs, outputs)
        if provider not in PROVIDERS:
            raise BackendError(
                f"unknown ONNX Runtime provider {provider!r}; use one of {', '.join(PROVIDERS)}"
            )
        self.path = Path(path)
        self.provider = provider
        self.threads = threads
        self.fp16 = fp16
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.device_id = device_id
        self.spinning = spinning
        self._session: Any = None

    @property
    def device(self) -> str:
        return "cpu" if self.provider == "cpu" else f"cuda:{self.device_id}"

    def _provider_list(self) -> List[Any]:
        names = PROVIDERS[self.provider]
        out: List[Any] = []
        for name in names:
            if name == "TensorrtExecutionProvider":
                opts: Dict[str, Any] = {"device_id": self.device_id, "trt_fp16_enable": self.fp16}
                if self.cache_dir:
                    self.cache_dir.mkdir(parents=True, exist_ok=True)
                    opts.update(
                        trt_engine_cache_enable=True,
                        trt_engine_cache_path=str(self.cache_dir),
                        trt_timing_cache_enable=True,
                        trt_timing_cache_path=str(self.cache_dir),
                    )
                out.append((name, opts))
            elif name == "CUDAExecutionProvider":
                out.append((name, {"device_id": self.device_id}))
            else:
                out.append(name)
        return out

    def _activate(self) -> None:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if not self.spinning:
            # ORT's intra-op workers busy-wait after every run by default. The pipeline alternates
            # two sessions (stage 1, stage 2), each with its own pool, so the idle session's spinning
            # workers take the cores the running one needs: `sacvit-deploy profile` measured the
            # pipeline 34-39% slower with spinning (DeiT-S, CPU, batch 1 and 8), a lone session the same.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        wanted = PROVIDERS[self.provider][0]
        if wanted not in ort.get_available_providers():
            raise BackendError(
                f"{self.name}: ONNX Runtime has no {wanted} here (available: {', '.join(ort.get_available_providers())}); "
                f"install onnxruntime-gpu with matching CUDA/TensorRT libraries, or use --device cpu"
            )
        try:
            session = ort.InferenceSession(str(self.path), sess_options=opts, providers=self._provider_list())
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise BackendError(
                f"{self.path}: ONNX Runtime cannot load it ({ort_reason(exc)}); re-export the folder"
            ) from None
        active = session.get_providers()
        if wanted not in active:
            raise BackendError(
                f"{self.name}: asked for {wanted} but ONNX Runtime fell back to {', '.join(active)}; "
                "check the CUDA / TensorRT libraries (see the ONNX Runtime requirements page), or use --device cpu"
            )
        self._check_io(session)
        self._session = session
        self._run = session.run
        self._input_names = tuple(self.input_specs)
        self._output_names = list(self.output_specs)

    def _check_io(self, session: Any) -> None:
        """The graph's real inputs and outputs must be the manifest's (base.check_graph_io)."""
        for kind, declared, specs in (
            ("input", session.get_inputs(), self.input_specs),
            ("output", session.get_outputs(), self.output_specs),
        ):
            graph = {i.name: (_ORT_TYPES.get(i.type, i.type), i.shape) for i in declared}
            check_graph_io(self.path, kind, graph, specs)

    def _infer(self, feed: Mapping[str, Any]) -> Dict[str, Any]:
        arrays = {}
        for name in self._input_names:
            a = feed[name]
            if not isinstance(a, np.ndarray):
                a = to_host(a)
            arrays[name] = a  # ORT copies non-contiguous arrays itself
        try:
            results = self._run(self._output_names, arrays)
        except Exception as exc:  # a graph that loads but cannot run these inputs
            raise BackendError(
                f"{self.path}: ONNX Runtime cannot run it ({ort_reason(exc)}); re-export the folder"
            ) from None
        return {name: results[i] for i, name in enumerate(self._output_names)}

    def _deactivate(self) -> None:
        self._session = None
        self._run = None

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["provider"] = PROVIDERS[self.provider][0]
        d["threads"] = self.threads or os.cpu_count()
        d["spinning"] = self.spinning
        return d


def ort_reason(exc: BaseException) -> str:
    """ONNX Runtime's message on one line, its reason kept: ORT puts the cause at the end of long
    messages ("Load model from X failed: ... : <reason>"), so a long one keeps its start and its end."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 600 else f"{text[:160]} … {text[-420:]}"
