"""Static TensorRT ONNX-parser compatibility check ("lint") for exported graphs.

Answers "will this graph parse and build on TensorRT X?" without TensorRT, from the tables in
:mod:`sacvit_deploy.export.trt_support`. Severities: ``error`` = the parser or builder rejects the
graph (or, for Scatter reductions on 8.x, silently computes something else); ``warning`` = it parses
but is risky (precision casts, data-dependent shapes, operators with reports of wrong results).

The check is conservative and static: it sees constants, dtypes and (after ONNX shape inference)
ranks, not run-time values. A clean report is necessary, not sufficient: every engine build still
ends with a parity check against ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from sacvit_deploy.core.manifest import ArtifactError, Manifest
from sacvit_deploy.core.onnx_files import external_data_files
from sacvit_deploy.export import trt_support as ts

ERROR = "error"
WARNING = "warning"
_DEFAULT_DOMAINS = ("", "ai.onnx")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
# A shape-like constant: at most TensorRT's 8 dimensions' worth of elements (Dims::MAX_DIMS). Bigger
# INT64 constants are data (index tables) that 8.x casts down element by element.
_SHAPE_CONSTANT_MAX = 8
_DTYPE_NAME = {v: k for k, v in TensorProto.DataType.items()}
# Integer types whose every value INT32 holds: casting them to INT64 loses nothing on 8.x.
_FITS_INT32 = {
    TensorProto.INT64,  # a no-op cast
    TensorProto.INT32,
    TensorProto.INT16,
    TensorProto.INT8,
    TensorProto.UINT16,
    TensorProto.UINT8,
    TensorProto.BOOL,
}


@dataclass(frozen=True)
class Problem:
    """One finding: what is wrong where, and the concrete fix."""

    severity: str  # "error" (will not parse / build) or "warning" (parses, but risky)
    rule: str  # stable id, e.g. "topk-dynamic-k"
    node: str  # node name ("" for graph-level findings: opset, graph inputs, initializers)
    op: str  # op type ("" for graph-level findings)
    message: str
    fix: str

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def to_dict(self) -> Dict[str, str]:
        return asdict(self)

    def line(self, graph: str) -> str:
        """``stage1.onnx: error [rule] node 'X' (Op): message — fix: ...``"""
        where = f" node '{self.node}' ({self.op})" if self.node or self.op else ""
        return f"{graph}: {self.severity} [{self.rule}]{where}: {self.message} — fix: {self.fix}"


@dataclass(frozen=True)
class ProblemGroup:
    """The same finding on several nodes (e.g. every LayerNormalization): reported once, counted."""

    first: Problem
    nodes: Tuple[str, ...]

    @property
    def is_error(self) -> bool:
        return self.first.is_error

    def line(self, graph: str) -> str:
        """``stage1.onnx: error [rule] 25 nodes (Op), e.g. 'X': message — fix: ...``"""
        if len(self.nodes) <= 1:
            return self.first.line(graph)
        p = self.first
        where = f" {len(self.nodes)} nodes ({p.op}), e.g. '{self.nodes[0]}'"
        return f"{graph}: {p.severity} [{p.rule}]{where}: {p.message} — fix: {p.fix}"


def group_problems(problems: List[Problem]) -> List[ProblemGroup]:
    """One group per distinct finding (same severity, rule, op, message and fix), in first-seen order."""
    groups: Dict[Tuple[str, str, str, str, str], List[Problem]] = {}
    for p in problems:
        groups.setdefault((p.severity, p.rule, p.op, p.message, p.fix), []).append(p)
    return [ProblemGroup(ps[0], tuple(p.node for p in ps)) for ps in groups.values()]


# ---- loading -------------------------------------------------------------------------------------
def load_graph(path: Union[str, Path]) -> onnx.ModelProto:
    """Read an ONNX file (without its external weights: the check needs structure, not values)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; re-export it with `sacvit-deploy export`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types for a damaged file
        raise ArtifactError(
            f"{path}: not a readable ONNX graph ({type(exc).__name__}); re-export it with `sacvit-deploy export`"
        ) from None
    # Protobuf parses many byte strings (the empty one included) as an empty message.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise ArtifactError(
            f"{path}: not an ONNX graph (no nodes or IR version); re-export it with `sacvit-deploy export`"
        )
    return model


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference for dtypes and ranks; a graph it cannot handle is checked without them."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:  # inference is a bonus: unknown ops, >2 GB protos, odd exporters
        return model


