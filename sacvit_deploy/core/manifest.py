"""The artifact manifest: one versioned JSON file beside the graphs or engines it describes.

``export/manifest.json`` lists the ONNX graphs; ``engines/manifest.json`` (written by
``build-engine``) lists the TensorRT engines. Either folder holds everything ``infer``, ``profile``
and ``build-engine`` need: model config, preprocessing, exit threshold, class names, and for every
file its name, sha256 and tensor specs.

Artifacts are untrusted: file entries must be bare names inside the manifest's folder (no ``/``,
no ``..``, no links out), and every file is checked against its sha256 before use.

Versions: a manifest of an older schema is migrated on load, one step at a time
(:data:`MIGRATIONS`: v1 -> v2 first), then validated as the current schema; ``save`` writes the
current one. A folder made from another (int8 graphs from a float export, engines from graphs) gets
its manifest from :meth:`Manifest.derive`; a new exit threshold from :meth:`Manifest.with_calibration`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Set, Tuple, Union

from sacvit_deploy.core.config import ModelConfig
from sacvit_deploy.core.errors import ConfigError, SacvitError
from sacvit_deploy.core.formats import CHECKPOINT_FORMATS
from sacvit_deploy.core.trt_families import TRT_FAMILY_NAMES
from sacvit_deploy.core.validate import parse_json
from sacvit_deploy.core.version import __version__

MANIFEST_NAME = "manifest.json"
SCHEMA = "sacvit-deploy/manifest"
SCHEMA_VERSION = 2
GRAPH_ROLES = ("stage1", "stage2", "baseline")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
DTYPES = ("float32", "float16", "int32", "int64", "bool", "uint8")


class ArtifactError(SacvitError):
    """A missing, malformed or tampered artifact."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype, shape (ints, or a string for a symbolic dimension)."""

    name: str
    dtype: str
    shape: Tuple[Union[int, str], ...]

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> TensorSpec:
        d = _obj(d, "tensor spec")
        name = _get(d, "name", str, "tensor spec")
        dtype = _get(d, "dtype", str, f"tensor {name!r}")
        if dtype not in DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        shape = _get(d, "shape", list, f"tensor {name!r}")
        if len(shape) > 8 or not all(
            (isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 1 << 31)
            or (isinstance(x, str) and x)
            for x in shape
        ):
            raise ValueError(f"tensor {name!r}: shape {shape!r} must be sizes >= 0 or dimension names")
        return cls(name, dtype, tuple(shape))

    @property
    def is_dynamic(self) -> bool:
        return any(isinstance(s, str) for s in self.shape)


@dataclass
class ArtifactFile:
    """A graph or engine file in the manifest's folder."""

    file: str
    sha256: str
    size: int
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    external_data: Optional[str] = None  # ONNX weights file beside a graph over protobuf's 2 GB limit
    external_sha256: Optional[str] = None
    info: Dict[str, Any] = field(default_factory=dict)  # precision, profiles, TensorRT version ...

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }
        if self.external_data:
            d["external_data"] = self.external_data
            d["external_sha256"] = self.external_sha256
        if self.info:
            d["info"] = self.info
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> ArtifactFile:
        d = _obj(d, "file entry")
        name = check_file_name(d.get("file"))
        external = d.get("external_data")
        entry = cls(
            file=name,
            sha256=_sha(d.get("sha256"), name),
            size=_get(d, "size", int, name),
            inputs=[TensorSpec.from_dict(t) for t in _get(d, "inputs", list, name)],
            outputs=[TensorSpec.from_dict(t) for t in _get(d, "outputs", list, name)],
            external_data=check_file_name(external) if external is not None else None,
            external_sha256=_sha(d.get("external_sha256"), f"{name} external data")
            if external is not None
            else None,
            info=_get(d, "info", dict, name, required=False) or {},
        )
        if entry.size < 0:
            raise ValueError(f"{name}: size {entry.size} must be >= 0")
        for specs in (entry.inputs, entry.outputs):
            names = [t.name for t in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"{name}: tensor names repeat ({names})")
        return entry

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)


