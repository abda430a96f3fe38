"""Check a model repository without a server: Triton's own config schema, the graphs, the BLS files.

Each ``config.pbtxt`` is parsed with the ``ModelConfig`` protobuf that ``tritonclient`` ships
(``tritonclient.grpc.model_config_pb2``), the schema the server itself reads, so a typo in a field
name or an enum fails here as it would at load time. Then every input and output is compared with
the tensor specs recorded beside the BLS model (names, data types, dims without the batch axis) and,
for ONNX models, with the graph's own inputs and outputs. Copied model files are checked against the
sha256 recorded when they were written.

What this cannot check: that the server's TensorRT can deserialize a plan (it must be the TensorRT
version the plan was built with), and anything that needs a running server.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from sacvit_deploy.core.errors import ConfigError, SacvitError
from sacvit_deploy.core.extras import install_hint
from sacvit_deploy.core.manifest import TensorSpec, sha256_file
from sacvit_deploy.core.validate import parse_json
from sacvit_deploy.model.config import ModelConfig
from sacvit_deploy.triton import config as tc
from sacvit_deploy.triton.index import (
    CLIENT_SCHEMA,
    MODEL_JSON,
    MODEL_SCHEMA,
    RepositoryIndex,
)

TRITON_EXTRA = install_hint("triton")
_ONNX_DTYPES = {1: "float32", 10: "float16", 6: "int32", 7: "int64", 9: "bool", 2: "uint8"}
_TENSOR_MODES = ("numpy", "torch")


class TritonSchemaMissing(SacvitError):
    """tritonclient (which ships Triton's config schema) is not installed."""


@dataclass
class Finding:
    model: str
    check: str
    ok: bool
    detail: str = ""
    note: bool = False  # informational: reported, never a failure


@dataclass
class ValidationReport:
    folder: Path
    findings: List[Finding] = field(default_factory=list)

    @property
    def failures(self) -> List[Finding]:
        return [f for f in self.findings if not f.ok and not f.note]

    @property
    def passed(self) -> bool:
        return not self.failures

    def add(self, model: str, check: str, ok: bool, detail: str = "", note: bool = False) -> bool:
        self.findings.append(Finding(model, check, bool(ok), detail, note))
        return bool(ok)


def model_config_class() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise TritonSchemaMissing(
            f"checking config.pbtxt needs Triton's schema from tritonclient: {TRITON_EXTRA}"
        ) from None
    return model_config_pb2.ModelConfig


def parse_config(path: Path) -> Any:
    """``config.pbtxt`` as a ``ModelConfig`` message; ValueError with the parser's message if invalid."""
    from google.protobuf import text_format

    cls = model_config_class()
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), cls())
    except text_format.ParseError as exc:
        raise ValueError(str(exc)) from None


def config_as_dict(message: Any) -> Dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


# ---- tensors -------------------------------------------------------------------------------------------
def _io_summary(entries: Any, enum: Any) -> Dict[str, Tuple[str, List[int], Optional[List[int]]]]:
    out = {}
    for t in entries:
        reshape = list(t.reshape.shape) if t.HasField("reshape") else None
        out[t.name] = (enum.Name(t.data_type), list(t.dims), reshape)
    return out


def _expected_io(specs: List[TensorSpec]) -> Dict[str, Tuple[str, List[int], Optional[List[int]]]]:
    out = {}
    for spec in specs:
        dims, reshape = tc.tensor_dims(spec)
        out[spec.name] = (tc.TRITON_DTYPES[spec.dtype], dims, [] if reshape else None)
    return out


def _compare_io(report: ValidationReport, model: str, what: str, got: dict, want: dict) -> None:
    problems = []
    for name in sorted(set(want) - set(got)):
        problems.append(f"missing '{name}'")
    for name in sorted(set(got) - set(want)):
        problems.append(f"unexpected '{name}'")
    for name in sorted(set(got) & set(want)):
        (gt, gd, gr), (wt, wd, wr) = got[name], want[name]
        if gt != wt:
            problems.append(f"'{name}' is {gt}, the graph's is {wt}")
        if gd != wd:
            problems.append(f"'{name}' dims {gd}, expected {wd} (the graph's shape without the batch axis)")
        if (gr is None) != (wr is None) or (gr is not None and gr != wr):
            problems.append(f"'{name}' reshape {gr}, expected {wr}")
    detail = "; ".join(problems) if problems else ", ".join(f"{n} {want[n][0]} {want[n][1]}" for n in want)
    report.add(model, what, not problems, detail)