# ---- what the checks know about tensors ------------------------------------------------------------
@dataclass
class _Tensor:
    dtype: Optional[int] = None  # TensorProto element type
    rank: Optional[int] = None
    static: bool = False  # every dim known
    const: bool = False  # an initializer or a Constant node output (the parser's "weights")
    numel: Optional[int] = None  # for constants
    values: Optional[np.ndarray] = None  # for small constants
    dims: Optional[Tuple[int, ...]] = None  # for initializers (per-channel scale counts)


def _from_type(tp: onnx.TypeProto) -> _Tensor:
    if not tp.HasField("tensor_type"):
        return _Tensor()
    tt = tp.tensor_type
    t = _Tensor(dtype=tt.elem_type or None)
    if tt.HasField("shape"):
        t.rank = len(tt.shape.dim)
        t.static = all(d.HasField("dim_value") for d in tt.shape.dim)
        if t.static:
            t.numel = int(np.prod([d.dim_value for d in tt.shape.dim]))
    return t


def _from_tensor(tensor: TensorProto) -> _Tensor:
    numel = int(np.prod(tensor.dims)) if tensor.dims else 1
    values = None
    # External weights are not loaded; small constants (K, axes) are never external.
    if numel <= 4096 and tensor.data_location != TensorProto.EXTERNAL:
        try:
            values = numpy_helper.to_array(tensor)
        except Exception:  # malformed payload: the value is simply unknown
            values = None
    return _Tensor(tensor.data_type, len(tensor.dims), True, True, numel, values, tuple(tensor.dims))


def _constant_node_tensor(node: onnx.NodeProto) -> _Tensor:
    for a in node.attribute:
        if a.name == "value":
            return _from_tensor(a.t)
        if a.name == "value_int":
            return _Tensor(TensorProto.INT64, 0, True, True, 1, np.array(a.i, dtype=np.int64))
        if a.name == "value_ints":
            v = np.array(list(a.ints), dtype=np.int64)
            return _Tensor(TensorProto.INT64, 1, True, True, v.size, v)
        if a.name == "value_float":
            return _Tensor(TensorProto.FLOAT, 0, True, True, 1, np.array(a.f, dtype=np.float32))
        if a.name == "value_floats":
            v = np.array(list(a.floats), dtype=np.float32)
            return _Tensor(TensorProto.FLOAT, 1, True, True, v.size, v)
    return _Tensor(const=True)  # sparse / string values: constant, contents unknown


class _Scope:
    """Tensor facts visible in one graph; a subgraph sees its own and its parents' names."""

    def __init__(self, graph: onnx.GraphProto, parent: Optional[_Scope] = None) -> None:
        self.parent = parent
        self.tensors: Dict[str, _Tensor] = {}
        for v in [*graph.input, *graph.value_info, *graph.output]:
            self.tensors[v.name] = _from_type(v.type)
        for init in graph.initializer:
            self.tensors[init.name] = _from_tensor(init)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.output:
                known = self.tensors.get(node.output[0])
                t = _constant_node_tensor(node)
                if t.dtype is None and known is not None:
                    t.dtype = known.dtype
                self.tensors[node.output[0]] = t

    def get(self, name: str) -> _Tensor:
        scope: Optional[_Scope] = self
        while scope is not None:
            if name in scope.tensors:
                return scope.tensors[name]
            scope = scope.parent
        return _Tensor()


def _shape_like(t: _Tensor) -> bool:
    """A scalar or a few elements: shapes, axes, K. Bigger INT64 tensors are data."""
    return t.rank == 0 or (t.numel is not None and t.numel <= _SHAPE_CONSTANT_MAX)


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _dtype_name(dtype: Optional[int]) -> str:
    return _DTYPE_NAME.get(dtype or 0, "UNDEFINED")