@dataclass
class Verification:
    """What export verification found (export/manifest.json): checker results and parity rows."""

    passed: bool
    checker: Dict[str, str] = field(default_factory=dict)  # role -> "ok"
    atol: float = 0.0
    rtol: float = 0.0
    rows: List[Dict[str, Any]] = field(default_factory=list)  # core.compare.ParityRow.to_dict()
    tensorrt: Dict[str, Any] = field(default_factory=dict)  # family -> role -> parser-check verdict

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Verification:
        d = _obj(d, "verification")
        return cls(
            passed=_get(d, "passed", bool, "verification"),
            checker=_get(d, "checker", dict, "verification", required=False) or {},
            atol=_num(d, "atol", "verification", default=0.0),
            rtol=_num(d, "rtol", "verification", default=0.0),
            rows=[
                _obj(r, "verification row")
                for r in _get(d, "rows", list, "verification", required=False) or []
            ],
            tensorrt=_get(d, "tensorrt", dict, "verification", required=False) or {},
        )


@dataclass
class ExitCalibration:
    """How ``exit_threshold`` was chosen by ``sacvit-deploy calibrate --write``."""

    threshold: float
    target: Dict[str, Any]  # {"kind": accuracy | gflops | exit_rate, "value": number}
    accuracy: float
    exit_rate: float
    gflops_per_image: float
    images: int
    details: Dict[str, Any] = field(default_factory=dict)  # rule, per-stage accuracies, folder, backend ...

    _KEYS = ("threshold", "target", "accuracy", "exit_rate", "gflops_per_image", "images")

    def to_dict(self) -> Dict[str, Any]:
        return {**self.details, **{k: getattr(self, k) for k in self._KEYS}}

    @classmethod
    def from_dict(cls, d: Any) -> ExitCalibration:
        d = _obj(d, "calibration")
        where = "calibration"
        target = _obj(d.get("target"), "calibration.target")
        if target.get("kind") not in ("accuracy", "gflops", "exit_rate") or not _finite(target.get("value")):
            raise ValueError(f"calibration.target {target!r}: kind accuracy|gflops|exit_rate and a number")
        record = cls(
            threshold=_num(d, "threshold", where),
            target=target,
            accuracy=_num(d, "accuracy", where),
            exit_rate=_num(d, "exit_rate", where),
            gflops_per_image=_num(d, "gflops_per_image", where),
            images=_get(d, "images", int, where),
            details={k: v for k, v in d.items() if k not in cls._KEYS},
        )
        if not (0 <= record.accuracy <= 1 and 0 <= record.exit_rate <= 1 and record.images >= 0):
            raise ValueError("calibration: accuracy and exit_rate must be in [0, 1], images >= 0")
        if record.threshold < 0:  # with_calibration makes it the exit threshold: the one rule's bound
            raise ValueError(f"calibration.threshold {record.threshold:g} must be >= 0 (core.exit_rule)")
        return record

    @classmethod
    def from_record(cls, record: Dict[str, Any]) -> ExitCalibration:
        return cls.from_dict(record)


