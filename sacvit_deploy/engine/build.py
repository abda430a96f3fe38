"""``build-engine``: TensorRT engines from an export folder, for the TensorRT installed here.

Small steps that compose (Polygraphy-style), each usable on its own:

* :func:`onnx_for_build`: the ONNX bytes to parse (float16 rewrite on TensorRT 11 with ``--fp16``);
* :func:`network_from_onnx`: builder network + ONNX parser; every parser error is reported with the
  node's index, name and operator;
* :func:`constrain_fp32_layers`: on weakly typed networks (TensorRT < 10.12, or INT8 up to 10.x)
  with FP16/INT8, LayerNorm, Softmax, the exit gate and the token-score path are pinned to float32
  (``layer.precision``, ``set_output_type``);
* :func:`config_for`: flags, workspace, optimization profile, timing cache, calibrator, DLA,
  version/hardware compatibility;
* :func:`build_serialized`: the plan bytes, written as a standard ``.engine`` file (nothing glued on:
  what the engine was built with goes to ``engines/manifest.json``);
* :func:`build_engines`: all of it for stage 1, stage 2 (and the baseline), then the parity check
  against ONNX Runtime on real images, then the staged publish.

Precision, per TensorRT version (version questions are answered in ``trt_version.py``):

* < 10.12, ``--fp16``: ``BuilderFlag.FP16`` + ``OBEY_PRECISION_CONSTRAINTS`` and the FP32 islands;
* 10.12+ and 11.x, ``--fp16``: weak typing is deprecated (10.12) or gone (11.0), so the ONNX graph is
  rewritten to float16 with the same islands kept float32 (``fp16.py``) and built ``STRONGLY_TYPED``;
* ``--int8``: an entropy calibrator on <= 10.x (implicit quantization, weakly typed, so deprecated
  from 10.12; removed in 11);
* a Q/DQ export (``sacvit-deploy quantize``): explicit quantization, no calibrator. 10.x and 11.x
  build it STRONGLY_TYPED (the Q/DQ nodes fix INT8, everything else stays FP32); 8.x builds it
  weakly typed with ``BuilderFlag.INT8``, as its explicit-quantization mode requires.

DLA (``--dla-core``): the DLA runs no dynamic dimension, so each engine gets a static profile
(min = opt = max, at its opt batch); the runtime pads smaller batches and splits larger ones. The
number of layers the builder config says can run on the DLA (``can_run_on_DLA``) is recorded.

Messages go to the ``logging`` logger of this module (plain text); the CLI prints them.

FP16 is never silently dropped: when the builder reports no fast FP16 (<= 10.x) the engine is still
built FP16 with a warning, and ``--strict`` makes that an error.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Set, Tuple, Union

from sacvit_deploy.backends.trt_logger import make_logger as _trt_logger
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.extras import install_hint
from sacvit_deploy.core.fileinfo import is_within
from sacvit_deploy.core.manifest import (
    ArtifactFile,
    Manifest,
    TensorRTInfo,
    TensorSpec,
    safe_child,
    sha256_file,
)
from sacvit_deploy.core.publish import prepare_output_folder, publish, staging_folder
from sacvit_deploy.core.version import __version__

ROLES = ("stage1", "stage2", "baseline")
HARD_FRACTION_DEFAULT = 0.23  # LF-ViT's operating point: about 23% of ImageNet reaches stage 2
ISLAND_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE", "TOPK")
ENGINE_SUFFIX = ".engine"
MAX_CALIBRATION_IMAGES = 1024  # preprocessed in memory: about 0.6 MB each at 224 px
_log = logging.getLogger(__name__)


class EngineBuildError(SacvitError):
    """An engine cannot be built: bad option, parse failure, build failure, failed parity with --strict."""


MAX_PROFILE_BATCH = 1024


@dataclass
class BuildOptions:
    fp16: bool = False
    int8: bool = False
    calib_images: Optional[Path] = None
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    stage2_opt_batch: Optional[int] = None  # default: the expected hard fraction of opt_batch
    workspace_gib: float = 4.0
    timing_cache: Optional[Path] = None
    version_compatible: bool = False
    hardware_compat: str = "none"  # none | ampere+ | same-cc
    dla_core: Optional[int] = None
    strict: bool = False
    baseline: Optional[bool] = None  # None: build it when the export has one
    parity_images: int = 32
    buffers: str = "auto"  # device memory (calibration, parity check): auto|cuda-python|pycuda|torch
    qdq: bool = False  # set from the export's manifest: its graphs carry Q/DQ nodes (quantize)

    @property
    def precision(self) -> str:
        if self.qdq:
            return "int8-qdq"
        if self.int8:
            return "int8+fp16" if self.fp16 else "int8"
        return "fp16" if self.fp16 else "fp32"

    def validate(self) -> None:
        from sacvit_deploy.backends.trt_version import HARDWARE_COMPAT

        if self.max_batch > MAX_PROFILE_BATCH:
            raise EngineBuildError(
                f"--max-batch {self.max_batch}: at most {MAX_PROFILE_BATCH} (the profile's buffers are allocated "
                "for it: 1024 images of 224 px are 0.6 GB of input)"
            )
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EngineBuildError(
                f"batch sizes must satisfy 1 <= --min-batch ({self.min_batch}) <= --opt-batch ({self.opt_batch}) "
                f"<= --max-batch ({self.max_batch})"
            )
        if (
            self.stage2_opt_batch is not None
            and not self.min_batch <= self.stage2_opt_batch <= self.max_batch
        ):
            raise EngineBuildError(
                f"--stage2-opt-batch {self.stage2_opt_batch} must be within --min-batch..--max-batch "
                f"({self.min_batch}..{self.max_batch})"
            )
        if not self.workspace_gib > 0:
            raise EngineBuildError(f"--workspace {self.workspace_gib}: give a positive size in GiB")
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise EngineBuildError(
                f"--hardware-compat {self.hardware_compat}: use one of {', '.join(HARDWARE_COMPAT)}"
            )
        if self.int8 and self.calib_images is None:
            raise EngineBuildError(
                "--int8 needs --calib-images DIR: a folder of a few hundred representative images"
            )
        if self.dla_core is not None and self.dla_core < 0:
            raise EngineBuildError(f"--dla-core {self.dla_core}: DLA cores are numbered from 0")
        if self.dla_core is not None and not (self.fp16 or self.int8):
            raise EngineBuildError("--dla-core needs --fp16 or --int8: the DLA runs FP16 and INT8 only")
        if self.dla_core is not None and self.hardware_compat != "none":
            raise EngineBuildError(
                "--dla-core and --hardware-compat do not combine: DLA engines are device-specific"
            )
        if self.parity_images < 1:
            raise EngineBuildError("the parity check needs at least one image")


@dataclass
class BuildResult:
    folder: Path
    manifest: Manifest
    seconds: float
    files: Dict[str, int] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)


# ---- small steps ------------------------------------------------------------------------------------
def make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps errors (for our messages) and logs each warning once."""
    return _trt_logger(trt, _log)