# ---- the checker ---------------------------------------------------------------------------------
class _Checker:
    def __init__(self, model: onnx.ModelProto, sup: ts.ParserSupport) -> None:
        self.model = model
        self.sup = sup
        self.v = sup.version
        self.label = sup.label
        self.problems: List[Problem] = []
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
        self._dtype_seen: Set[str] = set()  # a tensor is reported once, as I/O or as a node output

    def add(self, severity: str, rule: str, node: str, op: str, message: str, fix: str) -> None:
        self.problems.append(Problem(severity, rule, node, op, message, fix))

    # -- graph level -------------------------------------------------------------------------------
    def run(self) -> List[Problem]:
        self.check_opset()
        graph = self.model.graph
        scope = _Scope(graph)
        initializers = {i.name for i in graph.initializer}
        for kind, values in (("input", graph.input), ("output", graph.output)):
            for v in values:
                if kind == "input" and v.name in initializers:
                    continue  # an initializer listed as an input (old IR): a weight, not a binding
                self.check_io(kind, v.name, scope.get(v.name))
        self.check_graph(graph, scope, prefix="")
        return self.problems

    def check_opset(self) -> None:
        sup = self.sup
        if self.opset is None:
            self.add(
                ERROR, "opset", "", "", "the model imports no default ONNX opset",
                "re-export the graph with `sacvit-deploy export` (opset 17)",
            )  # fmt: skip
        elif not sup.min_opset <= self.opset <= sup.max_opset:
            self.add(
                ERROR, "opset", "", "",
                f"model opset {self.opset} is outside {self.label}'s range {sup.min_opset}-{sup.max_opset}",
                f"re-export with an opset in {sup.min_opset}-{sup.max_opset} (`sacvit-deploy export` writes 17)",
            )  # fmt: skip

    def check_io(self, kind: str, name: str, t: _Tensor) -> None:
        if t.dtype == TensorProto.INT64 and not self.sup.native_int64:
            self.add(
                WARNING, "int64-io", "", "",
                f"graph {kind} '{name}' is INT64; {self.label} casts it to INT32, so the engine's "
                f"binding is int32, not the int64 ONNX Runtime uses",
                "re-export with `sacvit-deploy export`, whose graphs take and return int32 indices",
            )  # fmt: skip
        self.check_dtype(name, t, "", "", f"graph {kind}")

    def check_dtype(self, name: str, t: _Tensor, node: str, op: str, what: str) -> None:
        """DOUBLE (down-cast) and BF16/FP8 (8.x cannot hold them) on any tensor."""
        if name in self._dtype_seen:
            return
        if t.dtype == TensorProto.DOUBLE:
            self._dtype_seen.add(name)
            self.add(
                WARNING, "double", node, op,
                f"{what} '{name}' is DOUBLE; TensorRT casts it to FLOAT, clamping to +-FLT_MAX",
                "keep the model in float32 (no `.double()`, no float64 numpy constants) before export",
            )  # fmt: skip
        elif _dtype_name(t.dtype) in ts.BF16_FP8_TYPES and not self.sup.bfloat16:
            self._dtype_seen.add(name)
            self.add(
                ERROR, "unsupported-dtype", node, op,
                f"{what} '{name}' is {_dtype_name(t.dtype)}, which {self.label} cannot represent",
                "export in float32 / float16 (BF16 and FP8 need TensorRT 9.0+: use --trt 10)",
            )  # fmt: skip

    def check_int64_constant(self, name: str, t: _Tensor, node: str, op: str, what: str) -> None:
        if t.dtype != TensorProto.INT64 or self.sup.native_int64:
            return
        if _shape_like(t):
            return  # a shape / axes / index scalar: the cast is what every 8.x graph relies on
        fits = "unknown"
        if t.values is not None:
            fits = "yes" if t.values.size == 0 or (
                t.values.min() >= _INT32_MIN and t.values.max() <= _INT32_MAX
            ) else "no"  # fmt: skip
        detail = {
            "yes": "its values fit, so the cast is lossless but costs a conversion at build time",
            "no": "some values do not fit and are CLAMPED, so results change",
            "unknown": "values outside INT32 would be clamped",
        }[fits]
        self.add(
            WARNING, "int64-initializer", node, op,
            f"{what} '{name}' is an INT64 tensor of {t.numel} elements; {self.label} casts it to INT32: {detail}",
            "none needed (the cast is lossless); re-exporting with `sacvit-deploy export` stores the "
            "table as int32" if fits == "yes" else
            "re-export with `sacvit-deploy export`, whose graphs keep index tables in int32",
        )  # fmt: skip

    # -- nodes -------------------------------------------------------------------------------------
    def check_graph(self, graph: onnx.GraphProto, scope: _Scope, prefix: str) -> None:
        for init in graph.initializer:
            t = scope.get(init.name)
            self.check_dtype(init.name, t, "", "", "initializer")
            self.check_int64_constant(init.name, t, "", "", "initializer")
        for i, node in enumerate(graph.node):
            name = prefix + (node.name or f"{node.op_type}#{i}")
            self.check_node(node, name, scope)
            for a in node.attribute:  # If / Loop / Scan bodies
                subgraphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
                for sub in subgraphs:
                    self.check_graph(sub, _Scope(sub, scope), prefix=f"{name}/{a.name}/")

    def check_node(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        op = node.op_type
        key = (node.domain, op)
        if key in self.functions:
            self.check_function(node, name, scope)
            return
        if node.domain not in _DEFAULT_DOMAINS:
            self.add(
                ERROR, "custom-op", name, op,
                f"'{node.domain}::{op}' is not a standard ONNX operator; {self.label} imports it only "
                "through a TensorRT plugin of that name",
                "export without custom / contrib operators (no ONNX Runtime graph optimisation before "
                "TensorRT), or register a TensorRT plugin for it",
            )  # fmt: skip
            return
        for out in node.output:
            if out:
                self.check_dtype(out, scope.get(out), name, op, "output")
        if op not in self.sup.ops:
            self.unsupported(node, name)
        if op in ts.DATA_DEPENDENT_OPS:
            self.data_dependent(node, name)
        check = getattr(self, f"op_{op}", None)
        if check is not None:
            check(node, name, scope)
        for (cop, idx), versions in ts.CONSTANT_INPUTS.items():
            if cop == op and self.v in versions:
                self.need_constant(node, name, scope, idx)

    def check_function(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        func = self.functions[(node.domain, node.op_type)]
        if not self.sup.local_functions:
            self.add(
                ERROR, "local-function", name, node.op_type,
                f"'{node.op_type}' calls an ONNX model-local function; {self.label} cannot import local "
                "functions (9.0+ can)",
                "inline the functions before export (onnx.inliner.inline_local_functions) or re-export "
                "with the legacy exporter (dynamo=False)",
            )  # fmt: skip
            return
        fscope = _Scope(onnx.GraphProto(), scope)  # function bodies carry no types: names only
        for i, inner in enumerate(func.node):
            self.check_node(inner, f"{name}/{inner.name or f'{inner.op_type}#{i}'}", fscope)

    def unsupported(self, node: onnx.NodeProto, name: str) -> None:
        op = node.op_type
        if op == "LayerNormalization" and self.v == "8.5":
            self.add(
                ERROR, "layernorm", name, op,
                "LayerNormalization (opset 17) is not supported by the TensorRT 8.5 parser",
                "re-export with `sacvit-deploy export --target-trt 8.5` (decomposed LayerNorm)",
            )  # fmt: skip
            return
        first = ts.FIRST_SUPPORTED.get(op)
        since = f" (supported from TensorRT {first})" if first else ""
        if op == "Attention":
            fix = (
                "export the explicit attention path (set_fused_attn(model, False), opset <= 22), "
                "or target TensorRT 10.14+ (--trt 11)"
            )
        elif first:
            fix = f"target TensorRT {first}+ or rewrite the operation with operators {self.label} supports"
        else:
            fix = f"rewrite the operation with operators {self.label} supports, or add a TensorRT plugin"
        self.add(
            ERROR, "unsupported-op", name, op, f"{op} is not supported by the {self.label} parser{since}", fix
        )

    def need_constant(self, node: onnx.NodeProto, name: str, scope: _Scope, idx: int) -> None:
        inp = _input(node, idx)
        if inp and not scope.get(inp).const:
            what = {1: "second", 3: "fourth"}.get(idx, f"input {idx}")
            self.add(
                ERROR, "const-input", name, node.op_type,
                f"{node.op_type}'s {what} input ('{inp}') is computed at run time; {self.label} needs "
                "it as an initializer or a Constant",
                "make it a Python constant in the model, or constant-fold the graph "
                "(polygraphy surgeon sanitize --fold-constants)",
            )  # fmt: skip

    # -- operator rules ------------------------------------------------------------------------------
    def op_TopK(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        if self.opset is not None and self.opset < 10:
            k_value: Optional[int] = _attr(node, "k")
            k_const = True
        else:
            k = scope.get(_input(node, 1))
            k_const = k.const
            k_value = int(k.values.reshape(-1)[0]) if k.values is not None and k.values.size == 1 else None
        if not k_const and not self.sup.dynamic_topk_k:
            self.add(
                ERROR, "topk-dynamic-k", name, "TopK",
                f"K ('{_input(node, 1)}') is computed at run time; {self.label} needs K as an "
                "initializer or a Constant (dynamic K from 8.6)",
                "make K a Python int in the model (not derived from a tensor's shape), or "
                "constant-fold the graph (polygraphy surgeon sanitize --fold-constants)",
            )  # fmt: skip
        if k_value is not None and k_value >= ts.TOPK_MAX_K:
            self.add(
                ERROR, "topk-k-limit", name, "TopK",
                f"K = {k_value}, but TensorRT's TopK needs K < {ts.TOPK_MAX_K}",
                f"select fewer than {ts.TOPK_MAX_K} elements, or sort with a smaller TopK per chunk",
            )  # fmt: skip
        if _attr(node, "sorted", 1) == 0:
            self.add(
                WARNING, "topk-unsorted", name, "TopK",
                "sorted=0; TensorRT documents only sorted=1 and always returns sorted results",
                "export TopK with sorted=True so every backend returns the same order",
            )  # fmt: skip

    def data_dependent(self, node: onnx.NodeProto, name: str) -> None:
        if self.v == "8.5":
            severity, why = ERROR, "8.5 GA fails to build layers that reshape it (NVIDIA/TensorRT#2497)"
        else:
            severity, why = WARNING, "the runtime needs an output allocator, and engines get slower"
        self.add(
            severity, "data-dependent-shape", name, node.op_type,
            f"{node.op_type} has a data-dependent output shape; {why}",
            "use fixed-size selections (TopK with a constant K, masks with Where) instead of "
            "NonZero / boolean indexing",
        )  # fmt: skip

    def _scatter(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        op = node.op_type
        reduction = _attr(node, "reduction")
        if reduction is None:
            return
        fix = "compute the reduction without Scatter (one-hot MatMul / Where), or scatter with overwrite"
        if reduction != "none":
            if self.v in ts.V8:
                self.add(
                    ERROR, "scatter-reduction", name, op,
                    f"reduction='{reduction}' is IGNORED by {self.label} (it overwrites): silently wrong results",
                    fix,
                )  # fmt: skip
            elif op == "ScatterElements" and self.v in ts.SCATTER_ELEMENTS_REDUCTION_PLUGIN:
                self.add(
                    WARNING, "scatter-reduction", name, op,
                    f"reduction='{reduction}' parses on {self.label} only through the ScatterElements "
                    "plugin (TensorRT's plugin library must be loaded)",
                    fix + "; or load the plugins (trt.init_libnvinfer_plugins) before parsing",
                )  # fmt: skip
            else:
                self.add(
                    ERROR, "scatter-reduction", name, op,
                    f"reduction='{reduction}' is not supported by the {self.label} parser", fix,
                )  # fmt: skip
        elif op == "ScatterND" and self.v in ts.SCATTERND_REJECTS_REDUCTION_ATTR:
            self.add(
                ERROR, "scatter-reduction", name, op,
                f"the {self.label} ScatterND importer rejects any 'reduction' attribute, even 'none' "
                "(fixed in 10.9)",
                "drop the attribute (export with opset <= 15, or strip reduction='none' from the node)",
            )  # fmt: skip

    op_ScatterND = _scatter
    op_ScatterElements = _scatter

    def op_GridSample(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        self.add(
            WARNING, "gridsample", name, "GridSample",
            "GridSample parses, but users report silently wrong TensorRT results",
            "avoid GridSample (use Resize / Gather), or compare the engine with ONNX Runtime on real images",
        )  # fmt: skip

    def op_LayerNormalization(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        if any(node.output[1:]):
            self.add(
                ERROR, "layernorm-outputs", name, "LayerNormalization",
                "only LayerNormalization's first output (Y) is supported; Mean / InvStdDev are used",
                "do not export the statistics outputs (use nn.LayerNorm / F.layer_norm)",
            )  # fmt: skip

    def op_If(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        # TensorRT's If needs then/else outputs of equal rank (the IIfConditional contract; the newest
        # operator docs relax it only for conditions TensorRT itself folds, which is not knowable
        # here). The ONNX parser imports just one branch when the condition is an initializer or a
        # Constant, so only other conditions are checked.
        if scope.get(_input(node, 0)).const:
            return
        branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
        if len(branches) != 2:
            return
        then_g, else_g = branches["then_branch"], branches["else_branch"]
        then_s, else_s = _Scope(then_g, scope), _Scope(else_g, scope)
        for i, (t_out, e_out) in enumerate(zip(then_g.output, else_g.output)):
            rt, re_ = then_s.get(t_out.name).rank, else_s.get(e_out.name).rank
            if rt is not None and re_ is not None and rt != re_:
                self.add(
                    ERROR, "if-branch-rank", name, "If",
                    f"output {i} has rank {rt} in then_branch and {re_} in else_branch; TensorRT's "
                    "If-conditional needs equal ranks (the condition is not a constant)",
                    "avoid data-dependent squeeze in the model (index with [:, 0] or reshape instead of "
                    ".squeeze(dim)), or constant-fold the graph so the If disappears",
                )  # fmt: skip
                return

    def op_Squeeze(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        has_axes = bool(_input(node, 1)) if (self.opset or 0) >= 13 else _attr(node, "axes") is not None
        if has_axes or self.v not in ts.SQUEEZE_NEEDS_AXES:
            return
        t = scope.get(_input(node, 0))
        if not t.static:
            self.add(
                ERROR, "const-input", name, "Squeeze",
                "Squeeze without axes on a tensor with dynamic (or unknown) dims: TensorRT cannot "
                "tell which dims to drop (supported only from 11.5)",
                "give the dims explicitly (`.squeeze(dim)` / indexing) before export",
            )  # fmt: skip

    def op_Resize(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        bad = []
        mode = _attr(node, "mode", "nearest")
        coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
        if mode not in ts.RESIZE_MODES:
            bad.append(f"mode='{mode}'")
        if coord not in ts.RESIZE_COORD_MODES:
            bad.append(f"coordinate_transformation_mode='{coord}'")
        if _attr(node, "antialias", 0):
            bad.append("antialias=1")
        if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            bad.append(f"keep_aspect_ratio_policy='{_attr(node, 'keep_aspect_ratio_policy')}'")
        if bad:
            self.add(
                ERROR, "resize-mode", name, "Resize",
                f"{', '.join(bad)} is not supported by the {self.label} parser",
                "interpolate with mode nearest / bilinear / bicubic, antialias=False, and "
                "align_corners / half_pixel coordinates",
            )  # fmt: skip

    def op_Einsum(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        if self.v not in ts.EINSUM_LIMITED:
            return
        equation = str(_attr(node, "equation", "")).replace(" ", "")
        operands = equation.split("->")[0].split(",")
        ellipsis = "..." in equation
        diagonal = any(len(set(t)) != len(t) for t in (t.replace("...", "") for t in operands))
        if ellipsis or diagonal:
            what = "ellipsis ('...')" if ellipsis else "a repeated index (diagonal)"
            self.add(
                ERROR, "einsum", name, "Einsum",
                f"equation '{equation}' uses {what}, which {self.label} does not support (10.12+ does)",
                "write the contraction with MatMul / Transpose / Reshape instead of einsum",
            )  # fmt: skip

    def op_Cast(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        to = _attr(node, "to")
        src = scope.get(_input(node, 0))
        if src.dtype in _FITS_INT32 or _shape_like(src):
            # A no-op, a widening of values INT32 already holds (torch.gather's int32 -> int64
            # index cast), or shape arithmetic: INT32 holds every real shape.
            return
        if to == TensorProto.INT64 and not self.sup.native_int64:
            self.add(
                WARNING, "int64-cast", name, "Cast",
                f"Cast to INT64: {self.label} computes it as INT32 (values outside INT32 are clamped)",
                "re-export with `sacvit-deploy export` (its graphs only widen int32 indices, which is "
                "lossless); a graph from another exporter should compute indices in int32",
            )  # fmt: skip

    def _qdq(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        """INT8 explicit quantization as TensorRT takes it (trt_support: QDQ_*)."""
        op = node.op_type
        opset = self.opset or 0
        if opset < ts.QDQ_MIN_OPSET:
            self.add(
                ERROR, "qdq-opset", name, op, f"{op} needs opset {ts.QDQ_MIN_OPSET}+ (the model is opset {opset})",
                "re-export with opset 17 and quantize again (`sacvit-deploy quantize`)",
            )  # fmt: skip
            return
        x, scale = scope.get(_input(node, 0)), scope.get(_input(node, 1))
        zp_name = _input(node, 2)
        zp = scope.get(zp_name) if zp_name else None
        fix_sym = "quantize symmetrically to signed int8 (`sacvit-deploy quantize` does; onnxruntime: QuantType.QInt8, ActivationSymmetric)"
        if not scale.const:
            self.add(
                ERROR, "qdq-scale", name, op, f"the scale ('{_input(node, 1)}') is computed at run time; "
                f"{self.label} needs a build-time constant", "calibrate statically (scales as initializers)",
            )  # fmt: skip
        # The quantized type: the zero point's, else the input's (DQ) or uint8 (Q, ONNX's default).
        if zp is not None and zp.dtype is not None:
            qtype = _dtype_name(zp.dtype)
        elif op == "DequantizeLinear":
            qtype = _dtype_name(x.dtype) if x.dtype is not None else "INT8"
        else:
            out_dtype = _attr(node, "output_dtype", 0)
            qtype = _dtype_name(out_dtype) if out_dtype else "UINT8"
        allowed = ts.QDQ_TYPES.get(self.v, frozenset({"INT8"}))
        if qtype == "INT32" and op == "DequantizeLinear":
            self.add(
                ERROR, "qdq-dtype", name, op, f"dequantizes INT32 (a quantized bias); {self.label} "
                "dequantizes 8-bit (and narrower) types only", "keep biases float (onnxruntime: QuantizeBias=False)",
            )  # fmt: skip
        elif qtype not in allowed:
            default = (
                " (no zero point: ONNX's default uint8)" if zp is None and op == "QuantizeLinear" else ""
            )
            self.add(
                ERROR, "qdq-dtype", name, op, f"quantizes to {qtype}{default}; {self.label} takes "
                f"{', '.join(sorted(allowed))} Q/DQ only", fix_sym,
            )  # fmt: skip
        elif qtype != "INT8":
            self.add(
                WARNING, "qdq-dtype", name, op, f"{qtype} Q/DQ parse on {self.label}, but this check covers INT8 "
                "rules only (FP8 needs Ada / Hopper or newer; INT4 is weight-only)",
                "compare the engine with ONNX Runtime (build-engine's parity check)",
            )  # fmt: skip
        if zp is not None:
            if not zp.const:
                self.add(
                    ERROR, "qdq-zero-point", name, op, f"the zero point ('{zp_name}') is computed at run time",
                    fix_sym,
                )  # fmt: skip
            elif zp.values is not None and np.any(zp.values.astype(np.float64) != 0):
                self.add(
                    ERROR, "qdq-zero-point", name, op, f"zero point is not 0; {self.label} supports symmetric "
                    "quantization only", fix_sym,
                )  # fmt: skip
        if _attr(node, "block_size", 0):
            self.add(
                ERROR, "qdq-block", name, op, f"blocked quantization (block_size={_attr(node, 'block_size')}); "
                f"{self.label} has it for INT4 weight-only quantization, not INT8",
                "quantize INT8 per tensor or per channel",
            )  # fmt: skip
            return
        per_channel = scale.rank == 1 and (scale.numel or 0) > 1
        if scale.rank is not None and scale.rank > 1:
            self.add(
                ERROR, "qdq-per-channel", name, op, f"the scale has rank {scale.rank}; per-tensor scales are "
                "scalars and per-channel scales 1-D", "quantize per tensor or per channel",
            )  # fmt: skip
        if not per_channel:
            return
        if opset < ts.QDQ_PER_CHANNEL_OPSET:
            self.add(
                ERROR, "qdq-per-channel", name, op, f"a per-channel scale needs opset {ts.QDQ_PER_CHANNEL_OPSET}+ "
                f"(opset {opset} Q/DQ are per tensor)", "re-export with opset 17, or quantize per tensor (--per-tensor)",
            )  # fmt: skip
            return
        if not x.const:
            self.add(
                ERROR, "qdq-per-channel", name, op, f"per-channel quantization of an activation "
                f"('{_input(node, 0)}'); {self.label} quantizes activations per tensor, weights per channel",
                "quantize activations per tensor (one scale)",
            )  # fmt: skip
            return
        axis = int(_attr(node, "axis", 1))
        if x.rank is not None and not -x.rank <= axis < x.rank:
            self.add(
                ERROR, "qdq-axis", name, op, f"axis {axis} is outside the input's rank {x.rank}",
                "quantize along the weight's output-channel axis",
            )  # fmt: skip
        elif x.dims and x.dims[axis] != scale.numel:
            self.add(
                ERROR, "qdq-axis", name, op, f"{scale.numel} scales for axis {axis} of size "
                f"{x.dims[axis]}", "give one scale per channel of the quantization axis",
            )  # fmt: skip

    op_QuantizeLinear = _qdq
    op_DequantizeLinear = _qdq

    def op_Constant(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        if node.output:
            t = scope.get(node.output[0])
            self.check_int64_constant(node.output[0], t, name, "Constant", "constant")


# ---- public API ----------------------------------------------------------------------------------
def check_model(model: Union[Union[onnx.ModelProto, str], Path], trt: str) -> List[Problem]:
    """Problems a TensorRT ``trt`` ONNX parser (``8.5``, ``8.6``, ``10``, ``11``) would have with ``model``.

    A path is read with :func:`load_graph` (an unreadable file raises ``ArtifactError``).
    """
    sup = ts.support(trt)
    if not isinstance(model, onnx.ModelProto):
        model = load_graph(model)
    return _Checker(_infer(model), sup).run()


def check_models(
    models: Dict[str, Union[Union[onnx.ModelProto, str], Path]], versions: Iterable[str]
) -> Iterator[Tuple[str, str, List[Problem]]]:
    """(key, version, problems) for every model and version; each graph is read and inferred once."""
    versions = [ts.support(v).version for v in versions]
    for key, model in models.items():
        inferred = _infer(model if isinstance(model, onnx.ModelProto) else load_graph(model))
        for v in versions:
            yield key, v, _Checker(inferred, ts.support(v)).run()


def check_folder(folder: Union[str, Path], trt: str) -> Dict[str, List[Problem]]:
    """Check every graph of an export folder (``manifest.json``), after verifying their sha256."""
    return check_folder_versions(folder, [trt])[ts.support(trt).version]


def check_folder_versions(
    folder: Union[str, Path], versions: Iterable[str]
) -> Dict[str, Dict[str, List[Problem]]]:
    """``{version: {role: problems}}`` for an export folder; each graph is read once for all versions."""
    manifest = Manifest.load(folder)
    if not manifest.graphs:
        raise ArtifactError(
            f"{Path(folder) / 'manifest.json'}: lists no ONNX graphs; run `sacvit-deploy export`"
        )
    manifest.verify(folder)
    paths = {role: manifest.file_path(folder, entry) for role, entry in manifest.graphs.items()}
    for path in paths.values():
        external_data_files(path)  # refuses weights referenced outside the folder
    versions = list(versions)
    results: Dict[str, Dict[str, List[Problem]]] = {ts.support(v).version: {} for v in versions}
    for role, version, problems in check_models(paths, versions):
        results[version][role] = problems
    return results
