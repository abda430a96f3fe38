"""FP16 as an ONNX rewrite, for strongly typed TensorRT (11.x, where the FP16 builder flag is gone).

TensorRT 11 builds every network strongly typed: each tensor's type is the one the graph says. So
FP16 has to be in the ONNX graph itself. :func:`convert_to_fp16` rewrites a float32 graph:

* float initializers become float16 (values beyond float16's range are clipped to +-65504);
* every node computes in float16, except the **FP32 islands** (:func:`fp32_islands`):

  - ``LayerNormalization`` and the decomposed LayerNorm pattern (ReduceMean, Sub, Mul, ReduceMean,
    Add eps, Sqrt, Div, then the affine Mul/Add) that ``--target-trt 8.5`` exports: a ViT's residual
    stream overflows float16 in the variance;
  - ``Softmax``;
  - the exit gate: the nodes computing ``confidence`` from ``logits`` (Softmax, ReduceMax);
  - the token-score path: the nodes computing ``target_index`` that the logits do not need (the
    class-attention row, its head mean and running average, the window sums, ArgMax, TopK);

* a ``Cast`` is inserted wherever a float tensor crosses an island boundary;
* graph inputs and outputs keep their float32 type (a Cast at each end), so the runtime contract
  (``image`` float32 in, ``logits`` float32 out) does not change; integer tensors are untouched.

The same islands decide the TensorRT <= 10 path, where the graph stays float32 and the builder's
``FP16`` flag plus per-layer precision constraints keep the islands in float32 (see ``build.py``).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Optional, Set, Tuple

FP16_MAX = 65504.0
# Ops that always compute in float32.
FP32_OPS = frozenset({"LayerNormalization", "Softmax", "LogSoftmax"})
# Inputs that the ONNX spec types as float32 whatever the data type (Resize's roi and scales).
FP32_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})
# Ops whose float output type is fixed by an attribute that this rewrite does not retype.
_ATTRIBUTE_TYPED = frozenset(
    {"EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}
)
# Graph outputs whose producing path is an island: the exit gate and the token selection.
GATE_OUTPUT = "confidence"
SCORE_OUTPUT = "target_index"
LOGITS_OUTPUT = "logits"


class Fp16ConversionError(Exception):
    """The graph has something this rewrite does not handle (a bug or an unexpected graph: not a user error)."""


@dataclass(frozen=True)
class Fp32Islands:
    """The nodes (by index in ``graph.node``) that stay float32, and why, plus their float outputs."""

    nodes: Dict[int, str]  # node index -> reason: layernorm | softmax | gate | token-score | fixed-type
    tensors: FrozenSet[str]  # names of the float tensors the island nodes produce

    def counts(self) -> Dict[str, int]:
        out: Dict[str, int] = defaultdict(int)
        for reason in self.nodes.values():
            out[reason] += 1
        return dict(sorted(out.items()))


@dataclass
class Fp16Conversion:
    model: Any  # onnx.ModelProto
    islands: Fp32Islands
    fp16_nodes: int = 0
    casts: int = 0
    initializers: int = 0  # float initializers stored as float16
    clipped: int = 0  # initializer values clipped to the float16 range
    notes: List[str] = field(default_factory=list)

    def summary(self) -> Dict[str, Any]:
        return {
            "fp16_nodes": self.fp16_nodes,
            "fp32_nodes": len(self.islands.nodes),
            "fp32_islands": self.islands.counts(),
            "casts": self.casts,
            "fp16_initializers": self.initializers,
            "clipped_values": self.clipped,
        }


# ---- analysis -----------------------------------------------------------------------------------------
def _producers(graph: Any) -> Dict[str, int]:
    return {out: i for i, node in enumerate(graph.node) for out in node.output if out}


def _consumers(graph: Any) -> Dict[str, List[int]]:
    users: Dict[str, List[int]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        for name in dict.fromkeys(node.input):  # a node using a tensor twice (x * x) counts once
            if name:
                users[name].append(i)
    return users


def _ancestors(graph: Any, producers: Dict[str, int], output: str) -> Set[int]:
    seen: Set[int] = set()
    stack = [producers[output]] if output in producers else []
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(producers[name] for name in graph.node[i].input if name in producers)
    return seen


def _constant_tensors(graph: Any) -> Set[str]:
    """Initializers and everything computed from initializers alone (e.g. the exporter's Identity copies)."""
    constants = {t.name for t in graph.initializer}
    for node in graph.node:  # nodes are topologically sorted
        if all(not name or name in constants for name in node.input):
            constants.update(out for out in node.output if out)
    return constants


def decomposed_layernorms(graph: Any) -> Set[int]:
    """Node indices of LayerNorms written out as ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div(/Mul/Add)."""
    nodes = graph.node
    users = _consumers(graph)
    constants = _constant_tensors(graph)

    def only_user(name: str, op: str) -> Optional[int]:
        found = [i for i in users.get(name, []) if nodes[i].op_type == op]
        return found[0] if len(found) == 1 else None

    found: Set[int] = set()
    for i, mean in enumerate(nodes):
        if mean.op_type != "ReduceMean" or not mean.input:
            continue
        x = mean.input[0]
        subs = [j for j in users.get(mean.output[0], []) if nodes[j].op_type == "Sub"]
        for s in subs:
            if list(nodes[s].input) != [x, mean.output[0]]:
                continue
            centered = nodes[s].output[0]
            square = [
                j
                for j in users.get(centered, [])
                if (nodes[j].op_type == "Mul" and list(nodes[j].input) == [centered, centered])
                or (nodes[j].op_type == "Pow" and nodes[j].input[0] == centered)
            ]
            divide = [
                j
                for j in users.get(centered, [])
                if nodes[j].op_type == "Div" and nodes[j].input[0] == centered
            ]
            if len(square) != 1 or len(divide) != 1:
                continue
            var = only_user(nodes[square[0]].output[0], "ReduceMean")
            add = only_user(nodes[var].output[0], "Add") if var is not None else None
            sqrt = only_user(nodes[add].output[0], "Sqrt") if add is not None else None
            if sqrt is None or nodes[divide[0]].input[1] != nodes[sqrt].output[0]:
                continue
            members = [i, s, square[0], var, add, sqrt, divide[0]]
            # The affine part: * weight + bias, both constants.
            scale = only_user(nodes[divide[0]].output[0], "Mul")
            if scale is not None and set(nodes[scale].input) & constants:
                members.append(scale)
                shift = only_user(nodes[scale].output[0], "Add")
                if shift is not None and set(nodes[shift].input) & constants:
                    members.append(shift)
            found.update(m for m in members if m is not None)
    return found


def fp32_islands(model: Any) -> Fp32Islands:
    """What must stay float32 in this graph (see the module docstring)."""
    graph = model.graph
    producers = _producers(graph)
    outputs = {o.name for o in graph.output}
    reasons: Dict[int, str] = {}
    for i in decomposed_layernorms(graph):
        reasons[i] = "layernorm"
    for i, node in enumerate(graph.node):
        if node.op_type == "LayerNormalization":
            reasons[i] = "layernorm"
        elif node.op_type in FP32_OPS:
            reasons.setdefault(i, "softmax")
        elif node.op_type in _ATTRIBUTE_TYPED:
            reasons.setdefault(i, "fixed-type")
    if LOGITS_OUTPUT in outputs:
        to_logits = _ancestors(graph, producers, LOGITS_OUTPUT)
        for name, reason in ((GATE_OUTPUT, "gate"), (SCORE_OUTPUT, "token-score")):
            if name in outputs:
                for i in _ancestors(graph, producers, name) - to_logits:
                    if reasons.get(i) in (None, "softmax"):
                        reasons[i] = reason
    types = _tensor_types(model)
    import onnx

    tensors = frozenset(
        out
        for i in reasons
        for out in graph.node[i].output
        if out and types.get(out) == onnx.TensorProto.FLOAT
    )
    return Fp32Islands(dict(sorted(reasons.items())), tensors)


def _tensor_types(model: Any) -> Dict[str, int]:
    """Element type of every tensor, from ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return types


# ---- the rewrite --------------------------------------------------------------------------------------
def convert_to_fp16(model: Any) -> Fp16Conversion:
    """A float16 copy of ``model`` with the FP32 islands kept, graph inputs/outputs float32.

    Raises :class:`Fp16ConversionError` for graphs with subgraphs (If/Loop) or tensors whose type
    shape inference cannot tell. The result passes ``onnx.checker`` (full check).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise Fp16ConversionError(f"node {node.name or node.op_type} has a subgraph; not supported")
    types = _tensor_types(model)
    islands = fp32_islands(model)
    float32, float16 = TensorProto.FLOAT, TensorProto.FLOAT16
    result = Fp16Conversion(model, islands)

    for node in graph.node:
        for out in node.output:
            if out and out not in types:
                raise Fp16ConversionError(
                    f"cannot tell the type of {out!r} (output of {node.name or node.op_type})"
                )

    def region(i: int) -> int:
        return float32 if i in islands.nodes else float16

    # 1. The type each float tensor will have: a node's float outputs take the node's region.
    new_type: Dict[str, int] = {}
    for v in graph.input:
        if types.get(v.name) == float32:
            new_type[v.name] = float32
    for i, node in enumerate(graph.node):
        for out in node.output:
            if out and types.get(out) == float32:
                new_type[out] = region(i)

    # 2. Graph outputs computed in float16: the producer writes "<name>__fp16", a Cast restores float32.
    output_casts = []
    for v in graph.output:
        if new_type.get(v.name) != float16:
            continue
        renamed = f"{v.name}__fp16"
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name == v.name:
                    node.input[k] = renamed
            for k, name in enumerate(node.output):
                if name == v.name:
                    node.output[k] = renamed
        new_type[renamed] = float16
        new_type[v.name] = float32
        output_casts.append(
            helper.make_node("Cast", [renamed], [v.name], name=f"{v.name}__to_fp32", to=float32)
        )

    # 3. Initializers: float16 unless some consumer needs float32 (then a float16 copy for the others).
    wants: Dict[str, Set[int]] = defaultdict(set)
    for i, node in enumerate(graph.node):
        for k, name in enumerate(node.input):
            if name and types.get(name) == float32:
                wants[name].add(_wanted(node, k, region(i)))
    fp16_copy: Dict[str, str] = {}
    new_inits = []
    for init in graph.initializer:
        if init.data_type != float32 or init.name not in wants:
            continue
        if wants[init.name] == {float16}:
            converted, clipped = _to_fp16(numpy_helper.to_array(init), np)
            init.CopyFrom(numpy_helper.from_array(converted, init.name))
            new_type[init.name] = float16
        else:
            new_type[init.name] = float32
            if float16 in wants[init.name]:
                converted, clipped = _to_fp16(numpy_helper.to_array(init), np)
                fp16_copy[init.name] = f"{init.name}__fp16"
                new_inits.append(numpy_helper.from_array(converted, fp16_copy[init.name]))
            else:
                clipped = 0
        result.initializers += 1 if float16 in wants[init.name] else 0
        result.clipped += clipped
    graph.initializer.extend(new_inits)

    # 4. Nodes: retype the attribute-typed ones, and cast every float input to the node's region.
    new_nodes = []
    cast_of: Dict[Tuple[str, int], str] = {}
    for i, node in enumerate(graph.node):
        here = region(i)
        if here == float16:
            result.fp16_nodes += 1
            _retype_attributes(node, np, helper, numpy_helper, float32, float16)
        for k, name in enumerate(node.input):
            if not name or name not in new_type:
                continue
            want = _wanted(node, k, here)
            have = new_type[name]
            if have == want:
                continue
            if want == float16 and name in fp16_copy:
                node.input[k] = fp16_copy[name]
                continue
            key = (name, want)
            if key not in cast_of:
                suffix = "fp16" if want == float16 else "fp32"
                cast_of[key] = f"{name}__to_{suffix}"
                new_nodes.append(helper.make_node("Cast", [name], [cast_of[key]], name=cast_of[key], to=want))
                result.casts += 1
            node.input[k] = cast_of[key]
        new_nodes.append(node)
    new_nodes.extend(output_casts)
    result.casts += len(output_casts)
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]  # stale types; the checker re-infers them

    helper.set_model_props(
        model, {**{p.key: p.value for p in model.metadata_props}, "sacvit_deploy.precision": "fp16"}
    )
    onnx.checker.check_model(model, full_check=True)
    return result


def _wanted(node: Any, index: int, region: int) -> int:
    from onnx import TensorProto

    if (node.op_type, index) in FP32_INPUTS:
        return TensorProto.FLOAT
    return region


def _to_fp16(array: Any, np: Any) -> Tuple[Any, int]:
    finite = np.isfinite(array)
    over = int(np.count_nonzero(finite & (np.abs(array) > FP16_MAX)))
    clipped = np.where(finite, np.clip(array, -FP16_MAX, FP16_MAX), array)
    return clipped.astype(np.float16), over


def _retype_attributes(
    node: Any, np: Any, helper: Any, numpy_helper: Any, float32: int, float16: int
) -> None:
    """Float32-typed attributes of a node that now computes in float16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == float32:
            attr.i = float16
        elif (
            node.op_type in ("Constant", "ConstantOfShape")
            and attr.name == "value"
            and attr.t.data_type == float32
        ):
            converted, _ = _to_fp16(numpy_helper.to_array(attr.t), np)
            attr.t.CopyFrom(numpy_helper.from_array(converted, attr.t.name))
