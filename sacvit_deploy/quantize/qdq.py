"""One graph to QDQ format: which nodes are quantized, and the static quantization itself.

What is quantized, and why (the rule is structural, so it holds for every variant and format):

* MatMul / Gemm / Conv nodes whose second input is a weight (an initializer): the linear layers
  (qkv, attention projection, MLP, reuse MLP, patch embedding). They are about 95% of a DeiT's
  multiply-accumulates.
* Kept float: every other operator (LayerNorm, Softmax, GELU, residual adds, the exit gate's softmax
  and max), the activation x activation MatMuls of attention (q k^T, attn v: their inputs are the
  Softmax output and activations, 2-5% of the work), every node that does not lead to the logits
  (stage 1's token-score path: class attention, window sums, TopK), and the classifier head (it
  feeds the exit gate directly; 0.04% of the work). So exit decisions and target sets follow the
  float model as closely as INT8 allows.

Quantization: ``onnxruntime.quantization.quantize_static``, ``QuantFormat.QDQ``, signed int8
activations and weights, symmetric (zero point 0), weights per output channel by default, biases
left float: exactly what TensorRT's explicit quantization accepts (int8 Q/DQ, zero point 0,
per-tensor activation scales, per-channel weight scales on the output-channel axis).
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.extras import missing_module_message

# The oldest onnxruntime the floors CI job (constraints-floors.txt) quantizes with: 1.18.1's and
# 1.19.2's quantization tools fail on these graphs ("Only an existing tensor can be modified" on an
# attention Softmax). 1.17.3 quantizes (given a file), but its CPU kernels give batch-position
# dependent stage-1 results that flip near-tied token selections (docs/floors.md).
ONNXRUNTIME_FLOOR = (1, 20, 1)
QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv")
METHODS = ("minmax", "entropy", "percentile")
# Output-channel axis of each weight layout: MatMul B is (K, N) -> 1; Conv W (M, C, kh, kw) -> 0;
# Gemm B with transB=1 (what torch exports) is (N, K) -> 0.
PER_CHANNEL_AXIS = {"MatMul": 1, "Conv": 0, "Gemm": 0}

KEPT_ATTENTION = "activation x activation MatMul (attention)"
KEPT_SCORE_PATH = "not on the logits path (token scores, selection)"
KEPT_HEAD = "classifier head (feeds the exit gate)"
KEPT_OP_TYPE = "op type not in --ops"


class QuantizeError(SacvitError):
    """Quantization cannot proceed (bad option, missing onnxruntime, failed agreement)."""


@dataclass
class NodePlan:
    """Which nodes of one graph are quantized, and why the others stay float."""

    quantize: List[str] = field(default_factory=list)
    quantize_ops: Counter = field(default_factory=Counter)  # op type -> count
    kept: Dict[str, List[str]] = field(default_factory=dict)  # reason -> node names

    def summary(self) -> Dict[str, Any]:
        return {
            "quantized": dict(sorted(self.quantize_ops.items())),
            "kept_float": {reason: len(names) for reason, names in sorted(self.kept.items())},
        }


def _constants(graph: Any) -> Set[str]:
    names = {i.name for i in graph.initializer}
    names |= {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
    return names


def plan_nodes(
    model: Any, ops: Tuple[str, ...] = QUANTIZABLE_OPS, output: str = "logits", quantize_head: bool = False
) -> NodePlan:
    """Choose the nodes to quantize in ``model`` (an ``onnx.ModelProto``); see the module docstring."""
    graph = model.graph
    constants = _constants(graph)
    producer = {out: node for node in graph.node for out in node.output if out}
    names = {id(node): node.name or f"{node.op_type}#{i}" for i, node in enumerate(graph.node)}

    # Nodes the logits depend on (backwards from the output).
    on_path: Set[int] = set()
    stack = [producer[output]] if output in producer else []
    while stack:
        node = stack.pop()
        if id(node) in on_path:
            continue
        on_path.add(id(node))
        stack += [producer[i] for i in node.input if i in producer]

    def is_weight_layer(node: Any) -> bool:
        return len(node.input) > 1 and node.input[1] in constants

    candidates = [
        n for n in graph.node if n.op_type in QUANTIZABLE_OPS and is_weight_layer(n) and id(n) in on_path
    ]
    # The head: the weight layers met first walking back from the logits.
    heads: Set[int] = set()
    if not quantize_head:
        cand_ids = {id(n) for n in candidates}
        seen: Set[int] = set()
        stack = [producer[output]] if output in producer else []
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if id(node) in cand_ids:
                heads.add(id(node))
                continue
            stack += [producer[i] for i in node.input if i in producer]

    plan = NodePlan()
    for node in graph.node:
        if node.op_type not in QUANTIZABLE_OPS:
            continue
        name = names[id(node)]
        if not is_weight_layer(node):
            reason = KEPT_ATTENTION
        elif id(node) not in on_path:
            reason = KEPT_SCORE_PATH
        elif id(node) in heads:
            reason = KEPT_HEAD
        elif node.op_type not in ops:
            reason = KEPT_OP_TYPE
        else:
            plan.quantize.append(name)
            plan.quantize_ops[node.op_type] += 1
            continue
        plan.kept.setdefault(reason, []).append(name)
    return plan


def _name_nodes(model: Any) -> None:
    """ORT's quantizer selects nodes by name: give unnamed nodes the names :func:`plan_nodes` uses."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}#{i}"


