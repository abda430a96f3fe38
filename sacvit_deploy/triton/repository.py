"""Write a Triton Inference Server model repository from an artifact folder.

Layout (``--name sacvit``)::

    model_repository/
      sacvit_triton.json          what this command wrote (so a re-run may replace it), file sha256s
      sacvit_stage1/              stage 1 + exit gate: ONNX Runtime or TensorRT plan, dynamic batching
        config.pbtxt
        1/model.onnx              (or 1/model.plan; --backend python: 1/model.onnx + 1/model.py)
      sacvit_stage2/              stage 2, called for the hard samples only
        config.pbtxt
        1/model.onnx
      sacvit/                     the model clients call: Python backend, BLS
        config.pbtxt              exit_threshold and the client's preprocessing as parameters
        sacvit_deploy.json        the manifest subset model.py reads (tensor specs, stage names)
        1/model.py

Graph and engine files are copied, never linked (the repository is mounted into a container), after
their sha256 is checked against the manifest; the copy is hashed as it is written. Everything is
staged and published the way ``export`` publishes (:mod:`sacvit_deploy.core.publish`), the index
file last.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

from sacvit_deploy.core import publish
from sacvit_deploy.core.manifest import ArtifactFile, Manifest
from sacvit_deploy.core.package_data import package_path
from sacvit_deploy.core.version import __version__
from sacvit_deploy.runtime.labels import default_class_names
from sacvit_deploy.triton import config as tc
from sacvit_deploy.triton.index import (
    _MODEL_NAME,
    CLIENT_SCHEMA,
    INDEX_NAME,
    MODEL_JSON,
    MODEL_SCHEMA,
    SCHEMA_VERSION,
    RepositoryError,
    RepositoryIndex,
)

BACKENDS = ("onnxruntime", "tensorrt", "python")
DEFAULT_MAX_BATCH = 32


@dataclass(frozen=True)
class RepositoryOptions:
    backend: str = "onnxruntime"
    max_batch: Optional[int] = None  # None: 32 for ONNX Runtime, the engines' profile max for TensorRT
    instances: int = 1
    kind: Optional[str] = None  # None: cpu for --backend python (PyTriton's server has no GPU code), else gpu
    gpus: Tuple[int, ...] = ()
    threshold: Optional[float] = None  # None: the manifest's
    name: str = "sacvit"
    queue_delay_us: Optional[int] = None  # None: the per-model defaults (config.QUEUE_DELAY_US)

    @property
    def instance_kind(self) -> str:
        if self.kind is not None:
            return self.kind
        return "cpu" if self.backend in tc.PYTHON_STAGES else "gpu"

    def model_names(self) -> Dict[str, str]:
        return {"bls": self.name, "stage1": f"{self.name}_stage1", "stage2": f"{self.name}_stage2"}

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise RepositoryError(f"--backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if not _MODEL_NAME.match(self.name):
            raise RepositoryError(
                f"--name {self.name!r}: a Triton model name here is letters, digits, '_' and '-' (e.g. sacvit)"
            )
        if self.instance_kind not in tc.KINDS:
            raise RepositoryError(f"--kind {self.kind!r}: use gpu or cpu")
        if self.backend == "tensorrt" and self.instance_kind == "cpu":
            raise RepositoryError(
                "--backend tensorrt runs on GPUs only; use --kind gpu, or --backend onnxruntime"
            )
        if self.gpus and self.instance_kind != "gpu":
            raise RepositoryError("--gpus places instances on GPUs; drop it with --kind cpu")
        if any(g < 0 for g in self.gpus):
            raise RepositoryError(f"--gpus {self.gpus}: GPU ids are 0, 1, ...")
        if self.instances < 1:
            raise RepositoryError(f"--instances {self.instances}: use 1 or more")
        if self.max_batch is not None and not 1 <= self.max_batch <= 1024:
            raise RepositoryError(f"--max-batch {self.max_batch}: use 1 to 1024")
        if self.queue_delay_us is not None and self.queue_delay_us < 0:
            raise RepositoryError(f"--max-queue-delay-us {self.queue_delay_us}: use 0 or more")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise RepositoryError(
                f"--threshold {self.threshold}: must be a number >= 0 (0: everything exits, above 1: nothing)"
            )


@dataclass
class RepositoryResult:
    folder: Path
    index: RepositoryIndex
    manifest: Manifest
    max_batch: int
    threshold: float
    seconds: float
    validated: bool  # parsed with Triton's schema (needs tritonclient) and matched with the graphs
    files: Dict[str, int] = field(default_factory=dict)  # relative path -> size in bytes


# ---- reading the artifacts --------------------------------------------------------------------------
def stage_entries(manifest: Manifest, folder: Path, backend: str) -> Dict[str, ArtifactFile]:
    """The stage files the backend needs: ONNX graphs (onnxruntime, python), or TensorRT engines."""
    section = "engines" if backend == "tensorrt" else "graphs"
    entries: Dict[str, ArtifactFile] = getattr(manifest, section)
    if backend == "tensorrt" and not entries:
        raise RepositoryError(
            f"{folder}/manifest.json lists no TensorRT engines; build them with `sacvit-deploy build-engine` "
            "and pass that folder (--artifacts engines/), or use --backend onnxruntime"
        )
    missing = [r for r in ("stage1", "stage2") if r not in entries]
    if missing:
        what = "TensorRT engines" if backend == "tensorrt" else "ONNX graphs"
        hint = "rebuild the engines" if backend == "tensorrt" else "point --artifacts at an export folder"
        raise RepositoryError(f"{folder}/manifest.json has no {' or '.join(missing)} {what}; {hint}")
    return {r: entries[r] for r in ("stage1", "stage2")}


def _check_dynamic_batch(entries: Dict[str, ArtifactFile], folder: Path) -> None:
    for role, entry in entries.items():
        for spec in entry.inputs + entry.outputs:
            if not spec.shape or isinstance(spec.shape[0], int):
                fixed = spec.shape[0] if spec.shape else "no"
                raise RepositoryError(
                    f"{folder}/{entry.file}: {role} has a fixed batch ({fixed}, tensor '{spec.name}'); Triton's "
                    "dynamic batcher needs a dynamic batch axis: re-export with --batch dynamic"
                )


def engine_batch_range(entries: Dict[str, ArtifactFile], folder: Path) -> Tuple[int, Dict[str, int]]:
    """The largest batch every engine profile allows, and each engine's opt batch."""
    bound = None
    opt: Dict[str, int] = {}
    for role, entry in entries.items():
        profiles = entry.info.get("profiles") or {}
        for spec in entry.inputs:
            p = profiles.get(spec.name)
            try:
                low, best, high = int(p["min"][0]), int(p["opt"][0]), int(p["max"][0])
            except (TypeError, KeyError, IndexError, ValueError):
                raise RepositoryError(
                    f"{folder}/manifest.json: engine {entry.file} records no profile for input '{spec.name}'; "
                    "rebuild it with `sacvit-deploy build-engine`"
                ) from None
            if low > 1:
                raise RepositoryError(
                    f"{folder}/{entry.file}: profile min batch is {low}, but stage 2 may get a single hard "
                    "sample; rebuild with build-engine --min-batch 1"
                )
            bound = high if bound is None else min(bound, high)
            opt[role] = best
    return int(bound or 1), opt