def _onnx_io(path: Path) -> Optional[Tuple[List[TensorSpec], List[TensorSpec]]]:
    try:
        import onnx
    except ImportError:
        return None
    proto = onnx.load(str(path), load_external_data=False)

    def specs(values: Any) -> List[TensorSpec]:
        result = []
        for v in values:
            tt = v.type.tensor_type
            shape = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim)
            result.append(
                TensorSpec(v.name, _ONNX_DTYPES.get(tt.elem_type, f"onnx type {tt.elem_type}"), shape)
            )
        return result

    initializers = {i.name for i in proto.graph.initializer}
    return specs([v for v in proto.graph.input if v.name not in initializers]), specs(proto.graph.output)


# ---- the repository --------------------------------------------------------------------------------
def validate_repository(
    folder: Union[str, Path], index: Optional[RepositoryIndex] = None
) -> ValidationReport:
    """Check every model of a repository written by ``sacvit-deploy triton``; never raises for findings."""
    cls = model_config_class()  # fail early, and once, without tritonclient
    folder = Path(folder)
    index = index or RepositoryIndex.load(folder)
    report = ValidationReport(folder)
    names = index.models
    bls_name = names.get("bls", "")
    if not report.add(
        "repository", "models", {"bls", "stage1", "stage2"} <= set(names), ", ".join(names.values())
    ):
        return report
    for model in names.values():
        report.add(model, "folder", (folder / model).is_dir(), f"{folder / model}")
    _check_files(report, folder, index)

    model_json = _load_model_json(report, folder / bls_name / MODEL_JSON, bls_name)
    configs: Dict[str, Any] = {}
    for role, model in names.items():
        path = folder / model / tc.CONFIG_NAME
        try:
            configs[role] = parse_config(path)
            report.add(model, "config.pbtxt parses (Triton's ModelConfig schema)", True, str(path))
        except (OSError, ValueError) as exc:
            report.add(model, "config.pbtxt parses (Triton's ModelConfig schema)", False, f"{path}: {exc}")
    if model_json is None:
        return report
    dtype_enum = cls.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type
    enum = _EnumNames(dtype_enum)
    for role in ("stage1", "stage2"):
        if role in configs:
            _check_stage(report, folder, index, role, configs[role], model_json, enum)
    if "bls" in configs:
        _check_bls(report, folder, index, configs, model_json, enum)
    return report


class _EnumNames:
    def __init__(self, descriptor: Any) -> None:
        self._names = {v.number: v.name for v in descriptor.values}

    def Name(self, number: int) -> str:  # protobuf's spelling
        return self._names.get(number, str(number))


def _check_files(report: ValidationReport, folder: Path, index: RepositoryIndex) -> None:
    for rel, sha in sorted(index.files.items()):
        model = rel.split("/", 1)[0]
        path = folder / rel
        edited_ok = rel.endswith((tc.CONFIG_NAME, tc.MODEL_FILES["python"]))  # users may tune these
        if not path.is_file():
            report.add(model, f"file {rel}", False, "missing; re-run `sacvit-deploy triton`")
        elif sha256_file(path) != sha:
            if edited_ok:
                report.add(
                    model, f"file {rel}", True, "edited since it was written; checked as it is now", note=True
                )
            else:
                report.add(
                    model,
                    f"file {rel}",
                    False,
                    "sha256 differs from what was written; re-run `sacvit-deploy triton`",
                )
        else:
            report.add(model, f"file {rel}", True, f"sha256 {sha[:12]}…")