def network_flags(trt: Any, version: Any, strongly_typed: Optional[bool] = None) -> Tuple[int, List[str]]:
    """The creation flags: EXPLICIT_BATCH below 10; STRONGLY_TYPED when the build is strongly typed
    (11.x always; 10.12+ unless calibrated INT8: :meth:`TrtVersion.builds_strongly_typed`)."""
    from sacvit_deploy.backends.trt_version import enum_member

    if strongly_typed is None:
        strongly_typed = version.builds_strongly_typed()
    names = []
    if version.needs_explicit_batch_flag():
        names.append("EXPLICIT_BATCH")
    if strongly_typed and version.has_strongly_typed_flag():
        names.append("STRONGLY_TYPED")
    bits = 0
    for name in names:
        bits |= 1 << int(enum_member(trt, "NetworkDefinitionCreationFlag", name))
    return bits, names


def onnx_for_build(
    path: Path, strongly_typed: bool, fp16: bool, reduced: bool
) -> Tuple[bytes, Any, Optional[dict]]:
    """The ONNX bytes to parse, the FP32 islands (when a reduced precision needs them), the FP16 rewrite summary.

    Strongly typed + FP16: the float16 rewrite of the graph. Otherwise the file as exported.
    """
    import onnx

    from sacvit_deploy.engine.fp16 import convert_to_fp16, fp32_islands

    if strongly_typed and fp16:
        conversion = convert_to_fp16(onnx.load(str(path)))
        return conversion.model.SerializeToString(), conversion.islands, conversion.summary()
    islands = fp32_islands(onnx.load(str(path))) if reduced else None
    return path.read_bytes(), islands, None


def describe_parser_error(error: Any, nodes: List[Tuple[str, str]]) -> str:
    """One parser error with the node's index, name and operator (looked up in the graph when the
    TensorRT version's ParserError has no ``node_name()``)."""
    index = int(error.node())
    name = error.node_name() if hasattr(error, "node_name") else ""
    op = error.node_operator() if hasattr(error, "node_operator") else ""
    if 0 <= index < len(nodes):
        name = name or nodes[index][0]
        op = op or nodes[index][1]
    code = getattr(error.code(), "name", str(error.code()))
    where = f"node {index}" if index >= 0 else "graph"
    if name:
        where += f" '{name}'"
    if op:
        where += f" ({op})"
    return f"{where}: {code}: {error.desc()}"