def even_batch(n: int, batch: int) -> int:
    """The largest batch size <= ``batch`` that splits ``n`` samples into equal batches.

    The histogram calibrators (entropy, percentile) of onnxruntime.quantization stack every batch's
    activations with ``np.asarray(list_of_batches)``, which fails on a short last batch ("an
    inhomogeneous shape"); equal batches keep every sample, once (no padding, no duplicate).
    """
    batch = max(1, min(batch, n))
    while n % batch:
        batch -= 1
    return batch


def feed_batches(feeds: Dict[str, np.ndarray], batch: int, fixed: bool) -> Iterator[Dict[str, np.ndarray]]:
    """Calibration feeds in batches of ``batch``; a fixed-batch graph gets its last batch padded."""
    n = next(iter(feeds.values())).shape[0]
    for start in range(0, n, batch):
        part = {k: v[start : start + batch] for k, v in feeds.items()}
        rows = next(iter(part.values())).shape[0]
        if fixed and rows < batch:
            pad = np.arange(batch - rows) % rows
            part = {k: np.concatenate([v, v[pad]]) for k, v in part.items()}
        yield {k: np.ascontiguousarray(v) for k, v in part.items()}


def quantize_graph(
    src: Path,
    dst: Path,
    feeds: Dict[str, np.ndarray],
    plan: NodePlan,
    per_channel: bool = True,
    method: str = "minmax",
    batch: int = 8,
    fixed_batch: Optional[int] = None,
) -> None:
    """Static QDQ quantization of the graph ``src`` into ``dst``, calibrated on ``feeds``."""
    import onnx

    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as exc:
        raise QuantizeError(missing_module_message("onnxruntime", exc, "quantize")) from None
    if method not in METHODS:
        raise QuantizeError(f"--method {method}: use one of {', '.join(METHODS)}")
    problem = onnxruntime_problem(_installed_onnxruntime())
    if problem is not None:
        raise QuantizeError(problem)

    if fixed_batch is None and method != "minmax":
        batch = even_batch(next(iter(feeds.values())).shape[0], batch)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = feed_batches(feeds, fixed_batch or batch, fixed_batch is not None)

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            return next(self._it, None)

    model = onnx.load(str(src))
    _name_nodes(model)
    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    # The named graph goes to quantize_static as a file: onnxruntime 1.17 takes only a path, and the
    # ModelProto paths of 1.18-1.21 lose their temporary files or external data.
    with _quiet_preprocessing_advice(), tempfile.TemporaryDirectory(prefix="sacvit-qdq-") as tmp:
        named = Path(tmp) / "named.onnx"
        big = model.ByteSize() > 2**31 - 1
        onnx.save_model(model, str(named), save_as_external_data=big, location="named.onnx.data")
        del model
        quantize_static(
            str(named),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZABLE_OPS),
            nodes_to_quantize=list(plan.quantize),
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate_method,
            extra_options={
                "ActivationSymmetric": True,  # TensorRT: zero point 0
                "WeightSymmetric": True,
                "QuantizeBias": False,  # TensorRT dequantizes int8 only, not int32 biases
                "QDQOpTypePerChannelSupportToAxis": dict(PER_CHANNEL_AXIS),
                # Q/DQ on the layers' inputs only: TensorRT fuses input Q/DQ into the int8 kernel, ONNX
                # Runtime into MatMulIntegerToFloat; a Q/DQ on the output would only add rounding.
                "OpTypesToExcludeOutputQuantization": list(QUANTIZABLE_OPS),
            },
        )

    _float_inputs_for_float_nodes(dst, set(plan.quantize))


