"""The artifact manifest: one versioned JSON file beside the graphs or engines it describes.

``export/manifest.json`` lists the ONNX graphs; ``engines/manifest.json`` (written by
``build-engine``) lists the TensorRT engines. Either folder holds everything ``infer``, ``profile``
and ``build-engine`` need: model config, preprocessing, exit threshold, class names, and for every
file its name, sha256 and tensor specs.

Artifacts are untrusted: file entries must be bare names inside the manifest's folder (no ``/``,
no ``..``, no links out), and every file is checked against its sha256 before use.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sacvit_deploy import __version__
from sacvit_deploy.errors import ConfigError, SacvitError
from sacvit_deploy.model.config import ModelConfig

MANIFEST_NAME = "manifest.json"
SCHEMA = "sacvit-deploy/manifest"
SCHEMA_VERSION = 1
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
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        shape = tuple(d["shape"])
        if d["dtype"] not in DTYPES or not all(isinstance(s, (int, str)) for s in shape):
            raise ValueError(f"bad tensor spec {d!r}")
        return cls(str(d["name"]), str(d["dtype"]), shape)

    @property
    def is_dynamic(self) -> bool:
        return any(isinstance(s, str) for s in self.shape)


@dataclass
class ArtifactFile:
    """A graph or engine file in the manifest's folder."""

    file: str
    sha256: str
    size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    external_data: str | None = None  # ONNX weights file beside a graph over protobuf's 2 GB limit
    external_sha256: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # precision, profiles, TensorRT version ...

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
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
    def from_dict(cls, d: dict[str, Any]) -> ArtifactFile:
        return cls(
            file=check_file_name(d["file"]),
            sha256=str(d["sha256"]),
            size=int(d["size"]),
            inputs=[TensorSpec.from_dict(t) for t in d["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in d["outputs"]],
            external_data=check_file_name(d["external_data"]) if d.get("external_data") else None,
            external_sha256=d.get("external_sha256"),
            info=dict(d.get("info") or {}),
        )

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)


@dataclass
class Manifest:
    model: ModelConfig
    source_format: str
    exit_threshold: float
    graphs: dict[str, ArtifactFile] = field(default_factory=dict)
    engines: dict[str, ArtifactFile] = field(default_factory=dict)
    weights: ArtifactFile | None = None  # model.safetensors, for the torch backend
    exporter: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    # Written by `sacvit-deploy calibrate --write`: how exit_threshold was chosen (target, rule,
    # accuracy, GFLOPs, images). Optional: manifests without it (older ones) load as None.
    calibration: dict[str, Any] | None = None
    # Written by `sacvit-deploy quantize`: precision, method, calibration set, quantized ops,
    # verification (sacvit_deploy/quantize/artifacts.py). Optional: float manifests have none.
    quantization: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    package_version: str = __version__

    # ---- convenience ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.model.class_names

    @property
    def preprocess(self):  # -> PreprocessConfig
        return self.model.preprocess

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created or _now(),
            "package_version": self.package_version,
            "source_format": self.source_format,
            "source": self.source,
            "exit_threshold": self.exit_threshold,
            "num_classes": self.model.num_classes,
            "model": self.model.to_dict(),
            "exporter": self.exporter,
            "graphs": {k: v.to_dict() for k, v in self.graphs.items()},
            "engines": {k: v.to_dict() for k, v in self.engines.items()},
            "weights": self.weights.to_dict() if self.weights else None,
            "tensorrt": self.tensorrt,
            "verification": self.verification,
            "calibration": self.calibration,
        }
        if self.quantization is not None:  # only int8 folders carry the section
            d["quantization"] = self.quantization
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> Manifest:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ArtifactError(f"{where}: not a sacvit-deploy manifest; re-run `sacvit-deploy export`")
        version = d.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ArtifactError(
                f"{where}: manifest schema {version} is newer than this sacvit-deploy understands "
                f"({SCHEMA_VERSION}); upgrade sacvit-deploy"
            )
        try:
            model = ModelConfig.from_dict(d["model"])
            m = cls(
                model=model,
                source_format=str(d["source_format"]),
                exit_threshold=float(d["exit_threshold"]),
                graphs={k: ArtifactFile.from_dict(v) for k, v in (d.get("graphs") or {}).items()},
                engines={k: ArtifactFile.from_dict(v) for k, v in (d.get("engines") or {}).items()},
                weights=ArtifactFile.from_dict(d["weights"]) if d.get("weights") else None,
                exporter=dict(d.get("exporter") or {}),
                tensorrt=d.get("tensorrt"),
                verification=d.get("verification"),
                calibration=d.get("calibration"),
                quantization=_optional_dict(d.get("quantization"), "quantization"),
                source=dict(d.get("source") or {}),
                created=str(d.get("created", "")),
                package_version=str(d.get("package_version", "")),
            )
        except ArtifactError as exc:
            raise ArtifactError(f"{where}: {exc}") from None
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ArtifactError(
                f"{where}: malformed manifest ({exc}); re-run `sacvit-deploy export`"
            ) from None
        if m.num_classes != int(d.get("num_classes", m.num_classes)):
            raise ArtifactError(f"{where}: num_classes disagrees with the model config; re-run export")
        return m

    def save(self, folder: str | Path) -> Path:
        """Write manifest.json atomically: readers see the old file or the whole new one."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        tmp = folder / f".{MANIFEST_NAME}.partial"
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise ArtifactError(f"{folder}: no such artifact folder; run `sacvit-deploy export CKPT` first")
        if not path.is_file():
            raise ArtifactError(
                f"{path}: missing; {folder} is not an artifact folder (run `sacvit-deploy export CKPT --out {folder}`)"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path}: not valid JSON ({exc}); re-run `sacvit-deploy export`") from None
        return cls.from_dict(data, where=str(path))

    # ---- files ---------------------------------------------------------------------------------
    def owned_files(self) -> set[str]:
        """Every file this manifest owns in its folder (itself, graphs, engines, weights, INT8
        calibration caches): what a later export or build into the same folder may replace."""
        names = {MANIFEST_NAME}
        entries = [*self.graphs.values(), *self.engines.values(), *([self.weights] if self.weights else [])]
        for entry in entries:
            names.add(entry.file)
            if entry.external_data:
                names.add(entry.external_data)
        calibration = (self.tensorrt or {}).get("calibration") or {}
        for cache in (calibration.get("caches") or {}).values():
            name = cache.get("file") if isinstance(cache, dict) else None
            if isinstance(name, str) and _SAFE_NAME.match(name):
                names.add(name)
        return names

    def file_path(self, folder: str | Path, entry: ArtifactFile | str) -> Path:
        name = entry.file if isinstance(entry, ArtifactFile) else entry
        return safe_child(Path(folder), name)

    def verify(
        self, folder: str | Path, section: str = "graphs", roles: tuple[str, ...] | None = None
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


def _optional_dict(value: Any, what: str) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise ValueError(f"'{what}' must be an object")


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