def network_from_onnx(
    trt: Any,
    builder: Any,
    logger: Any,
    onnx_bytes: bytes,
    path: Path,
    flags: int,
) -> Tuple[Any, Any]:
    """Parse ``onnx_bytes`` into a new network; every parser error is logged, the first one raised."""
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(onnx_bytes, str(path))
    if ok and parser.num_errors == 0:
        return network, parser
    import onnx

    try:
        graph = onnx.load_model_from_string(onnx_bytes).graph
        nodes = [(n.name, n.op_type) for n in graph.node]
    except Exception:  # the parser already said why the bytes are unreadable
        nodes = []
    errors = [describe_parser_error(parser.get_error(i), nodes) for i in range(parser.num_errors)]
    for line in errors:
        _log.error("parser: %s: %s", path.name, line)
    first = errors[0] if errors else "; ".join(logger.errors[-1:]) or "no detail"
    more = f" (and {len(errors) - 1} more, listed above)" if len(errors) > 1 else ""
    raise EngineBuildError(
        f"{path.name}: TensorRT {trt.__version__} cannot parse it: {first}{more}; "
        "re-export for this TensorRT (sacvit-deploy export --target-trt ...) or report the node"
    )


def constrain_fp32_layers(trt: Any, network: Any, island_tensors: FrozenSet[str]) -> List[str]:
    """Pin LayerNorm, Softmax, the gate and the token-score path to float32 (TensorRT <= 10, FP16/INT8).

    A layer is pinned when its type is one of :data:`ISLAND_LAYER_TYPES` or it computes a tensor of
    the ONNX FP32 islands. Only float outputs get ``set_output_type`` (TopK's indices stay int32).
    """
    kinds = {getattr(trt.LayerType, n) for n in ISLAND_LAYER_TYPES if hasattr(trt.LayerType, n)}
    floats = {trt.float32, trt.float16}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(k) for k in range(layer.num_outputs)]
        inputs = [layer.get_input(k) for k in range(layer.num_inputs)]
        if layer.type not in kinds and not any(t is not None and t.name in island_tensors for t in outputs):
            continue
        float_outputs = [k for k, t in enumerate(outputs) if t is not None and t.dtype in floats]
        if not float_outputs and not any(t is not None and t.dtype in floats for t in inputs):
            continue
        layer.precision = trt.float32
        for k in float_outputs:
            layer.set_output_type(k, trt.float32)
        pinned.append(layer.name)
    return pinned


Shapes = Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]]


def profile_shapes(inputs: List[TensorSpec], low: int, opt: int, high: int) -> Shapes:
    """min/opt/max per input: the batch axis from the options, the other dims from the graph."""
    shapes: Shapes = {}
    for spec in inputs:
        rest = tuple(int(d) for d in spec.shape[1:])
        if isinstance(spec.shape[0], int):  # a fixed-batch export
            fixed = (spec.shape[0], *rest)
            shapes[spec.name] = (fixed, fixed, fixed)
        else:
            shapes[spec.name] = ((low, *rest), (opt, *rest), (high, *rest))
    return shapes


def config_for(
    trt: Any,
    version: Any,
    builder: Any,
    options: BuildOptions,
    shapes: Shapes,
    timing_cache: Any = None,
    calibrator: Any = None,
    calibration_batch: Optional[int] = None,
    strongly_typed: Optional[bool] = None,
) -> Tuple[Any, List[str]]:
    """A builder config for one engine; returns it and the names of the flags set.

    Precision flags only on weakly typed builds (``strongly_typed`` False; default: what the version
    and options call for). Failures TensorRT reports by return value (an invalid optimization or
    calibration profile) raise :class:`EngineBuildError`.
    """
    from sacvit_deploy.backends.trt_version import HARDWARE_COMPAT, enum_member

    if strongly_typed is None:
        strongly_typed = version.builds_strongly_typed(options.int8, options.qdq)

    config = builder.create_builder_config()
    flags: List[str] = []

    def flag(name: str) -> None:
        config.set_flag(enum_member(trt, "BuilderFlag", name))
        flags.append(name)

    config.set_memory_pool_limit(
        enum_member(trt, "MemoryPoolType", "WORKSPACE"), int(options.workspace_gib * (1 << 30))
    )
    if version.has_precision_flags() and not strongly_typed:
        if options.fp16:
            flag("FP16")
        if options.int8 or (options.qdq and not version.has_strongly_typed_flag()):
            flag("INT8")  # 8.x explicit quantization: the INT8 flag, no calibrator
        if options.fp16 or options.int8:
            flag(
                "OBEY_PRECISION_CONSTRAINTS"
                if hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")
                else "PREFER_PRECISION_CONSTRAINTS"
            )
    if options.version_compatible:
        flag("VERSION_COMPATIBLE")
    if options.hardware_compat != "none":
        config.hardware_compatibility_level = enum_member(
            trt, "HardwareCompatibilityLevel", HARDWARE_COMPAT[options.hardware_compat][0]
        )
    if options.dla_core is not None:
        config.default_device_type = enum_member(trt, "DeviceType", "DLA")
        config.DLA_core = int(options.dla_core)
        flag("GPU_FALLBACK")  # TopK, Gather and friends have no DLA implementation
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(
            f"TensorRT refused the optimization profile {_describe_shapes(shapes)} (see TensorRT's message "
            "above); check --min-batch/--opt-batch/--max-batch"
        )
    if timing_cache is not None and not config.set_timing_cache(timing_cache, False):
        raise EngineBuildError(
            "the timing cache is from another GPU or TensorRT; delete the --timing-cache file and rebuild"
        )
    if calibrator is not None:
        config.int8_calibrator = calibrator
        calibration = builder.create_optimization_profile()
        for name, (_, opt, _) in shapes.items():
            fixed = (int(calibration_batch or opt[0]), *opt[1:])
            calibration.set_shape(name, fixed, fixed, fixed)
        if not config.set_calibration_profile(calibration):
            raise EngineBuildError(
                f"TensorRT refused the INT8 calibration profile (batch {calibration_batch}); "
                "try another --opt-batch"
            )
    return config, flags