def _installed_onnxruntime() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def onnxruntime_problem(version: str) -> Optional[str]:
    """Why quantize cannot run on onnxruntime ``version`` (one line), or None."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if found is None or tuple(int(p or 0) for p in found.groups()) >= ONNXRUNTIME_FLOOR:
        return None
    floor = ".".join(map(str, ONNXRUNTIME_FLOOR))
    return (
        f"quantize needs onnxruntime>={floor}, found {version} (older quantization tools fail on these "
        f"graphs); pip install 'onnxruntime>={floor}' (or onnxruntime-gpu>={floor})"
    )


def _float_inputs_for_float_nodes(path: Path, quantized: Set[str]) -> None:
    """Give the nodes that stay float their float input back.

    The quantizer routes EVERY consumer of a quantized activation through its DequantizeLinear, also
    the ``Shape`` nodes attention reads its sizes from (``B, N, C = x.shape``). A DequantizeLinear
    with several consumers is not fused by ONNX Runtime (the qkv MatMuls then ran as float MatMuls on
    weights dequantized every run), and TensorRT too wants Q/DQ only in front of the int8 layer.
    """
    import onnx

    model = onnx.load(str(path))
    producer = {out: n for n in model.graph.node for out in n.output}
    changed = False
    for node in model.graph.node:
        if node.name in quantized:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
                changed = True
    if changed:
        onnx.save_model(model, str(path))


class _AdviceFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_preprocessing_advice() -> Iterator[None]:
    """onnxruntime.quantization logs a pre-processing hint on the root logger per graph: shape
    inference and graph optimisation before quantization, which the exported graphs do not need
    (static shapes; ONNX Runtime optimises the quantized graph when it loads it)."""
    drop = _AdviceFilter()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def qdq_summary(model: Any) -> Dict[str, Any]:
    """What a QDQ graph holds: Q/DQ counts, the ops fed by dequantized weights, per-channel or not."""
    graph = model.graph
    constants = _constants(graph)
    dq_of = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    q_count = sum(n.op_type == "QuantizeLinear" for n in graph.node)
    int8_layers: Counter = Counter()
    per_channel = 0
    for node in graph.node:
        if node.op_type not in QUANTIZABLE_OPS or len(node.input) < 2:
            continue
        weight_dq = dq_of.get(node.input[1])
        if weight_dq is None or weight_dq.input[0] not in constants:
            continue
        int8_layers[node.op_type] += 1
        scale = next((i for i in graph.initializer if i.name == weight_dq.input[1]), None)
        if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
            per_channel += 1
    return {
        "quantize_linear": q_count,
        "dequantize_linear": len(dq_of),
        "int8_layers": dict(sorted(int8_layers.items())),
        "per_channel_weights": per_channel,
        "float_ops": dict(
            sorted(
                Counter(
                    n.op_type
                    for n in graph.node
                    if n.op_type in ("LayerNormalization", "Softmax", "ReduceMax", "TopK", "ArgMax")
                ).items()
            )
        ),
    }