def _load_model_json(report: ValidationReport, path: Path, model: str) -> Optional[Dict[str, Any]]:
    try:
        d = parse_json(path.read_text(encoding="utf-8"))
        if d.get("schema") != MODEL_SCHEMA:
            raise ValueError(f"schema {d.get('schema')!r}")
        for role in ("stage1", "stage2"):
            d[role] = {k: [TensorSpec.from_dict(t) for t in d[role][k]] for k in ("inputs", "outputs")}
        ModelConfig.from_dict(d["model"])
        int(d["max_batch_size"])
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        report.add(model, MODEL_JSON, False, f"{path}: {exc}")
        return None
    report.add(model, MODEL_JSON, True, "tensor specs, stage models, model config")
    return d


def _check_common(report: ValidationReport, model: str, cfg: Any, kind_gpu_only: bool) -> None:
    report.add(model, "name", cfg.name == model, f"name: {cfg.name!r} (folder {model!r})")
    ok = cfg.max_batch_size >= 1
    report.add(model, "max_batch_size", ok, f"{cfg.max_batch_size} (dims exclude the batch axis)")
    if cfg.HasField("dynamic_batching"):
        db = cfg.dynamic_batching
        bad = [b for b in db.preferred_batch_size if not 1 <= b <= cfg.max_batch_size]
        report.add(
            model,
            "dynamic_batching",
            not bad,
            f"preferred {list(db.preferred_batch_size)} outside 1..{cfg.max_batch_size}"
            if bad
            else f"preferred {list(db.preferred_batch_size) or 'none'}, delay {db.max_queue_delay_microseconds} us",
        )
    else:
        report.add(model, "dynamic_batching", False, "missing: requests would run one by one")
    problems = []
    kinds = type(cfg.instance_group[0]).Kind if cfg.instance_group else None
    for group in cfg.instance_group:
        kind = kinds.Name(group.kind) if kinds else "?"
        if group.count < 1:
            problems.append(f"count {group.count}")
        if kind not in ("KIND_GPU", "KIND_CPU"):
            problems.append(f"kind {kind}")
        if group.gpus and kind != "KIND_GPU":
            problems.append(f"gpus {list(group.gpus)} with {kind}")
        if kind_gpu_only and kind != "KIND_GPU":
            problems.append(f"{kind} for a TensorRT plan")
    summary = ", ".join(
        f"{g.count} x {kinds.Name(g.kind)}" + (f" on gpus {list(g.gpus)}" if g.gpus else "")
        for g in cfg.instance_group
    )
    report.add(
        model, "instance_group", bool(cfg.instance_group) and not problems, "; ".join(problems) or summary
    )


def _check_stage(
    report: ValidationReport,
    folder: Path,
    index: RepositoryIndex,
    role: str,
    cfg: Any,
    model_json: Dict[str, Any],
    enum: _EnumNames,
) -> None:
    model = index.models[role]
    version = folder / model / tc.VERSION
    if index.backend in tc.PYTHON_STAGES:
        ok = cfg.backend == "python" and not cfg.platform
        report.add(
            model, "backend", ok, f"backend {cfg.backend!r}, platform {cfg.platform!r}, expected python"
        )
        _check_python_source(report, model, version / tc.MODEL_FILES["python"])
        model_file = version / tc.GRAPH_FILE
    else:
        platform = tc.PLATFORMS.get(index.backend, "?")
        ok = cfg.platform == platform and cfg.backend in ("", index.backend)
        report.add(model, "platform", ok, f"platform {cfg.platform!r}, expected {platform!r}")
        model_file = version / tc.MODEL_FILES[index.backend]
    report.add(model, "model file", model_file.is_file(), str(model_file))
    _check_common(report, model, cfg, kind_gpu_only=index.backend == "tensorrt")
    specs = model_json[role]
    _compare_io(report, model, "inputs", _io_summary(cfg.input, enum), _expected_io(specs["inputs"]))
    _compare_io(report, model, "outputs", _io_summary(cfg.output, enum), _expected_io(specs["outputs"]))
    if index.backend != "tensorrt" and model_file.is_file():
        try:
            graph = _onnx_io(model_file)
        except Exception as exc:  # a damaged file fails in protobuf or onnx, in many ways
            report.add(
                model, "graph inputs/outputs", False, f"{model_file}: not a readable ONNX graph ({exc})"
            )
            return
        if graph is None:
            report.add(model, "graph inputs/outputs", True, "onnx not installed: not compared", note=True)
            return
        for what, got_specs, cfg_entries in (
            ("inputs", graph[0], cfg.input),
            ("outputs", graph[1], cfg.output),
        ):
            _compare_io(
                report,
                model,
                f"graph {what} vs config",
                _io_summary(cfg_entries, enum),
                _expected_io(got_specs),
            )
            dynamic = all(s.shape and isinstance(s.shape[0], str) for s in got_specs)
            report.add(
                model, f"graph {what} batch axis", dynamic, "dynamic" if dynamic else "fixed: re-export"
            )