def _describe_shapes(shapes: Shapes) -> str:
    return ", ".join(f"{name} batch {low[0]}..{high[0]}" for name, (low, _opt, high) in shapes.items())


def dla_layer_count(network: Any, config: Any) -> Dict[str, int]:
    """How many of the network's layers the config says can run on the DLA (the rest fall back to the GPU)."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    return {"dla": sum(bool(config.can_run_on_DLA(layer)) for layer in layers), "layers": len(layers)}


def build_serialized(builder: Any, network: Any, config: Any, logger: Any, what: str) -> bytes:
    """The serialized engine (plan) bytes; TensorRT's last errors on failure."""
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        detail = "; ".join(logger.errors[-3:]) or "no detail from TensorRT"
        raise EngineBuildError(
            f"{what}: TensorRT could not build the engine ({detail}); try a larger --workspace, or report it"
        )
    return bytes(plan)


def load_timing_cache(config: Any, path: Optional[Path]) -> Any:
    """A timing cache from ``path`` when it exists (else empty), shared by every build of this run."""
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if cache is None:
        _log.warning("%s: not a timing cache of this TensorRT; starting a new one", path)
        cache = config.create_timing_cache(b"")
    elif data:
        _log.info("timing cache: reusing %s (%.0f KiB)", path, len(data) / 1024)
    return cache


def save_timing_cache(cache: Any, path: Path) -> None:
    data = bytes(cache.serialize())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def expected_hard_fraction(manifest: Manifest) -> Tuple[float, str]:
    """The share of images expected to reach stage 2: measured at export if recorded, else LF-ViT's 23%."""
    rows = manifest.verification.rows if manifest.verification else []
    rates = [r["exit_rate"] for r in rows if "exit_rate" in r]
    rate = rates[0] if rates else None
    if isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0:
        return 1.0 - float(rate), "the export's verification data"
    return HARD_FRACTION_DEFAULT, "LF-ViT's operating point (about 23% of images reach stage 2)"


def stage2_opt_batch(options: BuildOptions, hard_fraction: float) -> int:
    if options.stage2_opt_batch is not None:
        return options.stage2_opt_batch
    opt = max(1, math.ceil(hard_fraction * options.opt_batch - 1e-9))
    return min(max(opt, options.min_batch), options.max_batch)


