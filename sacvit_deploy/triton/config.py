"""Triton model configurations (``config.pbtxt``) for the two stage models and the BLS model.

Configs are built as plain dicts shaped like Triton's ``ModelConfig`` protobuf (field names as in
``model_config.proto``) and written in protobuf text format by :func:`render_pbtxt`. Generating needs
no Triton package; :mod:`sacvit_deploy.triton.validate` parses the result with Triton's own schema
(shipped by ``tritonclient``) and compares it with the graphs.

Facts from Triton's model-configuration docs that shape these files:

* ``max_batch_size > 0``: every tensor's full shape is ``[-1] + dims``, so ``dims`` leave the batch
  axis out. A tensor that is only the batch axis (stage 1's ``confidence``, shape ``(batch,)``) is
  ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }`` (empty ``dims`` are not allowed).
* ONNX Runtime and TensorRT models use ``platform`` (``onnxruntime_onnx``, ``tensorrt_plan``) with
  ``1/model.onnx`` / ``1/model.plan``; Python models use ``backend: "python"`` and ``1/model.py``.
* Preferred batch sizes are for TensorRT engines whose profile favours one size; for other models
  Triton's batcher guide advises against them, so ONNX Runtime stages only get a queue delay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sacvit_deploy.core.manifest import ArtifactFile, TensorSpec

CONFIG_NAME = "config.pbtxt"
VERSION = "1"
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
# Stage flavours that are Python-backend models (``backend: "python"``, no platform): ``python`` runs
# the ONNX graph (``1/model.onnx``) with onnxruntime inside the Python backend (``1/model.py``).
PYTHON_STAGES = ("python",)
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.py"}
GRAPH_FILE = "model.onnx"
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
}
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
# Stage 2 sees only the hard samples of each stage-1 batch (a quarter of them on ImageNet): waiting
# a little longer lets the dynamic batcher merge the fragments of several BLS executions.
QUEUE_DELAY_US = {"bls": 100, "stage1": 100, "stage2": 500}
BLS_OUTPUTS = (("logits", "TYPE_FP32"), ("stage", "TYPE_INT32"), ("confidence", "TYPE_FP32"))
THRESHOLD_PARAMETER = "exit_threshold"
CLIENT_PARAMETER = "sacvit_client"


class Token(str):
    """An enum value, written without quotes (``KIND_GPU``, ``TYPE_FP32``)."""


@dataclass(frozen=True)
class Placement:
    """Where the stage models run: ``count`` instances of ``kind`` (on each of ``gpus``, if given)."""

    kind: str = "gpu"
    count: int = 1
    gpus: Tuple[int, ...] = ()

    def instance_group(self, kind: Optional[str] = None) -> List[Dict[str, Any]]:
        kind = kind or self.kind
        group: Dict[str, Any] = {"count": self.count, "kind": Token(KINDS[kind])}
        if self.gpus and kind == "gpu":
            group["gpus"] = list(self.gpus)
        return [group]


def tensor_dims(spec: TensorSpec) -> Tuple[List[int], bool]:
    """``dims`` without the batch axis (symbolic dims as -1), and whether a reshape to ``[]`` is needed."""
    dims = [d if isinstance(d, int) else -1 for d in spec.shape[1:]]
    return (dims, False) if dims else ([1], True)


def tensor_config(spec: TensorSpec) -> Dict[str, Any]:
    dims, reshape = tensor_dims(spec)
    entry: Dict[str, Any] = {"name": spec.name, "data_type": Token(TRITON_DTYPES[spec.dtype]), "dims": dims}
    if reshape:
        entry["reshape"] = {"shape": []}
    return entry


def preferred_batch_sizes(backend: str, max_batch: int, opt_batch: Optional[int]) -> List[int]:
    """TensorRT: the profile's opt batch and the max; none for ONNX Runtime (see the module docstring)."""
    if backend != "tensorrt":
        return []
    return sorted({b for b in (opt_batch, max_batch) if b is not None and 1 <= b <= max_batch})