def _check_python_source(report: ValidationReport, model: str, source: Path) -> None:
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
        classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        report.add(model, "model.py", "TritonPythonModel" in classes, "defines TritonPythonModel")
    except (OSError, SyntaxError, ValueError) as exc:
        report.add(model, "model.py", False, f"{source}: {exc}")


def _check_bls(
    report: ValidationReport,
    folder: Path,
    index: RepositoryIndex,
    configs: Dict[str, Any],
    model_json: Dict[str, Any],
    enum: _EnumNames,
) -> None:
    model = index.models["bls"]
    cfg = configs["bls"]
    report.add(model, "backend", cfg.backend == "python" and not cfg.platform, f"backend {cfg.backend!r}")
    _check_common(report, model, cfg, kind_gpu_only=False)
    _check_python_source(report, model, folder / model / tc.VERSION / tc.MODEL_FILES["python"])

    image = next((t for t in model_json["stage1"]["inputs"] if t.name == "image"), None)
    num_classes = int(model_json["model"]["num_classes"])
    want = _expected_io([image] if image else [])
    _compare_io(report, model, "inputs", _io_summary(cfg.input, enum), want)
    want_out = {
        name: (dtype, [num_classes] if name == "logits" else [1], None) for name, dtype in tc.BLS_OUTPUTS
    }
    _compare_io(report, model, "outputs", _io_summary(cfg.output, enum), want_out)

    stage_batches = {role: configs[role].max_batch_size for role in ("stage1", "stage2") if role in configs}
    json_batch = int(model_json["max_batch_size"])
    ok = all(cfg.max_batch_size <= b and json_batch <= b for b in stage_batches.values())
    report.add(
        model,
        "batch sizes",
        ok,
        f"BLS {cfg.max_batch_size}, {MODEL_JSON} {json_batch}, stages {stage_batches}"
        + ("" if ok else ": the BLS must not send more than the stages accept"),
    )

    params = {k: v.string_value for k, v in cfg.parameters.items()}
    raw = params.get(tc.THRESHOLD_PARAMETER)
    try:
        threshold = float(raw) if raw is not None else math.nan
    except ValueError:
        threshold = math.nan
    report.add(
        model,
        "parameter exit_threshold",
        math.isfinite(threshold) and threshold >= 0,
        f"{raw!r} (a number >= 0; requests may override it)",
    )
    for role in ("stage1", "stage2"):
        name = params.get(f"{role}_model", "")
        ok = name == index.models[role] and (folder / name / tc.CONFIG_NAME).is_file()
        report.add(model, f"parameter {role}_model", ok, f"{name!r} (expected {index.models[role]!r})")
    mode = params.get("bls_tensors", "numpy")
    report.add(model, "parameter bls_tensors", mode in _TENSOR_MODES, f"{mode!r}")
    try:
        client = parse_json(params.get(tc.CLIENT_PARAMETER, ""))
        if client.get("schema") != CLIENT_SCHEMA:
            raise ValueError(f"schema {client.get('schema')!r}")
        client_cfg = ModelConfig.from_dict(client["model"])
        served = model_json["source"]
        same = all(client["sha256"][r] == served[r]["sha256"] for r in ("stage1", "stage2"))
        same_pp = client_cfg.preprocess == ModelConfig.from_dict(model_json["model"]).preprocess
        ok, detail = same and same_pp, "preprocessing and stage sha256s match " + MODEL_JSON
        if not ok:
            detail = (
                f"disagrees with {MODEL_JSON} (preprocessing or stage sha256); re-run `sacvit-deploy triton`"
            )
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        ok, detail = False, f"not the client info this command writes ({exc})"
    report.add(model, f"parameter {tc.CLIENT_PARAMETER}", ok, detail)