# ---- checks before building -----------------------------------------------------------------------
def check_options(trt: Any, version: Any, options: BuildOptions, gpu: Any, manifest: Manifest) -> List[str]:
    """Options the installed TensorRT (or this GPU, or the export) cannot honour: one clear error each.

    Returns warnings: what this project's policy advises against but TensorRT may still do.
    """
    warnings: List[str] = []
    from sacvit_deploy.backends.trt_version import HARDWARE_COMPAT

    if options.qdq and (options.int8 or options.fp16):
        raise EngineBuildError(
            "this export is already INT8 (Q/DQ graphs from `sacvit-deploy quantize`): build it without "
            f"{'--int8' if options.int8 else '--fp16'} (Q/DQ fix INT8 where they are, the rest runs FP32); "
            "for FP16 build the float export"
        )
    if options.int8 and not version.has_int8_calibrator():
        raise EngineBuildError(
            f"--int8 is not supported on TensorRT {version}: its INT8 calibrator is gone, INT8 there needs "
            "Q/DQ nodes in the ONNX graph; run `sacvit-deploy quantize EXPORT --calib-images DIR` and build "
            "its output (without --int8), or build --fp16"
        )
    if options.version_compatible and not version.has_version_compatible():
        raise EngineBuildError(
            f"--version-compatible needs TensorRT 8.6 or later; this is TensorRT {version} (drop the option)"
        )
    level = options.hardware_compat
    if level != "none" and not version.has_hardware_compat(level):
        need = ".".join(str(p) for p in HARDWARE_COMPAT[level][1])
        raise EngineBuildError(
            f"--hardware-compat {level} needs TensorRT {need} or later; this is TensorRT {version}"
        )
    if level == "ampere+" and _cc(gpu.compute_capability) < (8, 0):
        raise EngineBuildError(
            f"--hardware-compat ampere+ must be built on an Ampere or newer GPU; {gpu.name} has compute "
            f"capability {gpu.compute_capability}"
        )
    exporter = manifest.exporter
    if exporter is not None and exporter.layernorm == "native" and not version.has_native_layernorm():
        raise EngineBuildError(
            f"the graphs use LayerNormalization, which the TensorRT {version} parser lacks; "
            "re-export with: sacvit-deploy export CKPT --target-trt 8.5"
        )
    opset = exporter.opset if exporter is not None else None
    if opset is not None and opset > version.max_onnx_opset():
        # The parser itself does not refuse newer opsets (it warns and tries); the ceiling is our policy.
        message = (
            f"the graphs are opset {opset}, above {version.max_onnx_opset()}, the highest opset TensorRT "
            f"{version}'s ONNX parser documents; sacvit-deploy's policy is to export at most that "
            f"(re-export with --opset {version.max_onnx_opset()}); TensorRT will try anyway"
        )
        if options.strict:
            raise EngineBuildError(f"{message}; --strict refuses it")
        warnings.append(message)
    return warnings


def _cc(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split("."))
    except ValueError:
        return (0,)


def _roles(manifest: Manifest, export_dir: Path, baseline: Optional[bool]) -> List[str]:
    missing = [r for r in ("stage1", "stage2") if r not in manifest.graphs]
    if missing:
        raise EngineBuildError(
            f"{export_dir}: the manifest has no {' or '.join(missing)} graph; re-run export"
        )
    if baseline and "baseline" not in manifest.graphs:
        raise EngineBuildError(
            f"--baseline: {export_dir} has no baseline.onnx; re-export with --baseline (or drop --baseline)"
        )
    with_baseline = "baseline" in manifest.graphs if baseline is None else baseline
    return ["stage1", "stage2"] + (["baseline"] if with_baseline else [])


# ---- the whole build ---------------------------------------------------------------------------------
def _import_tensorrt(export_dir: Path) -> Any:
    """``import tensorrt``; when it is missing, the install hint plus what to do without a GPU."""
    from sacvit_deploy.backends.trt_version import TensorRTError, TensorRTNotInstalled, import_tensorrt

    try:
        return import_tensorrt()
    except TensorRTNotInstalled as exc:
        raise TensorRTError(
            f"{exc}. build-engine also needs an NVIDIA GPU: an engine is built on, and for, the GPU it "
            f"runs on. Without one, run the ONNX graphs: sacvit-deploy infer IMAGES --artifacts {export_dir}"
        ) from None