@dataclass
class TensorRTInfo:
    """How the engines of engines/manifest.json were built: what the runtime checks before loading
    them (version, GPU, compatibility), what the build recorded (``build``: flags, profiles,
    workspace ...), the INT8 calibration caches and the parity report."""

    version: str
    precision: str
    gpu: Optional[str] = None
    compute_capability: Optional[str] = None
    version_compatible: bool = False
    hardware_compat: Optional[str] = None
    dla_core: Optional[int] = None
    calibration: Optional[Dict[str, Any]] = None  # INT8: {"caches": {role: {"file", "sha256", ...}}, ...}
    parity: Optional[Dict[str, Any]] = None
    build: Dict[str, Any] = field(default_factory=dict)

    _TYPED: ClassVar[Dict[str, Tuple[type, bool]]] = {
        "version": (str, True),
        "precision": (str, True),
        "gpu": (str, False),
        "compute_capability": (str, False),
        "version_compatible": (bool, False),
        "hardware_compat": (str, False),
        "dla_core": (int, False),
        "calibration": (dict, False),
        "parity": (dict, False),
    }

    def to_dict(self) -> Dict[str, Any]:
        return {**self.build, **{k: getattr(self, k) for k in self._TYPED}}

    @classmethod
    def from_dict(cls, d: Any) -> TensorRTInfo:
        d = _obj(d, "tensorrt")
        typed: Dict[str, Any] = {}
        for key, (kind, required) in cls._TYPED.items():
            value = _get(d, key, kind, "tensorrt", required=required)
            if value is not None or key in d:
                typed[key] = value if value is not None else (False if kind is bool else None)
        if typed.get("dla_core") is not None and typed["dla_core"] < 0:
            raise ValueError(f"tensorrt.dla_core {typed['dla_core']} must be >= 0")
        return cls(**typed, build={k: v for k, v in d.items() if k not in cls._TYPED})

    def calibration_cache(self, role: str) -> Dict[str, Any]:
        """The INT8 calibration cache entry recorded for a role ({} when none)."""
        caches = (self.calibration or {}).get("caches")
        entry = caches.get(role) if isinstance(caches, dict) else None
        return entry if isinstance(entry, dict) else {}


@dataclass
class ExporterInfo:
    """How the graphs were exported: what build-engine checks against the installed TensorRT."""

    opset: int
    target_trt: str
    layernorm: str  # native | decomposed
    details: Dict[str, Any] = field(default_factory=dict)  # batch, torch version, seconds ...

    _KEYS = ("opset", "target_trt", "layernorm")

    def to_dict(self) -> Dict[str, Any]:
        return {**self.details, **{k: getattr(self, k) for k in self._KEYS}}

    @classmethod
    def from_dict(cls, d: Any) -> ExporterInfo:
        d = _obj(d, "exporter")
        info = cls(
            opset=_get(d, "opset", int, "exporter"),
            target_trt=_get(d, "target_trt", str, "exporter"),
            layernorm=_get(d, "layernorm", str, "exporter"),
            details={k: v for k, v in d.items() if k not in cls._KEYS},
        )
        if info.target_trt not in TRT_FAMILY_NAMES:
            raise ValueError(f"exporter.target_trt {info.target_trt!r}: one of {', '.join(TRT_FAMILY_NAMES)}")
        if info.layernorm not in ("native", "decomposed"):
            raise ValueError(f"exporter.layernorm {info.layernorm!r}: native or decomposed")
        if not 7 <= info.opset <= 30:
            raise ValueError(f"exporter.opset {info.opset} is not an ONNX opset")
        return info


@dataclass
class Quantization:
    """``sacvit-deploy quantize``'s section of an int8 (Q/DQ) folder. What the tools act on is typed
    and checked (precision, format, the float export it came from); the rest (method, calibration
    set, per-graph counts, verification) is a record for people, kept as written in ``details``."""

    float_folder: str
    float_graphs: Dict[str, str]  # role -> sha256 of the float graph it was quantized from
    precision: str = "int8"
    format: str = "QDQ"
    details: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            **self.details,
            "precision": self.precision,
            "format": self.format,
            "float_export": {"folder": self.float_folder, "graphs": dict(self.float_graphs)},
        }

    @classmethod
    def from_dict(cls, q: Any) -> Quantization:
        q = _obj(q, "quantization")
        if q.get("precision") != "int8" or q.get("format") != "QDQ":
            raise ValueError(
                f"quantization: precision {_short(q.get('precision'))}, format {_short(q.get('format'))}; "
                "only int8 QDQ graphs (from `sacvit-deploy quantize`) are known"
            )
        source = _get(q, "float_export", dict, "quantization")
        folder = _get(source, "folder", str, "quantization.float_export")
        graphs = _get(source, "graphs", dict, "quantization.float_export")
        unknown = sorted(set(graphs) - set(GRAPH_ROLES))
        if unknown:
            raise ValueError(f"quantization.float_export.graphs: unknown roles {unknown}")
        for role, sha in graphs.items():
            _sha(sha, f"quantization.float_export.graphs.{role}")
        details = {k: v for k, v in q.items() if k not in ("precision", "format", "float_export")}
        return cls(folder, dict(graphs), "int8", "QDQ", details)