# ---- writing ---------------------------------------------------------------------------------------------
def copy_verified(src: Path, dst: Path, expected: str) -> int:
    """Copy ``src`` to ``dst``, hashing what is written; the copy must match the manifest's sha256."""
    h = hashlib.sha256()
    size = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        while block := fin.read(1 << 20):
            h.update(block)
            fout.write(block)
            size += len(block)
    if h.hexdigest() != expected:
        raise RepositoryError(
            f"{src}: changed while it was copied (sha256 {h.hexdigest()[:12]}…, manifest {expected[:12]}…); run again"
        )
    return size


def bls_instances(options: RepositoryOptions) -> int:
    """Two BLS instances per stage instance: while one waits for stage 2 of its batch, the other feeds
    stage 1 the next one (a Python-backend instance is a process that blocks in each BLS call)."""
    return 2 * options.instances * max(1, len(options.gpus))


def bls_source() -> str:
    return package_path("triton", "bls_model.py").read_text(encoding="utf-8")


def stage_source() -> str:
    """``model.py`` of a ``--backend python`` stage: its ONNX graph run by onnxruntime."""
    return package_path("triton", "stage_model.py").read_text(encoding="utf-8")


def _client_info(manifest: Manifest, source: Dict[str, Any]) -> Dict[str, Any]:
    """What the client needs to preprocess like the server's model: the config parameter ``sacvit_client``.

    Class names equal to the defaults for the class count (ImageNet's for 1000) are left out, to keep
    config.pbtxt readable; the client falls back to the same defaults.
    """
    model = manifest.model.to_dict()
    if manifest.model.class_names == default_class_names(manifest.num_classes):
        model["class_names"] = None
    return {
        "schema": CLIENT_SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "source_format": manifest.source_format,
        "sha256": {role: source[role]["sha256"] for role in ("stage1", "stage2")},
    }


