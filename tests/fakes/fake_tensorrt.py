"""A fake ``tensorrt`` module: the Python API of TensorRT 8.5, 8.6, 10.x and 11.x, recorded and checked.

``make_fake_tensorrt("10.3.0")`` returns a module to inject with
``monkeypatch.setitem(sys.modules, "tensorrt", fake)``. What it imitates, per version:

* enums with each release's member NAMES (values deliberately differ from the real ones and between
  versions, so code that uses integers instead of names breaks): ``BuilderFlag.FP16`` / ``INT8`` /
  ``OBEY_PRECISION_CONSTRAINTS`` exist up to 10.x and are absent in 11.x; ``EXPLICIT_BATCH`` is
  required below 10, deprecated in 10.x, absent in 11.x; ``STRONGLY_TYPED`` from 10.x;
  ``HardwareCompatibilityLevel`` from 8.6 (``SAME_COMPUTE_CAPABILITY`` from 10.9);
* removed APIs are simply not there (AttributeError): the binding API (``num_bindings``,
  ``execute_async_v2``, ``build_engine``, ``max_workspace_size``) in every version, the calibrator
  classes, ``int8_calibrator`` and ``platform_has_fast_fp16`` in 11.x;
* every call is recorded in ``fake.calls`` as ``(what, args)`` and checked: enum arguments must be
  members of the right enum, ``set_memory_pool_limit`` takes a ``MemoryPoolType``, profiles must
  cover every dynamic input with ``min <= opt <= max``, precision flags and per-layer precisions are
  errors on strongly typed networks, ``set_output_type`` only on float outputs, DLA needs a core that
  exists, GPU fallback and a reduced precision;
* it works end to end: the parser keeps the ONNX bytes and makes one fake layer per ONNX node (typed
  like TensorRT's: NORMALIZATION, SOFTMAX, REDUCE, TOPK, ...; ArgMax becomes TOPK + SHUFFLE as in the
  real parser), ``build_serialized_network`` returns a private plan format embedding the ONNX bytes
  and the build settings, and the deserialized engine's ``execute_async_v3`` runs the ONNX graph with
  ONNX Runtime (CPU), reading inputs from and writing outputs to the raw addresses given to
  ``set_tensor_address`` (CPU memory in tests). An FP16 (builder-flag) engine rounds its float
  outputs through float16; a strongly typed engine runs the float16 ONNX graph itself.

Knobs on ``fake.state``: ``fast_fp16``, ``dla_cores``, ``fail_nodes`` (ONNX node names the parser
rejects), ``perturb`` (a function ``(name, array) -> array`` applied to engine outputs),
``build_returns_none``.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import json
import struct
import types
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"FAKETRT\x01"
TIMING_MAGIC = b"FAKETC\x01"
CALIB_MAGIC = b"FAKECALIB\x01"
_SESSIONS: dict[str, Any] = {}  # ONNX sha256 -> onnxruntime session, shared by all fakes (tests are faster)

# ONNX op -> the TensorRT layer type its importer makes.
_LAYER_TYPES = {
    "Conv": "CONVOLUTION",
    "MatMul": "MATRIX_MULTIPLY",
    "Gemm": "MATRIX_MULTIPLY",
    "Add": "ELEMENTWISE",
    "Sub": "ELEMENTWISE",
    "Mul": "ELEMENTWISE",
    "Div": "ELEMENTWISE",
    "Pow": "ELEMENTWISE",
    "Equal": "ELEMENTWISE",
    "Greater": "ELEMENTWISE",
    "Sqrt": "UNARY",
    "Erf": "UNARY",
    "Not": "UNARY",
    "Softmax": "SOFTMAX",
    "ReduceMean": "REDUCE",
    "ReduceMax": "REDUCE",
    "ReduceSum": "REDUCE",
    "TopK": "TOPK",
    "LayerNormalization": "NORMALIZATION",
    "Gather": "GATHER",
    "GatherElements": "GATHER",
    "Concat": "CONCATENATION",
    "Slice": "SLICE",
    "Split": "SLICE",
    "Expand": "SLICE",
    "Shape": "SHAPE",
    "Cast": "CAST",
    "Identity": "IDENTITY",
    "Resize": "RESIZE",
    "Where": "SELECT",
    "ConstantOfShape": "FILL",
    "QuantizeLinear": "QUANTIZE",
    "DequantizeLinear": "DEQUANTIZE",
}


# Layer types the fake's DLA cannot run (the real DLA's list is longer and version-dependent).
_NO_DLA = {"TOPK", "GATHER", "SHAPE", "CAST", "SELECT", "FILL", "REDUCE"}


@dataclass
class FakeState:
    fast_fp16: bool = True
    dla_cores: int = 0
    fail_nodes: set[str] = field(default_factory=set)
    perturb: Any = None
    build_returns_none: bool = False
    executions: list[dict[str, Any]] = field(default_factory=list)
    builds: list[dict[str, Any]] = field(default_factory=list)
    logged: list[tuple[str, str]] = field(default_factory=list)
    deprecated: list[str] = field(default_factory=list)  # deprecated API used (10.12+)
    reject_profiles: bool = False  # add_optimization_profile returns -1, set_calibration_profile False


def _version_tuple(version: str) -> tuple[int, int, int]:
    parts = [*(int(p) for p in version.split(".")[:3]), 0, 0, 0]
    return parts[0], parts[1], parts[2]


def make_fake_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    """A fresh fake ``tensorrt`` module imitating TensorRT ``version`` (8.5.x, 8.6.x, 10.x, 11.x)."""
    vt = _version_tuple(version)
    major = vt[0]
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    m.calls = []
    m.state = FakeState()

    def record(what: str, *args: Any) -> None:
        m.calls.append((what, args))

    def called(what: str) -> list[tuple[Any, ...]]:
        return [args for name, args in m.calls if name == what]

    m.called = called

    # ---- enums ----------------------------------------------------------------------------------------
    def make_enum(name: str, members: list[str], offset: int = 0) -> type[enum.IntEnum]:
        return enum.IntEnum(name, {n: offset + i for i, n in enumerate(members)})

    flags = [
        "FP16",
        "INT8",
        "DEBUG",
        "GPU_FALLBACK",
        "STRICT_TYPES",
        "REFIT",
        "DISABLE_TIMING_CACHE",
        "TF32",
        "SPARSE_WEIGHTS",
        "SAFETY_SCOPE",
        "OBEY_PRECISION_CONSTRAINTS",
        "PREFER_PRECISION_CONSTRAINTS",
        "DIRECT_IO",
        "REJECT_EMPTY_ALGORITHMS",
    ]
    if vt >= (8, 6, 0):
        flags += ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8"]
    if major >= 10:
        flags.remove("STRICT_TYPES")
        flags += ["ERROR_ON_TIMING_CACHE_MISS", "BF16", "DISABLE_COMPILATION_CACHE", "STRIP_PLAN"]
        flags += ["REFIT_IDENTICAL", "WEIGHT_STREAMING", "INT4", "REFIT_INDIVIDUAL"]
    if vt >= (10, 16, 0):  # added after 10.3 (the release in between that added them is not recorded)
        flags += ["STRICT_NANS", "MONITOR_MEMORY", "FP4", "EDITABLE_TIMING_CACHE"]
    if major >= 11:
        # Weak typing is gone: the precision flags and REJECT_EMPTY_ALGORITHMS. DIRECT_IO stays (11.4).
        for gone in ("FP16", "INT8", "FP8", "BF16", "INT4", "FP4", "REJECT_EMPTY_ALGORITHMS"):
            flags.remove(gone)
        flags.remove("OBEY_PRECISION_CONSTRAINTS")
        flags.remove("PREFER_PRECISION_CONSTRAINTS")
    m.BuilderFlag = make_enum("BuilderFlag", flags, offset=major % 3)

    net_flags = ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"]
    if major >= 10:
        net_flags = ["EXPLICIT_BATCH", "STRONGLY_TYPED"]
    if vt >= (10, 16, 0):  # added after 10.3
        net_flags += ["PREFER_JIT_PYTHON_PLUGINS", "PREFER_AOT_PYTHON_PLUGINS"]
    if major >= 11:
        net_flags = ["STRONGLY_TYPED", "PREFER_JIT_PYTHON_PLUGINS", "PREFER_AOT_PYTHON_PLUGINS"]
    m.NetworkDefinitionCreationFlag = make_enum("NetworkDefinitionCreationFlag", net_flags)

    pools = ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM"]
    if vt >= (8, 6, 0):
        pools.append("TACTIC_DRAM")
    if major >= 10:
        pools.append("TACTIC_SHARED_MEMORY")
    m.MemoryPoolType = make_enum("MemoryPoolType", pools, offset=1)
    if vt >= (8, 6, 0):
        levels = ["NONE", "AMPERE_PLUS"] + (["SAME_COMPUTE_CAPABILITY"] if vt >= (10, 9, 0) else [])
        m.HardwareCompatibilityLevel = make_enum("HardwareCompatibilityLevel", levels)
    m.DeviceType = make_enum("DeviceType", ["GPU", "DLA"])
    m.TensorIOMode = make_enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    m.ProfilingVerbosity = make_enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
    dtypes = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8"]
    dtypes += ["FP8"] if vt >= (8, 6, 0) else []
    dtypes += ["BF16", "INT64", "INT4"] if major >= 10 else []
    m.DataType = make_enum("DataType", dtypes, offset=2)
    m.float32, m.float16, m.int8, m.int32, m.bool, m.uint8 = (
        m.DataType.FLOAT,
        m.DataType.HALF,
        m.DataType.INT8,
        m.DataType.INT32,
        m.DataType.BOOL,
        m.DataType.UINT8,
    )
    if major >= 10:
        m.int64, m.bfloat16 = m.DataType.INT64, m.DataType.BF16
    layer_types = sorted(set(_LAYER_TYPES.values()) | {"SHUFFLE", "CONSTANT", "PLUGIN_V2"})
    if vt < (8, 6, 0):
        layer_types.remove("NORMALIZATION")
    m.LayerType = make_enum("LayerType", layer_types)
    m.ErrorCode = make_enum(
        "ErrorCode",
        [
            "SUCCESS",
            "INTERNAL_ERROR",
            "MEM_ALLOC_FAILED",
            "MODEL_DESERIALIZE_FAILED",
            "INVALID_VALUE",
            "INVALID_GRAPH",
            "INVALID_NODE",
            "UNSUPPORTED_GRAPH",
            "UNSUPPORTED_NODE",
        ],
    )

    np_types = {
        m.DataType.FLOAT: np.float32,
        m.DataType.HALF: np.float16,
        m.DataType.INT8: np.int8,
        m.DataType.INT32: np.int32,
        m.DataType.BOOL: np.bool_,
        m.DataType.UINT8: np.uint8,
    }
    if major >= 10:
        np_types[m.DataType.INT64] = np.int64

    def nptype(dtype: Any) -> Any:
        check_type(dtype, m.DataType, "nptype")
        return np_types[dtype]

    m.nptype = nptype

    def check_type(value: Any, kind: Any, where: str) -> None:
        if not isinstance(value, kind):
            raise TypeError(
                f"{where}: expected tensorrt.{kind.__name__}, got {type(value).__name__} {value!r}"
            )

    # ---- logging --------------------------------------------------------------------------------------
    Severity = enum.IntEnum(
        "Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}
    )

    class ILogger:
        pass

    ILogger.Severity = Severity

    class Logger(ILogger):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (
            Severity.INTERNAL_ERROR,
            Severity.ERROR,
            Severity.WARNING,
            Severity.INFO,
            Severity.VERBOSE,
        )

        def __init__(self, min_severity: Any = Severity.WARNING) -> None:
            self.min_severity = min_severity

        def log(self, severity: Any, msg: str) -> None:
            pass

    for sev in Severity:
        setattr(ILogger, sev.name, sev)
    m.ILogger, m.Logger = ILogger, Logger

    def deprecated(what: str) -> None:
        """10.12 deprecated weak typing; the 10.16 bindings warn on its per-layer calls."""
        if vt >= (10, 12, 0):
            m.state.deprecated.append(what)
            warnings.warn(f"{what} is deprecated since TensorRT 10.12", DeprecationWarning, stacklevel=3)

    def log(logger: Any, severity: Any, msg: str) -> None:
        m.state.logged.append((severity.name, msg))
        logger.log(severity, msg)

    # ---- host memory, timing cache -------------------------------------------------------------------
    class IHostMemory(bytes):
        @property
        def nbytes(self) -> int:
            return len(self)

    class ITimingCache:
        def __init__(self, keys: list[str]) -> None:
            self._keys = list(keys)

        def serialize(self) -> IHostMemory:
            record("TimingCache.serialize")
            return IHostMemory(TIMING_MAGIC + json.dumps(self._keys).encode())

        def combine(self, other: ITimingCache, ignore_mismatch: bool) -> bool:
            self._keys += [k for k in other._keys if k not in self._keys]
            return True

    m.IHostMemory, m.ITimingCache = IHostMemory, ITimingCache

    # ---- network ----------------------------------------------------------------------------------------
    class ITensor:
        def __init__(self, name: str, dtype: Any, shape: tuple[int, ...]) -> None:
            self.name, self.dtype, self.shape = name, dtype, tuple(shape)
            self.is_network_input = False
            self.is_network_output = False

    class ILayer:
        def __init__(self, network: Any, name: str, kind: Any, inputs: list, outputs: list) -> None:
            self._network = network
            self.name, self.type = name, kind
            self._inputs, self._outputs = inputs, outputs
            self._precision = None
            self._output_types: dict[int, Any] = {}

        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))

        def get_input(self, index: int) -> Any:
            return self._inputs[index]

        def get_output(self, index: int) -> Any:
            return self._outputs[index]

        if major <= 10:  # weak typing (per-layer precision) is gone in 11.x

            @property
            def precision(self) -> Any:
                return self._precision if self._precision is not None else m.DataType.FLOAT

            @precision.setter
            def precision(self, dtype: Any) -> None:
                check_type(dtype, m.DataType, "ILayer.precision")
                record("ILayer.precision", self.name, dtype.name)
                deprecated("ILayer.precision")
                if self._network._strongly_typed:
                    self._network._errors.append(f"{self.name}: setPrecision on a strongly typed network")
                self._precision = dtype

            @property
            def precision_is_set(self) -> bool:
                return self._precision is not None

            def set_output_type(self, index: int, dtype: Any) -> None:
                check_type(dtype, m.DataType, "ILayer.set_output_type")
                if not 0 <= index < len(self._outputs):
                    raise IndexError(f"{self.name}: output {index} out of range")
                record("ILayer.set_output_type", self.name, index, dtype.name)
                deprecated("ILayer.set_output_type")
                if self._network._strongly_typed:
                    self._network._errors.append(f"{self.name}: setOutputType on a strongly typed network")
                if self._outputs[index].dtype not in (m.DataType.FLOAT, m.DataType.HALF):
                    self._network._errors.append(
                        f"{self.name}: output {index} is {self._outputs[index].dtype.name}, cannot be made {dtype.name}"
                    )
                self._output_types[index] = dtype

        def get_output_type(self, index: int) -> Any:
            return self._output_types.get(index, self._outputs[index].dtype)

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self._flags = flags
            self._strongly_typed = major >= 11 or (
                major >= 10 and bool(flags & (1 << int(m.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            )
            self._explicit_batch = major >= 10 or bool(
                flags & (1 << int(m.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
            )
            self._layers: list[ILayer] = []
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []
            self._onnx_bytes: bytes | None = None
            self._errors: list[str] = []
            self.name = "network"
            self._has_qdq = False  # explicit quantization: Q/DQ layers fix INT8 where they are

        num_layers = property(lambda self: len(self._layers))
        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))

        def get_layer(self, index: int) -> ILayer:
            return self._layers[index]

        def get_input(self, index: int) -> ITensor:
            return self._inputs[index]

        def get_output(self, index: int) -> ITensor:
            return self._outputs[index]

        def __len__(self) -> int:
            return len(self._layers)

        def __getitem__(self, index: int) -> ILayer:
            return self._layers[index]

        if major >= 10:
            flags = property(lambda self: self._flags)

            def get_flag(self, flag: Any) -> bool:
                check_type(flag, m.NetworkDefinitionCreationFlag, "INetworkDefinition.get_flag")
                return bool(self._flags & (1 << int(flag)))

    m.INetworkDefinition, m.ILayer, m.ITensor = INetworkDefinition, ILayer, ITensor

    # ---- ONNX parser ------------------------------------------------------------------------------------
    class ParserError:
        def __init__(self, code: Any, desc: str, node: int = -1, node_name: str = "", op: str = "") -> None:
            self._code, self._desc, self._node, self._name, self._op = code, desc, node, node_name, op

        def code(self) -> Any:
            return self._code

        def desc(self) -> str:
            return self._desc

        def file(self) -> str:
            return "ModelImporter.cpp"

        def line(self) -> int:
            return 42

        def func(self) -> str:
            return "parseNode"

        def node(self) -> int:
            return self._node

        if major >= 10:

            def node_name(self) -> str:
                return self._name

            def node_operator(self) -> str:
                return self._op

        def __str__(self) -> str:
            return f"In node {self._node} ({self.func()}): {self._code.name}: {self._desc}"

    def onnx_dtype(elem_type: int) -> Any:
        from onnx import TensorProto

        table = {
            TensorProto.FLOAT: m.DataType.FLOAT,
            TensorProto.FLOAT16: m.DataType.HALF,
            TensorProto.INT32: m.DataType.INT32,
            TensorProto.BOOL: m.DataType.BOOL,
            TensorProto.UINT8: m.DataType.UINT8,
            TensorProto.INT8: m.DataType.INT8,
            TensorProto.INT64: m.DataType.INT64 if major >= 10 else m.DataType.INT32,
        }
        return table[elem_type]

    def value_tensor(v: Any) -> ITensor:
        dims = tuple(
            -1 if d.dim_param or not d.dim_value else int(d.dim_value) for d in v.type.tensor_type.shape.dim
        )
        return ITensor(v.name, onnx_dtype(v.type.tensor_type.elem_type), dims)

    unsupported_ops = {"NonZero"} | ({"LayerNormalization"} if vt < (8, 6, 0) else set())
    max_opset = 17 if major < 10 else (24 if vt >= (10, 15, 0) or major >= 11 else 20)

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: Any) -> None:
            check_type(network, INetworkDefinition, "OnnxParser(network)")
            check_type(logger, ILogger, "OnnxParser(logger)")
            record("OnnxParser")
            self._network, self._logger = network, logger
            self._errors: list[ParserError] = []

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> ParserError:
            return self._errors[index]

        def clear_errors(self) -> None:
            self._errors = []

        def parse_from_file(self, path: str) -> bool:
            with open(path, "rb") as f:
                return self.parse(f.read(), path)

        def parse(self, model: bytes, path: str | None = None) -> bool:
            import onnx

            record("OnnxParser.parse", len(model), path)
            data = bytes(model)
            try:
                proto = onnx.load_model_from_string(data)
            except Exception as exc:
                self._fail(m.ErrorCode.MODEL_DESERIALIZE_FAILED, f"failed to parse the ONNX model: {exc}")
                return False
            if not self._network._explicit_batch:
                self._fail(m.ErrorCode.INVALID_GRAPH, "Network must have explicit batch dimension")
                return False
            opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
            if opset > max_opset:  # the real parser warns and tries (it does not refuse newer opsets)
                log(
                    self._logger,
                    Severity.WARNING,
                    f"ModelImporter: this parser supports opsets up to {max_opset}; the model is opset {opset}",
                )
            for i, node in enumerate(proto.graph.node):
                if node.op_type in unsupported_ops or node.name in m.state.fail_nodes:
                    self._fail(
                        m.ErrorCode.UNSUPPORTED_NODE,
                        f"No importer registered for op: {node.op_type}",
                        i,
                        node.name,
                        node.op_type,
                    )
            if self._errors:
                return False
            self._populate(proto, data)
            return True

        def _fail(self, code: Any, desc: str, node: int = -1, name: str = "", op: str = "") -> None:
            self._errors.append(ParserError(code, desc, node, name, op))
            log(self._logger, Severity.ERROR, f"[onnx parser] {desc}")

        def _populate(self, proto: Any, data: bytes) -> None:
            import onnx

            net = self._network
            net._onnx_bytes = data
            net.name = proto.graph.name
            net._has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
            inferred = onnx.shape_inference.infer_shapes(proto)
            types_ = {
                v.name: v.type.tensor_type.elem_type
                for v in list(inferred.graph.value_info)
                + list(inferred.graph.input)
                + list(inferred.graph.output)
            }
            types_.update({t.name: t.data_type for t in proto.graph.initializer})
            tensors: dict[str, ITensor] = {}
            for v in proto.graph.input:
                t = value_tensor(v)
                t.is_network_input = True
                net._inputs.append(t)
                tensors[v.name] = t

            def tensor(name: str) -> ITensor:
                if name not in tensors:
                    tensors[name] = ITensor(name, onnx_dtype(types_.get(name, 1)), ())
                return tensors[name]

            for node in proto.graph.node:
                kind = getattr(m.LayerType, _LAYER_TYPES.get(node.op_type, "SHUFFLE"))
                ins = [tensor(n) for n in node.input if n]
                outs = [tensor(n) for n in node.output if n]
                if node.op_type == "ArgMax":  # the real importer: TopK (values, int32 indices) + a squeeze
                    values = ITensor(f"{node.name}_values", ins[0].dtype, ())
                    indices = ITensor(f"{node.name}_indices", m.DataType.INT32, ())
                    net._layers.append(ILayer(net, node.name, m.LayerType.TOPK, ins, [values, indices]))
                    net._layers.append(
                        ILayer(net, f"{node.name}_squeeze", m.LayerType.SHUFFLE, [indices], outs)
                    )
                    continue
                net._layers.append(ILayer(net, node.name, kind, ins, outs))
            for v in proto.graph.output:
                t = tensor(v.name)
                t.shape = value_tensor(v).shape
                t.is_network_output = True
                net._outputs.append(t)

    m.OnnxParser, m.ParserError = OnnxParser, ParserError

    # ---- calibrators --------------------------------------------------------------------------------
    if major <= 10:

        class IInt8Calibrator:
            def __init__(self) -> None:
                self._fake_initialized = True

        class IInt8EntropyCalibrator2(IInt8Calibrator):
            pass

        class IInt8MinMaxCalibrator(IInt8Calibrator):
            pass

        m.IInt8Calibrator = IInt8Calibrator
        m.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        m.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator

    # ---- profiles, config -------------------------------------------------------------------------
    def dims(value: Any, where: str) -> tuple[int, ...]:
        if not isinstance(value, (tuple, list)) or not all(isinstance(d, int) for d in value):
            raise TypeError(f"{where}: shapes are tuples of ints, got {value!r}")
        return tuple(value)

    class IOptimizationProfile:
        def __init__(self) -> None:
            self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
            lo, mid, hi = (dims(s, f"set_shape({name})") for s in (min, opt, max))
            record("Profile.set_shape", name, lo, mid, hi)
            if not len(lo) == len(mid) == len(hi):
                raise ValueError(f"set_shape({name}): ranks differ")
            if not all(0 < a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True)):
                raise ValueError(f"set_shape({name}): need 0 < min <= opt <= max, got {lo}, {mid}, {hi}")
            self._shapes[name] = (lo, mid, hi)

        def get_shape(self, name: str) -> list[tuple[int, ...]]:
            return list(self._shapes[name])

    m.IOptimizationProfile = IOptimizationProfile

    class IBuilderConfig:
        def __init__(self) -> None:
            self._flags: set[Any] = set()
            self._pools: dict[Any, int] = {}
            self._profiles: list[IOptimizationProfile] = []
            self._timing_cache: ITimingCache | None = None
            self._calibrator = None
            self._calibration_profile = None
            self._device = m.DeviceType.GPU
            self._dla_core = -1
            self._hardware = m.HardwareCompatibilityLevel.NONE if vt >= (8, 6, 0) else None
            self.profiling_verbosity = m.ProfilingVerbosity.LAYER_NAMES_ONLY

        def set_flag(self, flag: Any) -> None:
            check_type(flag, m.BuilderFlag, "IBuilderConfig.set_flag")
            record("Config.set_flag", flag.name)
            if flag.name in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"):
                deprecated(f"BuilderFlag.{flag.name}")
            self._flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            check_type(flag, m.BuilderFlag, "IBuilderConfig.clear_flag")
            self._flags.discard(flag)

        def get_flag(self, flag: Any) -> bool:
            check_type(flag, m.BuilderFlag, "IBuilderConfig.get_flag")
            return flag in self._flags

        @property
        def flags(self) -> int:
            return sum(1 << int(f) for f in self._flags)

        def set_memory_pool_limit(self, pool: Any, limit: int) -> None:
            check_type(pool, m.MemoryPoolType, "IBuilderConfig.set_memory_pool_limit(pool)")
            if not isinstance(limit, int) or limit <= 0:
                raise TypeError(f"set_memory_pool_limit: limit must be a positive int, got {limit!r}")
            record("Config.set_memory_pool_limit", pool.name, limit)
            self._pools[pool] = limit

        def get_memory_pool_limit(self, pool: Any) -> int:
            check_type(pool, m.MemoryPoolType, "IBuilderConfig.get_memory_pool_limit")
            return self._pools.get(pool, 8 << 30)

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            check_type(profile, IOptimizationProfile, "add_optimization_profile")
            record("Config.add_optimization_profile", dict(profile._shapes))
            if m.state.reject_profiles:
                return -1  # the real API's failure value (an invalid profile)
            self._profiles.append(profile)
            return len(self._profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._profiles)

        def create_timing_cache(self, serialized: Any) -> ITimingCache | None:
            data = bytes(serialized)
            record("Config.create_timing_cache", len(data))
            if not data:
                return ITimingCache([])
            if not data.startswith(TIMING_MAGIC):
                return None
            return ITimingCache(json.loads(data[len(TIMING_MAGIC) :]))

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            check_type(cache, ITimingCache, "set_timing_cache")
            if not isinstance(ignore_mismatch, bool):
                raise TypeError("set_timing_cache: ignore_mismatch must be a bool")
            record("Config.set_timing_cache", id(cache), ignore_mismatch)
            self._timing_cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self._timing_cache

        @property
        def default_device_type(self) -> Any:
            return self._device

        @default_device_type.setter
        def default_device_type(self, value: Any) -> None:
            check_type(value, m.DeviceType, "default_device_type")
            record("Config.default_device_type", value.name)
            self._device = value

        @property
        def DLA_core(self) -> int:
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, value: int) -> None:
            if not isinstance(value, int):
                raise TypeError("DLA_core must be an int")
            record("Config.DLA_core", value)
            self._dla_core = value

        def can_run_on_DLA(self, layer: Any) -> bool:
            check_type(layer, ILayer, "can_run_on_DLA")
            return layer.type.name not in _NO_DLA

        if vt >= (8, 6, 0):

            @property
            def hardware_compatibility_level(self) -> Any:
                return self._hardware

            @hardware_compatibility_level.setter
            def hardware_compatibility_level(self, value: Any) -> None:
                check_type(value, m.HardwareCompatibilityLevel, "hardware_compatibility_level")
                record("Config.hardware_compatibility_level", value.name)
                self._hardware = value

        if major <= 10:

            @property
            def int8_calibrator(self) -> Any:
                return self._calibrator

            @int8_calibrator.setter
            def int8_calibrator(self, value: Any) -> None:
                check_type(value, m.IInt8Calibrator, "int8_calibrator")
                if not getattr(value, "_fake_initialized", False):
                    raise TypeError(f"{type(value).__name__}.__init__() must call the TensorRT base __init__")
                record("Config.int8_calibrator", type(value).__mro__[1].__name__)
                self._calibrator = value

            def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
                check_type(profile, IOptimizationProfile, "set_calibration_profile")
                record("Config.set_calibration_profile", dict(profile._shapes))
                if m.state.reject_profiles:
                    return False
                self._calibration_profile = profile
                return True

    m.IBuilderConfig = IBuilderConfig

    # ---- builder ------------------------------------------------------------------------------------
    class Builder:
        def __init__(self, logger: Any) -> None:
            check_type(logger, ILogger, "Builder(logger)")
            record("Builder")
            self._logger = logger

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            if not isinstance(flags, int) or isinstance(flags, enum.Enum):
                raise TypeError(f"create_network: flags is a bit mask (1 << int(flag)), got {flags!r}")
            names = [f.name for f in m.NetworkDefinitionCreationFlag if flags & (1 << int(f))]
            record("Builder.create_network", tuple(names))
            if major >= 10 and "EXPLICIT_BATCH" in names:
                log(self._logger, Severity.WARNING, "kEXPLICIT_BATCH is deprecated and has no effect")
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            record("Builder.create_builder_config")
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        @property
        def num_DLA_cores(self) -> int:
            return m.state.dla_cores

        if major <= 10:

            @property
            def platform_has_fast_fp16(self) -> bool:
                record("Builder.platform_has_fast_fp16")
                return m.state.fast_fp16

            @property
            def platform_has_fast_int8(self) -> bool:
                return True

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> Any:
            check_type(network, INetworkDefinition, "build_serialized_network(network)")
            check_type(config, IBuilderConfig, "build_serialized_network(config)")
            record("Builder.build_serialized_network", network.name)
            problems = list(network._errors)
            flag_names = {f.name for f in config._flags}
            if network._onnx_bytes is None:
                problems.append("empty network")
            if network._strongly_typed and flag_names & {"FP16", "INT8", "BF16", "FP8"}:
                problems.append("precision flags are not allowed on a strongly typed network")
            problems += _check_profiles(network, config)
            if config._device == m.DeviceType.DLA:
                if not 0 <= config._dla_core < m.state.dla_cores:
                    problems.append(f"DLA core {config._dla_core} does not exist ({m.state.dla_cores} cores)")
                if "GPU_FALLBACK" not in flag_names:
                    problems.append("TopK cannot run on DLA and GPU fallback is off")
                if not network._strongly_typed and not flag_names & {"FP16", "INT8"}:
                    problems.append("DLA needs FP16 or INT8")
            dla_layers = 0
            if config._device == m.DeviceType.DLA:
                dynamic = any(
                    len({s for s in shapes}) > 1 for p in config._profiles for shapes in p._shapes.values()
                )
                if (
                    dynamic
                ):  # DLA needs min = opt = max; with GPU fallback everything silently runs on the GPU
                    log(
                        self._logger,
                        Severity.WARNING,
                        "DLA does not support dynamic shapes: layers fall back to GPU",
                    )
                else:
                    dla_layers = sum(config.can_run_on_DLA(layer) for layer in network._layers)
            calibration = None
            if "INT8" in flag_names:
                if config._calibrator is not None:
                    calibration = _calibrate(network, config)
                elif not network._has_qdq:
                    problems.append("INT8 without a calibrator or Q/DQ nodes")
            if network._has_qdq and not network._strongly_typed and "INT8" not in flag_names:
                # TensorRT 8.x: explicit quantization in a weakly typed network needs the INT8 flag.
                problems.append("Q/DQ layers in a weakly typed network without BuilderFlag.INT8")
            if problems or m.state.build_returns_none:
                for p in problems:
                    log(self._logger, Severity.ERROR, p)
                return None
            key = hashlib.sha256(network._onnx_bytes + repr(sorted(flag_names)).encode()).hexdigest()[:16]
            hit = None
            if config._timing_cache is not None:
                hit = key in config._timing_cache._keys
                if not hit:
                    config._timing_cache._keys.append(key)
            header = {
                "version": version,
                "flags": sorted(flag_names),
                "strongly_typed": network._strongly_typed,
                "inputs": [[t.name, t.dtype.name, list(t.shape)] for t in network._inputs],
                "outputs": [[t.name, t.dtype.name, list(t.shape)] for t in network._outputs],
                "profiles": [
                    {n: [list(s) for s in shapes] for n, shapes in p._shapes.items()}
                    for p in config._profiles
                ],
                "hardware": config._hardware.name if config._hardware is not None else None,
                "dla_core": config._dla_core if config._device == m.DeviceType.DLA else None,
                "dla_layers": dla_layers,
                "fp32_layers": sorted(
                    layer.name for layer in network._layers if layer._precision == m.DataType.FLOAT
                ),
                "calibration": calibration,
                "qdq": network._has_qdq,
            }
            m.state.builds.append(
                {**header, "timing_cache_hit": hit, "pools": {p.name: v for p, v in config._pools.items()}}
            )
            blob = json.dumps(header).encode()
            return IHostMemory(MAGIC + struct.pack("<I", len(blob)) + blob + network._onnx_bytes)

    def _check_profiles(network: INetworkDefinition, config: IBuilderConfig) -> list[str]:
        problems = []
        dynamic = [t for t in network._inputs if -1 in t.shape]
        if dynamic and not config._profiles:
            problems.append(
                "Network has dynamic or shape inputs, but no optimization profile has been defined"
            )
        for k, profile in enumerate(config._profiles):
            for t in network._inputs:
                if t.name not in profile._shapes:
                    if -1 in t.shape:
                        problems.append(f"profile {k}: no shape for dynamic input {t.name}")
                    continue
                for shape in profile._shapes[t.name]:
                    if len(shape) != len(t.shape) or any(
                        d not in (-1, s) for d, s in zip(t.shape, shape, strict=False)
                    ):
                        problems.append(f"profile {k}: {t.name} shape {shape} does not fit {t.shape}")
            for name in profile._shapes:
                if name not in {t.name for t in network._inputs}:
                    problems.append(f"profile {k}: {name} is not a network input")
        return problems

    def _calibrate(network: INetworkDefinition, config: IBuilderConfig) -> dict[str, Any]:
        calib = config._calibrator
        cached = calib.read_calibration_cache()
        record("Calibrator.read_calibration_cache", bool(cached))
        if cached:
            if not bytes(cached).startswith(CALIB_MAGIC):
                raise ValueError("calibration cache is not a fake TensorRT cache")
            return {"from_cache": True, **json.loads(bytes(cached)[len(CALIB_MAGIC) :])}
        profile = config._calibration_profile or (config._profiles[0] if config._profiles else None)
        batch = calib.get_batch_size()
        names = [t.name for t in network._inputs]
        batches = 0
        while True:
            ptrs = calib.get_batch(names)
            if not ptrs:
                break
            if len(ptrs) != len(names) or not all(isinstance(p, int) and p for p in ptrs):
                raise ValueError(f"get_batch must return one device pointer per input {names}, got {ptrs!r}")
            for t, ptr in zip(network._inputs, ptrs, strict=True):
                shape = profile._shapes[t.name][1] if profile is not None else t.shape
                if shape[0] != batch:
                    raise ValueError(f"calibration batch {batch} differs from the profile's opt {shape}")
                data = _read(ptr, shape, np_types[t.dtype])
                if data.dtype.kind == "f" and not np.isfinite(data).all():
                    raise ValueError(f"calibration input {t.name} has non-finite values")
            batches += 1
        info = {"batches": batches, "batch_size": batch, "inputs": names}
        calib.write_calibration_cache(memoryview(CALIB_MAGIC + json.dumps(info).encode()))
        record("Calibrator.write_calibration_cache", batches)
        return {"from_cache": False, **info}

    m.Builder = Builder

    # ---- runtime --------------------------------------------------------------------------------------
    class ICudaEngine:
        def __init__(self, header: dict[str, Any], onnx_bytes: bytes) -> None:
            self._header, self._onnx_bytes = header, onnx_bytes
            self._io = [(n, "INPUT", d, tuple(s)) for n, d, s in header["inputs"]] + [
                (n, "OUTPUT", d, tuple(s)) for n, d, s in header["outputs"]
            ]
            self.name = "fake-engine"
            self.num_layers = 1

        num_io_tensors = property(lambda self: len(self._io))
        num_optimization_profiles = property(lambda self: max(1, len(self._header["profiles"])))

        def _find(self, name: str) -> tuple[str, str, str, tuple[int, ...]]:
            for item in self._io:
                if item[0] == name:
                    return item
            raise KeyError(name)

        def get_tensor_name(self, index: int) -> str:
            return self._io[index][0]

        def get_tensor_mode(self, name: str) -> Any:
            return getattr(m.TensorIOMode, self._find(name)[1])

        def get_tensor_dtype(self, name: str) -> Any:
            return getattr(m.DataType, self._find(name)[2])

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self._find(name)[3]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            shapes = self._header["profiles"][profile_index][name]
            return [tuple(s) for s in shapes]

        def create_execution_context(self) -> IExecutionContext:
            record("Engine.create_execution_context")
            return IExecutionContext(self)

        def serialize(self) -> IHostMemory:
            blob = json.dumps(self._header).encode()
            return IHostMemory(MAGIC + struct.pack("<I", len(blob)) + blob + self._onnx_bytes)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self._shapes: dict[str, tuple[int, ...]] = {}
            self._addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = dims(tuple(shape), "set_input_shape")
            record("Context.set_input_shape", name, shape)
            _, mode, _, declared = self.engine._find(name)
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            ok = (
                mode == "INPUT"
                and len(shape) == len(declared)
                and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))
            )
            if ok:
                self._shapes[name] = shape
            return ok

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            _, mode, _, declared = self.engine._find(name)
            if mode == "INPUT":
                return self._shapes.get(name, declared)
            batch = next(iter(self._shapes.values()))[0] if self._shapes else -1
            return tuple(batch if d == -1 else d for d in declared)

        def set_tensor_address(self, name: str, address: int) -> bool:
            if not isinstance(address, int) or isinstance(address, bool) or address == 0:
                raise TypeError(f"set_tensor_address({name}): a non-null int address, got {address!r}")
            self.engine._find(name)
            record("Context.set_tensor_address", name, address)
            self._addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            if not isinstance(stream_handle, int):
                raise TypeError(f"execute_async_v3: the stream handle is an int, got {stream_handle!r}")
            record("Context.execute_async_v3", stream_handle)
            inputs = [item for item in self.engine._io if item[1] == "INPUT"]
            outputs = [item for item in self.engine._io if item[1] == "OUTPUT"]
            if any(name not in self._shapes for name, *_ in inputs):
                return False
            if any(name not in self._addresses for name, *_ in self.engine._io):
                return False
            feed = {
                name: _read(self._addresses[name], self._shapes[name], np_types[getattr(m.DataType, dt)])
                for name, _, dt, _ in inputs
            }
            session = _session(self.engine._onnx_bytes)
            results = session.run([name for name, *_ in outputs], feed)
            fp16_flag = "FP16" in self.engine._header["flags"]
            m.state.executions.append(
                {"addresses": dict(self._addresses), "shapes": dict(self._shapes), "stream": stream_handle}
            )
            for (name, _, dt, _), value in zip(outputs, results, strict=True):
                want = np_types[getattr(m.DataType, dt)]
                value = np.asarray(value)
                if fp16_flag and value.dtype.kind == "f":
                    value = value.astype(np.float16)
                if m.state.perturb is not None:
                    value = m.state.perturb(name, value)
                value = np.ascontiguousarray(value.astype(want))
                if value.shape != self.get_tensor_shape(name):
                    raise AssertionError(
                        f"{name}: engine output {value.shape} vs {self.get_tensor_shape(name)}"
                    )
                ctypes.memmove(self._addresses[name], value.ctypes.data, value.nbytes)
            return True

    class Runtime:
        def __init__(self, logger: Any) -> None:
            check_type(logger, ILogger, "Runtime(logger)")
            record("Runtime")
            self._logger = logger
            if vt >= (8, 6, 0):
                self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, serialized: Any) -> ICudaEngine | None:
            data = bytes(serialized)
            record("Runtime.deserialize_cuda_engine", len(data))
            if not data.startswith(MAGIC):
                log(self._logger, Severity.ERROR, "IRuntime::deserializeCudaEngine: magic tag does not match")
                return None
            (size,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
            start = len(MAGIC) + 4
            header = json.loads(data[start : start + size])
            built = _version_tuple(header["version"])
            compatible = "VERSION_COMPATIBLE" in header["flags"]
            if compatible:
                # Support matrix: forward within a major, and across majors 8 -> 10 and 10 -> 11 only.
                majors_ok = built[0] == vt[0] or (built[0], vt[0]) in ((8, 10), (10, 11))
                ok = vt >= built and majors_ok and getattr(self, "engine_host_code_allowed", False)
            else:
                ok = vt == built  # the exact release, patch included
            if not ok:
                log(
                    self._logger,
                    Severity.ERROR,
                    f"The engine plan file is not compatible with this version of TensorRT, expecting library "
                    f"version {version} got {header['version']}",
                )
                return None
            return ICudaEngine(header, data[start + size :])

    m.Runtime, m.ICudaEngine, m.IExecutionContext = Runtime, ICudaEngine, IExecutionContext
    return m


def _read(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    nbytes = count * np.dtype(dtype).itemsize
    raw = (ctypes.c_char * nbytes).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).copy()


def _session(onnx_bytes: bytes) -> Any:
    import onnxruntime as ort

    key = hashlib.sha256(onnx_bytes).hexdigest()
    if key not in _SESSIONS:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        _SESSIONS[key] = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def fake_plan_header(plan: bytes) -> dict[str, Any]:
    """The build settings a fake plan records (for tests)."""
    assert plan.startswith(MAGIC), "not a fake TensorRT plan"
    (size,) = struct.unpack("<I", plan[len(MAGIC) : len(MAGIC) + 4])
    return json.loads(plan[len(MAGIC) + 4 : len(MAGIC) + 4 + size])