# ---- schema migrations: version N -> N + 1, on the raw JSON, before validation ---------------------
def _v1_to_v2(d: Dict[str, Any]) -> Dict[str, Any]:
    """v2 drops v1's top-level ``num_classes`` (a copy of ``model.num_classes``: checked, then
    dropped) and writes an absent exporter as null, not ``{}``."""
    model = d.get("model")
    if "num_classes" in d and isinstance(model, dict):
        n = d.pop("num_classes")
        if n != model.get("num_classes") or isinstance(n, bool):
            raise ValueError(
                f"num_classes {_short(n)} disagrees with the model config's {_short(model.get('num_classes'))}"
            )
    if d.get("exporter") == {}:
        d["exporter"] = None
    return d


MIGRATIONS: Dict[int, Callable[[Dict[str, Any]], Dict[str, Any]]] = {1: _v1_to_v2}


def migrate(d: Dict[str, Any], version: int) -> Dict[str, Any]:
    """``d`` (a manifest of schema ``version``) as the current schema: every step from ``version`` on."""
    d = copy.deepcopy(d)
    while version < SCHEMA_VERSION:
        d = MIGRATIONS[version](d)
        version += 1
        d["schema_version"] = version
    return d


@dataclass
class Manifest:
    model: ModelConfig
    source_format: str
    exit_threshold: float
    graphs: Dict[str, ArtifactFile] = field(default_factory=dict)
    engines: Dict[str, ArtifactFile] = field(default_factory=dict)
    weights: Optional[ArtifactFile] = None  # model.safetensors, for the torch backend
    exporter: Optional[ExporterInfo] = None
    tensorrt: Optional[TensorRTInfo] = None
    verification: Optional[Verification] = None
    # Written by `sacvit-deploy calibrate --write`: how exit_threshold was chosen. Optional:
    # manifests without it (older ones) load as None.
    calibration: Optional[ExitCalibration] = None
    # Written by `sacvit-deploy quantize` (sacvit_deploy/quantize/artifacts.py): precision, format,
    # method, calibration set, quantized ops, verification. Optional: float manifests have none.
    quantization: Optional[Quantization] = None
    source: Dict[str, Any] = field(default_factory=dict)
    created: str = ""
    package_version: str = __version__

    # ---- convenience ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def class_names(self) -> Optional[Tuple[str, ...]]:
        return self.model.class_names

    @property
    def preprocess(self):  # -> PreprocessConfig
        return self.model.preprocess

    # ---- deriving ------------------------------------------------------------------------------
    def derive(self, source: Optional[Dict[str, Any]] = None, **changes: Any) -> Manifest:
        """The manifest of a folder made from this one's (int8 graphs, TensorRT engines): the model,
        source format, exit threshold, exporter, calibration and quantization carry over; the files,
        verification and TensorRT sections do not (pass the new ones); ``source`` adds to this
        one's; ``created`` and ``package_version`` are the new folder's."""
        fields: Dict[str, Any] = {
            "model": self.model,
            "source_format": self.source_format,
            "exit_threshold": self.exit_threshold,
            "exporter": self.exporter,
            "calibration": self.calibration,
            "quantization": self.quantization,
            "source": {**self.source, **(source or {})},
        }
        fields.update(changes)
        return Manifest(**fields)

    def with_calibration(self, calibration: ExitCalibration) -> Manifest:
        """This folder's manifest with the exit threshold an exit calibration chose, and its record."""
        return dataclasses.replace(self, exit_threshold=calibration.threshold, calibration=calibration)

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created or _now(),
            "package_version": self.package_version,
            "source_format": self.source_format,
            "source": self.source,
            "exit_threshold": self.exit_threshold,
            "model": self.model.to_dict(),
            "exporter": self.exporter.to_dict() if self.exporter else None,
            "graphs": {k: v.to_dict() for k, v in self.graphs.items()},
            "engines": {k: v.to_dict() for k, v in self.engines.items()},
            "weights": self.weights.to_dict() if self.weights else None,
            "tensorrt": self.tensorrt.to_dict() if self.tensorrt else None,
            "verification": self.verification.to_dict() if self.verification else None,
            "calibration": self.calibration.to_dict() if self.calibration else None,
        }
        if self.quantization is not None:  # only int8 (Q/DQ) folders carry the section
            d["quantization"] = self.quantization.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "manifest") -> Manifest:
        """Validate every field (types, ranges, finite numbers, names, enum values) before use."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ArtifactError(f"{where}: not a sacvit-deploy manifest; re-run `sacvit-deploy export`")
        version = d.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ArtifactError(
                f"{where}: schema_version {_short(version)} is not a schema version (an integer from 1); "
                "the file is damaged or not written by sacvit-deploy: re-run `sacvit-deploy export`"
            )
        if version > SCHEMA_VERSION:
            raise ArtifactError(
                f"{where}: manifest schema_version {version} is newer than the {SCHEMA_VERSION} this "
                "sacvit-deploy reads; upgrade sacvit-deploy"
            )
        try:
            d = migrate(d, version)
            model = ModelConfig.from_dict(d["model"])
            fmt = _get(d, "source_format", str, "manifest")
            if fmt not in CHECKPOINT_FORMATS:
                raise ValueError(f"source_format {fmt!r} is not one of {', '.join(CHECKPOINT_FORMATS)}")
            threshold = d.get("exit_threshold")
            if not _finite(threshold) or threshold < 0:
                raise ValueError(
                    f"exit_threshold {_short(threshold)} must be a finite number >= 0 "
                    "(0: everything exits, above 1: nothing does)"
                )
            m = cls(
                model=model,
                source_format=fmt,
                exit_threshold=float(threshold),
                graphs=_entries(d, "graphs"),
                engines=_entries(d, "engines"),
                weights=ArtifactFile.from_dict(d["weights"]) if d.get("weights") is not None else None,
                exporter=ExporterInfo.from_dict(d["exporter"]) if d.get("exporter") is not None else None,
                tensorrt=TensorRTInfo.from_dict(d["tensorrt"]) if d.get("tensorrt") is not None else None,
                verification=Verification.from_dict(d["verification"])
                if d.get("verification") is not None
                else None,
                calibration=ExitCalibration.from_dict(d["calibration"])
                if d.get("calibration") is not None
                else None,
                quantization=Quantization.from_dict(_get(d, "quantization", dict, "manifest"))
                if d.get("quantization") is not None
                else None,
                source=_get(d, "source", dict, "manifest", required=False) or {},
                created=str(d.get("created", "")),
                package_version=str(d.get("package_version", "")),
            )
            m.check_specs()
        except ArtifactError as exc:
            raise ArtifactError(f"{where}: {exc}") from None
        except KeyError as exc:
            raise ArtifactError(
                f"{where}: malformed manifest (no field {exc}); re-run `sacvit-deploy export`"
            ) from None
        except (TypeError, ValueError, ConfigError) as exc:
            raise ArtifactError(
                f"{where}: invalid manifest: {_oneline(exc)}; re-run `sacvit-deploy export`"
            ) from None
        return m

    def check_specs(self) -> None:
        """The graphs' and engines' tensor specs agree with the model config (class count first:
        a 1000-class manifest on a 10-class graph would label digits 'tench' and 'goldfish')."""
        cfg = self.model
        for section in ("graphs", "engines"):
            for role, entry in getattr(self, section).items():
                names = {t.name: t for t in entry.outputs}
                logits = names.get("logits")
                if logits is None:
                    raise ValueError(f"{section}.{role} ({entry.file}) has no 'logits' output")
                if isinstance(logits.shape[-1], int) and logits.shape[-1] != cfg.num_classes:
                    raise ValueError(
                        f"{section}.{role} ({entry.file}) gives {logits.shape[-1]} logits but the model config "
                        f"has {cfg.num_classes} classes"
                    )
                if role == "stage1" and "confidence" not in names:
                    raise ValueError(
                        f"{section}.stage1 ({entry.file}) has no 'confidence' output (the exit gate)"
                    )
                image = next((t for t in entry.inputs if t.name == "image"), None)
                if image is None:
                    raise ValueError(f"{section}.{role} ({entry.file}) has no 'image' input")
                want = (cfg.in_chans, cfg.img_size, cfg.img_size)
                got = tuple(image.shape[1:])
                if got != want:
                    raise ValueError(
                        f"{section}.{role} ({entry.file}) takes images of shape {got}, the model config {want}"
                    )

    def save(self, folder: Union[str, Path]) -> Path:
        """Write manifest.json atomically (core.atomic): readers see the old file or the whole new one."""
        from sacvit_deploy.core import atomic

        folder = Path(folder)
        path = folder / MANIFEST_NAME
        try:
            old = path.stat()
        except FileNotFoundError:
            old = None
        # The mode bits too: root may write anything, but a file the user made read-only stays so.
        if old is not None and (not os.access(path, os.W_OK) or not old.st_mode & 0o222):
            raise ArtifactError(f"{path}: read-only; make it writable (chmod u+w) to change it")
        with atomic.atomic_path(path, keep_mode=True) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
            if old is not None and hasattr(os, "chown") and old.st_uid != os.stat(tmp).st_uid:
                try:  # a rewritten manifest keeps its owner, where allowed
                    os.chown(tmp, old.st_uid, old.st_gid)
                except PermissionError:
                    raise ArtifactError(
                        f"{path}: owned by another user; it cannot be rewritten keeping its owner"
                    ) from None
        return path

    @classmethod
    def load(cls, folder: Union[str, Path]) -> Manifest:
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if folder.is_file():  # a checkpoint or a graph given where an export folder belongs
            raise ArtifactError(
                f"{folder}: a file, not an artifact folder; if it is a checkpoint, export it first "
                f"(`sacvit-deploy export {folder} --out DIR`) and give DIR"
            )
        if not folder.is_dir():
            raise ArtifactError(f"{folder}: no such artifact folder; run `sacvit-deploy export CKPT` first")
        if not path.is_file():
            inside = _export_folders_inside(folder)
            if inside:
                raise ArtifactError(
                    f"{path}: missing; {folder} holds the export folder(s) "
                    f"{', '.join(str(p) for p in inside)}: give one of those"
                )
            raise ArtifactError(
                f"{path}: missing; {folder} is not an artifact folder (run `sacvit-deploy export CKPT --out {folder}`)"
            )
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ArtifactError(
                    f"{path}: {path.stat().st_size} bytes, far larger than any manifest; re-run `sacvit-deploy export`"
                )
            data = parse_json(path.read_text(encoding="utf-8"))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors; nesting too deep
            raise ArtifactError(f"{path}: not valid JSON ({exc}); re-run `sacvit-deploy export`") from None
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        return cls.from_dict(data, where=str(path))

    # ---- files ---------------------------------------------------------------------------------
    def owned_files(self) -> Set[str]:
        """Every file this manifest owns in its folder (itself, graphs, engines, weights, INT8
        calibration caches): what a later export or build into the same folder may replace."""
        names = {MANIFEST_NAME}
        entries = [*self.graphs.values(), *self.engines.values(), *([self.weights] if self.weights else [])]
        for entry in entries:
            names.add(entry.file)
            if entry.external_data:
                names.add(entry.external_data)
        if self.tensorrt is not None:
            for role in self.engines:
                name = self.tensorrt.calibration_cache(role).get("file")
                if isinstance(name, str) and _SAFE_NAME.match(name):
                    names.add(name)
        return names

    def file_path(self, folder: Union[str, Path], entry: Union[ArtifactFile, str]) -> Path:
        name = entry.file if isinstance(entry, ArtifactFile) else entry
        return safe_child(Path(folder), name)

    def verify(
        self, folder: Union[str, Path], section: str = "graphs", roles: Optional[Tuple[str, ...]] = None
    ) -> None:
        """Check that the listed files exist inside ``folder`` and match their sha256.

        ``section`` is "graphs", "engines" or "weights".
        """
        if section == "weights":
            entries = {"weights": self.weights} if self.weights else {}
        else:
            entries = getattr(self, section)
        for role, entry in entries.items():
            if roles is not None and role not in roles:
                continue
            verify_file(safe_child(Path(folder), entry.file), entry.sha256, role)
            if entry.external_data:
                verify_file(safe_child(Path(folder), entry.external_data), entry.external_sha256 or "", role)


MAX_MANIFEST_BYTES = 16 << 20


def _short(value: Any) -> str:
    return repr(value)[:60]


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _obj(value: Any, what: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


_JSON_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "an object",
    list: "a list",
}


def _get(d: Dict[str, Any], key: str, kind: type, where: str, required: bool = True) -> Any:
    """``d[key]`` checked to be of ``kind`` (ints are not bools); None when optional and absent."""
    if key not in d or d[key] is None:
        if required:
            raise ValueError(f"{where}: field {key!r} is missing")
        return None
    value = d[key]
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if not ok:
        raise ValueError(f"{where}.{key} {_short(value)} must be {_JSON_TYPES.get(kind, kind.__name__)}")
    return value


def _num(d: Dict[str, Any], key: str, where: str, default: Optional[float] = None) -> float:
    value = d.get(key, default)
    if not _finite(value):
        raise ValueError(f"{where}.{key} {_short(value)} must be a finite number")
    return float(value)


def _sha(value: Any, what: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"{what}: sha256 {_short(value)} is not 64 hex digits")
    return value


def _export_folders_inside(folder: Path, limit: int = 5) -> List[Path]:
    """Direct subfolders holding a manifest.json (``sacvit-demo`` -> ``sacvit-demo/export``)."""
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())
    except OSError:
        return []
    return children[:limit]


def _entries(d: Dict[str, Any], section: str) -> Dict[str, ArtifactFile]:
    raw = _get(d, section, dict, "manifest", required=False) or {}
    unknown = sorted(set(raw) - set(GRAPH_ROLES))
    if unknown:
        raise ValueError(f"{section}: unknown roles {unknown}; expected {', '.join(GRAPH_ROLES)}")
    return {role: ArtifactFile.from_dict(v) for role, v in raw.items()}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def check_file_name(name: Any) -> str:
    """A manifest may only name plain files in its own folder."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise ArtifactError(f"file name {name!r} is not a plain file name in the artifact folder")
    return name


def safe_child(folder: Path, name: str) -> Path:
    """``folder / name``, refusing names with separators and anything that resolves outside ``folder``."""
    check_file_name(name)
    path = folder / name
    root = folder.resolve()
    resolved = path.resolve()
    if resolved.parent != root:
        raise ArtifactError(
            f"{path}: resolves outside {folder} (a link?); artifacts must be plain files in the folder"
        )
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, expected: str, role: str = "") -> None:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing ({role}); re-run the command that wrote this folder")
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactError(
            f"{path}: sha256 mismatch ({role}: expected {expected[:12]}…, got {actual[:12]}…); the file was "
            "modified or replaced after export; re-export it"
        )