def stage_config(
    name: str,
    role: str,
    entry: ArtifactFile,
    backend: str,
    max_batch: int,
    placement: Placement,
    opt_batch: Optional[int] = None,
    queue_delay_us: Optional[int] = None,
) -> Dict[str, Any]:
    batching: Dict[str, Any] = {}
    preferred = preferred_batch_sizes(backend, max_batch, opt_batch)
    if preferred:
        batching["preferred_batch_size"] = preferred
    batching["max_queue_delay_microseconds"] = (
        QUEUE_DELAY_US[role] if queue_delay_us is None else queue_delay_us
    )
    kind = {"backend": "python"} if backend in PYTHON_STAGES else {"platform": PLATFORMS[backend]}
    return {
        "name": name,
        **kind,
        "max_batch_size": max_batch,
        "input": [tensor_config(t) for t in entry.inputs],
        "output": [tensor_config(t) for t in entry.outputs],
        "instance_group": placement.instance_group(),
        "dynamic_batching": batching,
    }


def describe_stage(backend: str) -> str:
    """How a stage model runs, for log lines: ``onnxruntime_onnx``, ``tensorrt_plan``, ``python + onnxruntime``."""
    return "python + onnxruntime" if backend in PYTHON_STAGES else PLATFORMS[backend]


def bls_config(
    name: str,
    image: TensorSpec,
    num_classes: int,
    max_batch: int,
    count: int,
    threshold: float,
    stage_models: Dict[str, str],
    client_info: Dict[str, Any],
    queue_delay_us: Optional[int] = None,
) -> Dict[str, Any]:
    """The Python-backend model that runs the gate. It runs on the CPU (numpy); the stages hold the GPU."""
    outputs = []
    for out_name, dtype in BLS_OUTPUTS:
        dims = [num_classes] if out_name == "logits" else [1]
        outputs.append({"name": out_name, "data_type": Token(dtype), "dims": dims})
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch,
        "input": [tensor_config(image)],
        "output": outputs,
        "instance_group": [{"count": count, "kind": Token(KINDS["cpu"])}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": QUEUE_DELAY_US["bls"]
            if queue_delay_us is None
            else queue_delay_us
        },
        "parameters": {
            THRESHOLD_PARAMETER: format_threshold(threshold),
            "stage1_model": stage_models["stage1"],
            "stage2_model": stage_models["stage2"],
            "bls_tensors": "numpy",
            CLIENT_PARAMETER: json.dumps(client_info, separators=(",", ":"), ensure_ascii=False),
        },
    }


def format_threshold(threshold: float) -> str:
    return repr(float(threshold))


# ---- protobuf text format ------------------------------------------------------------------------------
def render_pbtxt(config: Dict[str, Any], header: Sequence[str] = ()) -> str:
    """``config`` in protobuf text format; ``parameters`` is Triton's map<string, ModelParameter>."""
    lines = [f"# {line}" for line in header]
    _render_fields(config, 0, lines)
    return "\n".join(lines) + "\n"


def _render_fields(message: Dict[str, Any], depth: int, lines: List[str]) -> None:
    pad = "  " * depth
    for key, value in message.items():
        if key == "parameters":
            for k, v in value.items():
                lines.append(f"{pad}parameters {{")
                lines.append(f"{pad}  key: {_quote(k)}")
                lines.append(f"{pad}  value {{ string_value: {_quote(str(v))} }}")
                lines.append(f"{pad}}}")
        elif isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            _render_fields(value, depth + 1, lines)
            lines.append(f"{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                lines.append(f"{pad}  {{")
                _render_fields(item, depth + 2, lines)
                lines.append(f"{pad}  }}{',' if i < len(value) - 1 else ''}")
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            items = ", ".join(_scalar(v) for v in value)
            lines.append(f"{pad}{key}: [ {items} ]" if items else f"{pad}{key}: [ ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")


def _scalar(value: Any) -> str:
    if isinstance(value, Token):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _quote(str(value))


def _quote(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'