def build_engines(
    export_dir: Union[str, Path],
    out: Union[str, Path],
    options: BuildOptions,
) -> BuildResult:
    """Build the engines of ``export_dir`` into ``out`` with a manifest, after a parity check.

    Progress and warnings are logged (``logging``, this module's logger); the warnings are also in
    the result. Without TensorRT: a one-line :class:`TensorRTError` with the install hint and what
    to run without an NVIDIA GPU (the ONNX graphs).
    """
    from sacvit_deploy.backends import gpu as gpu_module
    from sacvit_deploy.backends.trt_version import installed_version

    start = time.perf_counter()
    options.validate()
    export_dir, out = Path(export_dir), Path(out)
    manifest = Manifest.load(export_dir)
    if not manifest.graphs:
        raise EngineBuildError(
            f"{export_dir}: has no ONNX graphs (an engines folder?); pass the export folder"
        )
    if is_within(out, export_dir):  # the folder itself, or a folder inside it
        raise EngineBuildError(f"--out {out}: write engines to their own folder, not into the export folder")
    if options.timing_cache is not None and options.timing_cache.resolve().parent == out.resolve():
        raise EngineBuildError(
            f"--timing-cache {options.timing_cache}: keep the timing cache outside the engines folder (--out {out})"
        )
    roles = _roles(manifest, export_dir, options.baseline)
    options = replace(options, qdq=bool(manifest.quantization))
    from sacvit_deploy.backends.tensorrt_backend import resolve_buffers

    options = replace(options, buffers=resolve_buffers(options.buffers))

    trt = _import_tensorrt(export_dir)
    version = installed_version(trt)
    gpu = gpu_module.detect_gpu(0)
    warnings: List[str] = []
    for message in check_options(trt, version, options, gpu, manifest):
        warnings.append(message)
        _log.warning(message)
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    if builder is None:
        raise EngineBuildError(f"TensorRT could not create a builder ({'; '.join(logger.errors[-2:])})")
    if options.dla_core is not None:
        cores = int(builder.num_DLA_cores)
        if cores == 0:
            raise EngineBuildError(
                f"--dla-core {options.dla_core}: this device has no DLA (builder.num_DLA_cores is 0); "
                "DLA cores exist on Jetson Xavier and Orin only"
            )
        if options.dla_core >= cores:
            raise EngineBuildError(
                f"--dla-core {options.dla_core}: this device has {cores} DLA core(s), 0..{cores - 1}"
            )
    fast_fp16 = None
    if options.fp16 and version.has_fast_fp16_query():
        fast_fp16 = bool(builder.platform_has_fast_fp16)
        if not fast_fp16:
            message = f"{gpu.name} reports no fast FP16: the FP16 engines are built as asked but may be slow"
            if options.strict:
                raise EngineBuildError(f"{message}; --strict refuses it (build without --fp16)")
            warnings.append(message)
            _log.warning(message)
    if options.fp16 and version.known_fp16_issue():
        _log.warning(version.known_fp16_issue())
    strongly_typed = version.builds_strongly_typed(options.int8, options.qdq)
    if options.int8 and version.weak_typing_deprecated():
        _log.warning(
            "TensorRT %s deprecates weak typing: calibrated INT8 still builds weakly typed (BuilderFlag.INT8 "
            "and an entropy calibrator); TensorRT 11 needs INT8 as Q/DQ nodes in the graph",
            version,
        )
    hard_fraction, hard_source = expected_hard_fraction(manifest)
    opt2 = stage2_opt_batch(options, hard_fraction)
    previous = prepare_output_folder(out, EngineBuildError, "build")

    # Images first: a bad --calib-images folder fails before minutes of building.
    from sacvit_deploy.engine.int8_calibrator import load_images

    images, image_source = load_images(
        options.calib_images,
        manifest.preprocess,
        MAX_CALIBRATION_IMAGES if options.int8 else options.parity_images,
    )
    reduced = options.fp16 or options.int8
    flags_bits, net_flag_names = network_flags(trt, version, strongly_typed)
    calibration: Optional[Dict[str, Any]] = None
    entries: Dict[str, ArtifactFile] = {}
    flag_names: List[str] = []
    with staging_folder(out) as staging:
        timing_config = builder.create_builder_config()
        timing_cache = load_timing_cache(timing_config, options.timing_cache)
        reference: Dict[str, Any] = {}
        if options.int8:
            reference = _active_reference(export_dir, manifest)
            calibration = {"images": image_source, "images_sha256": None, "caches": {}}
        try:
            for role in roles:
                t0 = time.perf_counter()
                graph = manifest.graphs[role]
                graph_path = _checked_graph(export_dir, manifest, role)
                onnx_bytes, islands, fp16_summary = onnx_for_build(
                    graph_path, strongly_typed, options.fp16, reduced
                )
                network, _parser = network_from_onnx(trt, builder, logger, onnx_bytes, graph_path, flags_bits)
                pinned: List[str] = []
                if reduced and not strongly_typed and islands is not None:
                    pinned = constrain_fp32_layers(trt, network, islands.tensors)
                opt = opt2 if role == "stage2" else options.opt_batch
                # DLA runs no dynamic dimension: min = opt = max (else every layer silently falls back to the GPU)
                low, high = (
                    (opt, opt) if options.dla_core is not None else (options.min_batch, options.max_batch)
                )
                shapes = profile_shapes(graph.inputs, low, opt, high)
                calibrator, calib_batch = None, None
                if options.int8:
                    calibrator, calib_batch, cache_info = _calibrator_for(
                        trt, role, graph, images, reference, out, staging, previous, options
                    )
                    calibration["caches"][role] = cache_info
                config, flag_names = config_for(
                    trt,
                    version,
                    builder,
                    options,
                    shapes,
                    timing_cache,
                    calibrator,
                    calib_batch,
                    strongly_typed,
                )
                dla = dla_layer_count(network, config) if options.dla_core is not None else None
                plan = build_serialized(builder, network, config, logger, f"{role}.onnx")
                path = staging / f"{role}{ENGINE_SUFFIX}"
                path.write_bytes(plan)
                if calibrator is not None and (staging / calibration["caches"][role]["file"]).is_file():
                    cache_file = staging / calibration["caches"][role]["file"]
                    calibration["caches"][role]["sha256"] = sha256_file(cache_file)
                seconds = time.perf_counter() - t0
                info: Dict[str, Any] = {
                    "role": role,
                    "precision": options.precision,
                    "profiles": {
                        name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])}
                        for name, s in shapes.items()
                    },
                    "onnx_sha256": graph.sha256,
                    "build_seconds": round(seconds, 2),
                }
                if reduced:
                    info["fp32_islands"] = islands.counts() if islands is not None else {}
                    if not strongly_typed:
                        info["fp32_layers"] = len(pinned)
                if fp16_summary:
                    info["fp16_onnx"] = fp16_summary
                if dla is not None:
                    info["dla_layers"] = dla
                    _log.info(
                        "%s: %d of %d layers can run on DLA core %d (static batch %d); the rest run on the GPU",
                        role, dla["dla"], dla["layers"], options.dla_core, opt,
                    )  # fmt: skip
                entries[role] = ArtifactFile(
                    file=path.name,
                    sha256=sha256_file(path),
                    size=path.stat().st_size,
                    inputs=list(graph.inputs),
                    outputs=list(graph.outputs),
                    info=info,
                )
                _log.info(
                    "built %s (%.1f MB, %s, %.1f s)", path.name, len(plan) / 2**20, options.precision, seconds
                )
                del network, _parser, config, calibrator
        finally:
            for runner in reference.values():
                runner.deactivate()
        if options.timing_cache is not None:
            save_timing_cache(timing_cache, options.timing_cache)
            _log.info("timing cache saved to %s", options.timing_cache)
        if calibration is not None:
            calibration["images_sha256"] = _images_sha(images)

        tensorrt_info: Dict[str, Any] = {
            "version": str(version),
            "gpu": gpu.name,
            "compute_capability": gpu.compute_capability,
            "precision": options.precision,
            "built": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "build_seconds": 0.0,
            "flags": flag_names,
            "network_flags": net_flag_names,
            "strongly_typed": strongly_typed,
            "fp16_path": _fp16_path(options, strongly_typed),
            "int8_path": _int8_path(options, strongly_typed),
            "version_compatible": options.version_compatible,
            "hardware_compat": options.hardware_compat,
            "dla_core": options.dla_core,
            "workspace_bytes": int(options.workspace_gib * (1 << 30)),
            "platform_has_fast_fp16": fast_fp16,
            "timing_cache": str(options.timing_cache) if options.timing_cache else None,
            "stage2_opt_batch": {
                "value": opt2,
                "hard_fraction": round(hard_fraction, 4),
                "source": hard_source,
            },
            "calibration": calibration,
            "sacvit_deploy": __version__,
        }
        engines_manifest = manifest.derive(
            source={
                "export": str(export_dir),
                "graphs": {role: manifest.graphs[role].sha256 for role in roles},
            },
            engines=entries,
            tensorrt=TensorRTInfo.from_dict(tensorrt_info),
        )
        report = _parity(export_dir, manifest, staging, engines_manifest, roles, images, options)
        engines_manifest.tensorrt.parity = report
        if not report["passed"]:
            worst = report["worst_top1_agreement"]
            message = (
                f"the {options.precision} engines agree with {report['reference']} on the top-1 class of only "
                f"{100 * worst:.1f}% of {report['images']} (need {100 * report['min_top1_agreement']:.0f}%)"
            )
            if options.strict:
                raise EngineBuildError(
                    f"{message}; --strict: nothing was written (try FP32, or another TensorRT)"
                )
            warnings.append(message)
            _log.warning("%s; check the parity table before deploying", message)
        engines_manifest.tensorrt.build["build_seconds"] = round(time.perf_counter() - start, 2)
        publish(staging, out, engines_manifest, previous)
    files = {e.file: e.size for e in entries.values()}
    return BuildResult(out, engines_manifest, time.perf_counter() - start, files, warnings)