def _model_json(
    manifest: Manifest,
    entries: Dict[str, ArtifactFile],
    options: RepositoryOptions,
    max_batch: int,
    threshold: float,
    source: Dict[str, Any],
) -> Dict[str, Any]:
    names = options.model_names()
    return {
        "schema": MODEL_SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "name": options.name,
        "backend": options.backend,
        "exit_threshold": threshold,
        "max_batch_size": max_batch,
        "stage_models": {"stage1": names["stage1"], "stage2": names["stage2"]},
        "stage1": {
            "inputs": [t.to_dict() for t in entries["stage1"].inputs],
            "outputs": [t.to_dict() for t in entries["stage1"].outputs],
        },
        "stage2": {
            "inputs": [t.to_dict() for t in entries["stage2"].inputs],
            "outputs": [t.to_dict() for t in entries["stage2"].outputs],
        },
        "model": manifest.model.to_dict(),
        "source_format": manifest.source_format,
        "source": source,
    }


def _write_text(path: Path, text: str, written: Dict[str, Tuple[int, str]], root: Path) -> None:
    data = text.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    written[path.relative_to(root).as_posix()] = (len(data), hashlib.sha256(data).hexdigest())


def check_artifacts(folder: Union[str, Path], backend: str = "python") -> None:
    """What ``write_repository`` would refuse in the folder (its manifest, the stage graphs), said
    before anything else is set up: ``serve`` asks this before it looks for the Triton environment."""
    folder = Path(folder)
    stage_entries(Manifest.load(folder), folder, backend)


