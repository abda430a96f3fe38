"""What each TensorRT ONNX parser accepts: opset range, operators, and the restrictions that matter
for ViT graphs. ``trt_compat`` checks graphs against these tables; nothing here imports TensorRT.

The versions a user can name are ``8.5`` (JetPack 5.1), ``8.6`` (JetPack 6.0), ``10`` and ``11``.
``10`` is conservative: what TensorRT 10.0 - 10.3 parse (JetPack 6.1 / 6.2 ship 10.3), so a graph
that passes ``10`` parses on every 10.x. ``11`` likewise means 11.0 (later 11.x add opset 25, DFT,
Squeeze without axes).

Sources, read when this table was written (facts encoded, not copied):

* onnx/onnx-tensorrt ``docs/operators.md`` on the release branches ``8.5-GA`` (commit fdeeaca8),
  ``8.6-GA`` (ee0b139b), ``10.0-GA`` (73f629e0) and ``10.1-GA`` (96e78110), and the TensorRT 10.15
  version of the same file (the newest one readable; opset 9 - 24, lists ``Attention``).
* onnx/onnx-tensorrt ``docs/Changelog.md`` up to 10.15: which release added which operator or
  lifted which restriction (10.3 tensor Slice axes, 10.4 tensor Pad axes, 10.7 dynamic Squeeze /
  Unsqueeze axes, 10.9 opset-18 ScatterND, 10.14 ``Attention``, 10.15 RMSNormalization ...).
* The parser sources on those branches where the table is silent: ``builtin_op_importers.cpp``
  (8.x) and ``onnxOpImporters.cpp`` (10.1): TopK K must be weights on 8.5; 8.x ignores Scatter
  ``reduction``; 10.1 rejects any ScatterND ``reduction`` attribute; an ``If`` with a constant
  condition imports one branch only.
* TensorRT release pages: 11.0 (adds ``Swish``), 11.2 (DFT, 5-D GridSample), 11.5 (opset 25);
  the API / operator reference (ITopKLayer: K "up to 3840"; IIfConditional: true / false outputs
  of the same type and rank); NVIDIA/TensorRT#2497 (NonZero's output could not be reshaped in
  8.5 GA); onnx/onnx-tensorrt#401 and NVIDIA/TensorRT#2285 (NonZero arrived in 8.5).

Not confirmed from a readable source (kept conservative, see the comments below): the 10.2 / 10.3
and 11.x operator tables themselves; that the 8.x parsers reject opsets below 7 (the developer
guide's "backward compatible to opset 7").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, Tuple

from sacvit_deploy.core.trt_families import TRT_FAMILIES, TRT_FAMILY_NAMES

VERSIONS = TRT_FAMILY_NAMES
ALL = frozenset(VERSIONS)
V8 = frozenset({"8.5", "8.6"})


@dataclass(frozen=True)
class ParserSupport:
    """One TensorRT ONNX parser, as far as the checks need it."""

    version: str
    min_opset: int  # default ONNX domain
    ops: FrozenSet[str]  # default-domain operators the parser imports
    native_int64: bool  # False: the parser casts INT64 down to INT32 (8.x); native from 9.0
    dynamic_topk_k: bool  # TopK's K may be a run-time tensor (8.6+)
    local_functions: bool  # ONNX model-local functions are expanded (9.0+)
    bfloat16: bool  # BF16 / FP8 tensors (9.0+)

    @property
    def label(self) -> str:
        return TRT_FAMILIES[self.version].label

    @property
    def max_opset(self) -> int:
        # operators.md: 8.5-GA / 8.6-GA "up to Opset 17"; 10.0-GA / 10.1-GA "opset 9 to opset 20"
        # (the 10.2 / 10.3 tables were not readable; the Changelog lists no bump before 10.3);
        # 10.15: 9 - 24; 11.5 release notes "Added support for ONNX opset 25", so 11.0 - 11.4 stop at 24.
        return TRT_FAMILIES[self.version].max_opset


# ---- operators -----------------------------------------------------------------------------------
# onnx-tensorrt 8.5-GA docs/operators.md, rows marked "Y" (opset <= 17).
_OPS_8_5 = frozenset(
    {
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
        "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant",
        "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace",
        "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand",
        "EyeLike", "Flatten", "Floor", "GRU", "Gather", "GatherElements", "GatherND", "Gemm",
        "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
        "HardSigmoid", "HardSwish", "Identity", "If", "ImageScaler", "InstanceNormalization", "IsNaN",
        "LRN", "LSTM", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop",
        "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization",
        "Min", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "PRelu",
        "Pad", "ParametricSoftplus", "Pow", "QuantizeLinear", "RNN", "RandomNormal", "RandomNormalLike",
        "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
        "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RoiAlign",
        "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape",
        "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign",
        "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu",
        "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
    }
)  # fmt: skip
# 8.6-GA table: the 8.5 set plus these (Changelog "8.6 EA").
_OPS_8_6 = _OPS_8_5 | {"GroupNormalization", "IsInf", "LayerNormalization"}
# 10.0-GA table: the 8.6 set plus these (Hardmax came in 9.2, the others in 9.x / 10.0). DeformConv
# (10.1), the window functions (10.4) and STFT (10.5) are left out on purpose: "10" means 10.0-10.3.
_OPS_10 = _OPS_8_6 | {"CastLike", "Gelu", "Hardmax", "Mish"}
# 10.15 table (the newest readable) plus Swish (11.0 release notes). The 11.0 table itself was not
# readable; nothing in the 11.0 - 11.5 release notes removes an ONNX operator from the parser.
_OPS_11 = _OPS_10 | {
    "DeformConv",  # 10.1
    "BlackmanWindow", "HammingWindow", "HannWindow",  # 10.4
    "STFT",  # 10.5 (real input only)
    "Attention",  # 10.14 (opset 23)
    "RMSNormalization", "RotaryEmbedding", "TensorScatter",  # 10.15 (opset 23 / 24)
    "Swish",  # 11.0 (opset 24)
}  # fmt: skip

# The first TensorRT release whose parser imports an operator, where a source says so; used to tell
# the user which version would take a graph as it is.
FIRST_SUPPORTED: Dict[str, str] = {
    "LayerNormalization": "8.6",
    "GroupNormalization": "8.6",
    "IsInf": "8.6",
    "Hardmax": "9.2",
    "DeformConv": "10.1",
    "BlackmanWindow": "10.4",
    "HammingWindow": "10.4",
    "HannWindow": "10.4",
    "STFT": "10.5",
    "Attention": "10.14",
    "RMSNormalization": "10.15",
    "RotaryEmbedding": "10.15",
    "TensorScatter": "10.15",
    "Swish": "11.0",
    "DFT": "11.2",
}

SUPPORT: Dict[str, ParserSupport] = {
    "8.5": ParserSupport(
        version="8.5",
        # operators.md 8.5-GA: "supports operators up to Opset 17". The lower bound 7 is the
        # developer guide's "backward compatible up to opset 7" (not re-read for this table).
        min_opset=7,
        ops=_OPS_8_5,
        native_int64=False,
        dynamic_topk_k=False,  # 8.5-GA TopK importer: "only supports input K as an initializer"
        local_functions=False,
        bfloat16=False,
    ),
    "8.6": ParserSupport(
        version="8.6",
        min_opset=7,
        ops=_OPS_8_6,
        native_int64=False,
        dynamic_topk_k=True,  # Changelog 8.6 EA: "TopK operators with dynamic K values"
        local_functions=False,
        bfloat16=False,
    ),
    "10": ParserSupport(
        version="10",
        # operators.md 10.0-GA and 10.1-GA: "inclusive range of opset 9 to opset 20". The 10.2 / 10.3
        # tables were not readable; the Changelog lists no opset bump before 10.3.
        min_opset=9,
        ops=_OPS_10,
        native_int64=True,  # Changelog 9.0 EA: INT64 supported, no longer cast down
        dynamic_topk_k=True,
        local_functions=True,  # Changelog 9.0 EA
        bfloat16=True,  # Changelog 9.0 GA
    ),
    "11": ParserSupport(
        version="11",
        # operators.md 10.15: opset 9 - 24; TensorRT 11.5 release notes: "Added support for ONNX
        # opset 25", so 11.0 - 11.4 stop at 24.
        min_opset=9,
        ops=_OPS_11,
        native_int64=True,
        dynamic_topk_k=True,
        local_functions=True,
        bfloat16=True,
    ),
}

# ---- restrictions ----------------------------------------------------------------------------------
# TopK: operators.md 10.x "K input must be less than 3840"; the API reference says K "up to 3840".
# The stricter (documented parser) bound is used on every version.
TOPK_MAX_K = 3840

# Operators whose output shape depends on input values. 8.5 added INonZeroLayer (the 8.5 table
# lists NonZero), but its output could not even be reshaped in 8.5 GA (NVIDIA/TensorRT#2497), so 8.5
# counts it as an error; later versions build them, with an output allocator the runtime provides.
DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression"})

# (operator, input index) -> the versions whose parser needs that input to be an initializer or a
# Constant node's output (the parser's "weights"); everything else is a run-time tensor to it.
CONSTANT_INPUTS: Dict[Tuple[str, int], FrozenSet[str]] = {
    ("Slice", 3): frozenset({"8.5", "8.6", "10"}),  # axes; tensor axes from 10.3 (10.0 still needs it)
    ("Squeeze", 1): frozenset({"8.5", "8.6", "10"}),  # axes; dynamic axes from 10.7
    ("Unsqueeze", 1): frozenset({"8.5", "8.6", "10"}),  # axes; dynamic axes from 10.7
    ("Pad", 3): frozenset({"10"}),  # axes (opset 18+, so never on 8.x); tensor axes from 10.4
    ("CumSum", 1): ALL,  # axis; every table
    ("OneHot", 1): ALL,  # depth; 8.x importer rejects a dynamic depth, 10.x "build-time constant"
    **{
        (op, 1): ALL  # axes as an input (ReduceSum opset 13+, the others 18+); every table
        for op in (
            "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
            "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
        )
    },
}  # fmt: skip

# Squeeze without an axes input on a tensor with dynamic dims: "Cannot infer squeeze dimensions from
# a dynamic shape" (8.5 importer); supported only from TensorRT 11.5, so an error on every version.
SQUEEZE_NEEDS_AXES = ALL

# Resize attributes the parser accepts (operators.md, all versions). Cubic mode is not in the
# table's text but every importer read (8.5, 8.6, 10.1) maps it, so it is accepted here.
RESIZE_MODES = frozenset({"nearest", "linear", "cubic"})
RESIZE_COORD_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)

# Einsum: "Ellipsis and diagonal operations are not supported. Broadcasting between inputs is not
# supported" (8.x tables); the Changelog adds that support only in 10.12, so "10" keeps the limit.
EINSUM_LIMITED = frozenset({"8.5", "8.6", "10"})

# ScatterND / ScatterElements ``reduction``:
# * 8.x importers never read the attribute: a reduction is silently replaced by overwrite.
# * 10.0/10.1 ScatterND rejects the attribute even when it is "none" (fixed for opset-18 exports in
#   10.9; 10.15 table: "reduction other than none is not supported").
# * ScatterElements reductions go through the ScatterElements plugin from 10.0 EA: they parse only
#   with TensorRT's plugin library loaded.
SCATTERND_REJECTS_REDUCTION_ATTR = frozenset({"10"})
SCATTER_ELEMENTS_REDUCTION_PLUGIN = frozenset({"10", "11"})

# ONNX element types (onnx.TensorProto names) the 8.x parsers cannot hold: BF16 and FP8 came in 9.0.
BF16_FP8_TYPES = frozenset({"BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"})


def support(version: str) -> ParserSupport:
    """The table for a version name as the user writes it (``8.5``, ``8.6``, ``10``, ``11``)."""
    try:
        return SUPPORT[version]
    except KeyError:
        raise ValueError(f"unknown TensorRT version {version!r}; choose from {', '.join(VERSIONS)}") from None


# ---- explicit quantization: QuantizeLinear / DequantizeLinear -----------------------------------------
# onnx-tensorrt docs/operators.md (8.x and 10.x tables): QuantizeLinear "y_zero_point must be 0",
# DequantizeLinear "x_zero_point must be zero", INT8 in 8.x; 10.x adds FP8 (E4M3) and INT4 (weight
# only, blocked). The TensorRT developer guide ("Explicit Quantization"): the scale is a build-time
# constant; activations are quantized per tensor, weights per tensor or per channel (a 1-D scale, one
# value per channel of the quantization ``axis``). Opset 10 has per-tensor Q/DQ only; opset 13 added
# ``axis`` (per-channel); opset 21 added ``block_size`` (blocked quantization).
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
QDQ_MIN_OPSET = 10
QDQ_PER_CHANNEL_OPSET = 13
# Q/DQ element types each parser takes (onnx.TensorProto names). sacvit-deploy writes INT8 only.
QDQ_TYPES: Dict[str, FrozenSet[str]] = {
    "8.5": frozenset({"INT8"}),
    "8.6": frozenset({"INT8"}),
    "10": frozenset({"INT8", "FLOAT8E4M3FN", "INT4"}),
    "11": frozenset({"INT8", "FLOAT8E4M3FN", "INT4"}),
}