def _int8_path(options: BuildOptions, strongly_typed: bool) -> Optional[str]:
    if options.qdq:
        how = "STRONGLY_TYPED" if strongly_typed else "BuilderFlag.INT8, no calibrator"
        return f"explicit quantization: the export's Q/DQ nodes, built {how}"
    if options.int8:
        return "implicit quantization: BuilderFlag.INT8 + entropy calibrator"
    return None


def _fp16_path(options: BuildOptions, strongly_typed: bool) -> Optional[str]:
    if not options.fp16:
        return None
    if strongly_typed:
        return "ONNX rewritten to float16 with FP32 islands, built STRONGLY_TYPED"
    return "BuilderFlag.FP16 + OBEY_PRECISION_CONSTRAINTS, FP32 islands pinned per layer"


def _checked_graph(export_dir: Path, manifest: Manifest, role: str) -> Path:
    from sacvit_deploy.core.onnx_files import external_data_files

    manifest.verify(export_dir, "graphs", roles=(role,))
    path = manifest.file_path(export_dir, manifest.graphs[role])
    external_data_files(path)  # before any parser opens it
    return path


def _images_sha(images: Any) -> str:
    from sacvit_deploy.engine.int8_calibrator import fingerprint

    return fingerprint([images])


def _active_reference(export_dir: Path, manifest: Manifest) -> Dict[str, Any]:
    """An active stage-1 reference runner: stage 2 is calibrated on stage 1's outputs."""
    from sacvit_deploy.engine.parity import reference_runners

    runners, _ = reference_runners(export_dir, manifest, ["stage1"])
    if not runners:
        raise EngineBuildError(
            "--int8 calibrates stage 2 on stage 1's outputs, which needs onnxruntime or model.safetensors in "
            f"{export_dir}; {install_hint('cpu')}"
        )
    for runner in runners.values():
        runner.activate()
    return runners