def write_repository(
    artifacts: Union[str, Path],
    out: Union[str, Path],
    options: RepositoryOptions,
    log: Callable[[str], None] = lambda _msg: None,
) -> RepositoryResult:
    """Write the stage models and the BLS model into ``out`` (see the module docstring)."""
    start = time.perf_counter()
    options.check()
    artifacts, out = Path(artifacts), Path(out)
    manifest = Manifest.load(artifacts)
    entries = stage_entries(manifest, artifacts, options.backend)
    opt_batch: Dict[str, int] = {}
    if options.backend != "tensorrt":
        _check_dynamic_batch(entries, artifacts)
        max_batch = options.max_batch or DEFAULT_MAX_BATCH
    else:
        bound, opt_batch = engine_batch_range(entries, artifacts)
        if options.max_batch is not None and options.max_batch > bound:
            raise RepositoryError(
                f"--max-batch {options.max_batch} exceeds the engines' profile max batch {bound}; use "
                f"--max-batch {bound} or rebuild the engines with a larger --max-batch"
            )
        max_batch = options.max_batch or bound
    threshold = manifest.exit_threshold if options.threshold is None else float(options.threshold)
    section = "graphs" if options.backend == "onnxruntime" else "engines"
    manifest.verify(artifacts, section, roles=("stage1", "stage2"))  # before anything is copied

    names = options.model_names()
    source: Dict[str, Any] = {
        "artifacts": str(artifacts.resolve()),
        "section": section,
        **{role: {"file": e.file, "sha256": e.sha256} for role, e in entries.items()},
    }
    if options.backend == "tensorrt":
        source["tensorrt"] = {
            k: getattr(manifest.tensorrt, k, None) for k in ("version", "gpu", "compute_capability")
        }
    placement = tc.Placement(options.instance_kind, options.instances, tuple(options.gpus))
    previous = publish.prepare_output_folder(out, RepositoryError, "triton", owned=_owned)
    header_source = f"{artifacts.resolve()}/manifest.json"
    written: Dict[str, Tuple[int, str]] = {}  # relative path -> (size, sha256)
    with publish.staging_folder(out) as staging:
        for role in ("stage1", "stage2"):
            entry = entries[role]
            folder = staging / names[role]
            version = folder / tc.VERSION
            version.mkdir(parents=True)
            model_file = (
                tc.GRAPH_FILE if options.backend in tc.PYTHON_STAGES else tc.MODEL_FILES[options.backend]
            )
            src = manifest.file_path(artifacts, entry)
            if options.backend == "onnxruntime":
                from sacvit_deploy.core.onnx_files import external_data_files

                # Dense and sparse tensors: none may read data outside the model folder on the server.
                external_data_files(src)
            size = copy_verified(src, version / model_file, entry.sha256)
            written[f"{names[role]}/{tc.VERSION}/{model_file}"] = (size, entry.sha256)
            if entry.external_data:  # beside model.onnx, under the name the graph refers to
                src = manifest.file_path(artifacts, entry.external_data)
                data_sha = entry.external_sha256 or ""
                data_size = copy_verified(src, version / entry.external_data, data_sha)
                written[f"{names[role]}/{tc.VERSION}/{entry.external_data}"] = (data_size, data_sha)
            if options.backend in tc.PYTHON_STAGES:
                _write_text(version / tc.MODEL_FILES["python"], stage_source(), written, staging)
            cfg = tc.stage_config(
                names[role],
                role,
                entry,
                options.backend,
                max_batch,
                placement,
                opt_batch.get(role),
                options.queue_delay_us,
            )
            caller = f"called by the BLS model '{options.name}' ({'every sample' if role == 'stage1' else 'hard samples only'})"
            header = [
                f"{role} of SAC-ViT early exit; {caller}, not by clients.",
                f"Written by sacvit-deploy {__version__} from {header_source} ({entry.file}, sha256 {entry.sha256[:16]}…).",
            ]
            _write_text(folder / tc.CONFIG_NAME, tc.render_pbtxt(cfg, header), written, staging)
            log(f"wrote {names[role]}/ ({tc.describe_stage(options.backend)}, {size / 2**20:.1f} MB)")

        bls = staging / names["bls"]
        model_json = _model_json(manifest, entries, options, max_batch, threshold, source)
        _write_text(
            bls / MODEL_JSON, json.dumps(model_json, indent=2, ensure_ascii=False) + "\n", written, staging
        )
        _write_text(bls / tc.VERSION / tc.MODEL_FILES["python"], bls_source(), written, staging)
        cfg = tc.bls_config(
            names["bls"],
            entries["stage1"].input("image"),
            manifest.num_classes,
            max_batch,
            bls_instances(options),
            threshold,
            {"stage1": names["stage1"], "stage2": names["stage2"]},
            _client_info(manifest, source),
            options.queue_delay_us,
        )
        header = [
            "SAC-ViT early exit (Python backend, BLS): clients send preprocessed `image`, get `logits`,",
            "`stage` (1: exited after stage 1, 2: went through stage 2) and `confidence`. A request parameter",
            "`exit_threshold` overrides the model's for that request.",
            f"Written by sacvit-deploy {__version__} from {header_source}.",
        ]
        _write_text(bls / tc.CONFIG_NAME, tc.render_pbtxt(cfg, header), written, staging)
        log(f"wrote {names['bls']}/ (python BLS, threshold {threshold:g}, max batch {max_batch})")

        index = RepositoryIndex(
            name=options.name,
            backend=options.backend,
            models=names,
            files={rel: written[rel][1] for rel in sorted(written)},
            source=source,
            options={
                "max_batch": max_batch,
                "instances": options.instances,
                "kind": options.instance_kind,
                "gpus": list(options.gpus),
                "threshold": threshold,
                "queue_delay_us": options.queue_delay_us,
            },
            created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        )
        validated = _validate_staged(staging, index)
        publish.publish(staging, out, index, previous, INDEX_NAME)
    sizes = {rel: size for rel, (size, _sha) in written.items()}
    return RepositoryResult(
        out, index, manifest, max_batch, threshold, time.perf_counter() - start, validated, sizes
    )


def _validate_staged(staging: Path, index: RepositoryIndex) -> bool:
    """Parse the new configs with Triton's schema before publishing, when tritonclient is installed."""
    from sacvit_deploy.triton.validate import TritonSchemaMissing, validate_repository

    try:
        report = validate_repository(staging, index)
    except TritonSchemaMissing:
        return False
    if not report.passed:
        failed = "; ".join(f"{f.model}: {f.check}: {f.detail}" for f in report.failures[:3])
        raise RepositoryError(f"the written repository does not check out ({failed}); please report this bug")
    return True


def _owned(out: Path) -> Dict[str, Optional[Union[str, Dict[str, str]]]]:
    """What a previous run wrote in ``out``: the index, and each model folder with the sha256 of every
    file in it. Only folders named as this tool names them (NAME, NAME_stage1, NAME_stage2) count, so
    an index listing a user's folder owns nothing by that entry."""
    try:
        index = RepositoryIndex.load(out)
    except RepositoryError:
        return {}
    scheme = set(RepositoryOptions(name=index.name).model_names().values())
    owned: Dict[str, Optional[Union[str, Dict[str, str]]]] = {INDEX_NAME: None}
    for model in index.models.values():
        if model in scheme:
            owned[model] = {rel: sha for rel, sha in index.files.items() if rel.startswith(f"{model}/")}
    return owned