def _calibrator_for(
    trt: Any,
    role: str,
    graph: ArtifactFile,
    images: Any,
    reference: Dict[str, Any],
    out: Path,
    staging: Path,
    previous: Set[str],
    options: BuildOptions,
) -> Tuple[Any, int, Dict[str, Any]]:
    """The calibrator of one engine, its batch size, and the cache entry for the manifest."""
    import numpy as np

    from sacvit_deploy.backends.arrays import to_host
    from sacvit_deploy.engine.int8_calibrator import (
        CALIBRATION_SUFFIX,
        calibration_batches,
        fingerprint,
        make_entropy_calibrator,
    )
    from sacvit_deploy.runtime.pipeline import run_any_batch

    feeds: Dict[str, np.ndarray] = {"image": images}
    if role == "stage2":
        outputs = run_any_batch(reference["stage1"], {"image": images})
        for spec in graph.inputs[1:]:
            feeds[spec.name] = to_host(outputs[spec.name])
    feeds = {spec.name: feeds[spec.name] for spec in graph.inputs}
    batch = min(options.opt_batch, images.shape[0])
    batches = calibration_batches(feeds, batch)
    name = f"{role}{CALIBRATION_SUFFIX}"
    data_sha = fingerprint([feeds[k] for k in sorted(feeds)])
    cache_in = _previous_calibration(out, previous, role, graph.sha256, data_sha, batch)
    if cache_in is not None:
        # TensorRT does not write back a cache it read: keep it in the new folder ourselves.
        (staging / name).write_bytes(cache_in)
    calibrator = make_entropy_calibrator(trt, batches, staging / name, cache_in, options.buffers)
    entry = {
        "file": name,
        "sha256": None,
        "onnx_sha256": graph.sha256,
        "data_sha256": data_sha,
        "batch": batch,
    }
    entry["reused"] = cache_in is not None
    return calibrator, batch, entry


def _previous_calibration(
    out: Path, previous: Set[str], role: str, onnx_sha: str, data_sha: str, batch: int
) -> Optional[bytes]:
    """The cache a previous build left in ``out``, if it was made from the same graph, data and batch."""
    try:
        old = Manifest.load(out)
    except SacvitError:
        return None
    entry = old.tensorrt.calibration_cache(role) if old.tensorrt else {}
    name = entry.get("file")
    if name not in previous or (entry.get("onnx_sha256"), entry.get("data_sha256"), entry.get("batch")) != (
        onnx_sha,
        data_sha,
        batch,
    ):
        return None
    try:
        path = safe_child(out, name)
        data = path.read_bytes()
    except (SacvitError, OSError):
        return None
    return data if entry.get("sha256") and sha256_file(path) == entry["sha256"] else None


def _parity(
    export_dir: Path,
    manifest: Manifest,
    staging: Path,
    engines_manifest: Manifest,
    roles: List[str],
    images: Any,
    options: BuildOptions,
) -> Dict[str, Any]:
    from sacvit_deploy.backends.tensorrt_backend import TensorRTRunner
    from sacvit_deploy.engine.parity import compare_runners, parity_report, reference_runners

    reference, label = reference_runners(export_dir, manifest, roles)
    count = min(len(images), options.parity_images)
    source = f"{count} real images"
    if not reference:
        return {**parity_report([], label, source), "passed": False, "worst_top1_agreement": 0.0}
    engines = {
        role: TensorRTRunner(
            staging / entry.file,
            entry,
            engines_manifest.tensorrt.to_dict(),
            buffers=options.buffers,
        )
        for role, entry in engines_manifest.engines.items()
    }
    active = []
    try:
        for runner in [*reference.values(), *engines.values()]:
            runner.activate()
            active.append(runner)
        batch = images[:count]
        rows = compare_runners(reference, engines, batch, manifest.exit_threshold)
    finally:
        for runner in active:
            runner.deactivate()
    return parity_report(rows, label, source)
