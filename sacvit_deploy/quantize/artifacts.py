"""A float export folder -> an int8 (QDQ) folder with its own manifest, verified before it is published.

Calibration is static, on real images through the runtime's own preprocessing
(:mod:`sacvit_deploy.runtime.images`): stage 1 and the baseline are calibrated on the images, stage 2
on the images plus the FLOAT stage-1 outputs for them (what stage 2 is fed at run time, up to stage
1's own quantization error).

The int8 folder is an artifact folder like any other (``infer``, ``profile``, ``calibrate``, ``check``,
``build-engine``, ``triton`` take it); its manifest adds one optional section, ``quantization``:

``precision`` ("int8"), ``format`` ("QDQ"), ``method`` (tool, calibration method, granularity),
``calibration`` (images: count, source, sha256 of the files and of the preprocessed tensor),
``graphs`` (per role: the nodes quantized by op type, the nodes kept float by reason, Q/DQ counts),
``float_export`` (the folder and the float graphs' sha256) and ``verification`` (the agreement
report of :mod:`.compare`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from sacvit_deploy.core import publish
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.fileinfo import is_within
from sacvit_deploy.core.manifest import ArtifactFile, Manifest, Quantization, sha256_file
from sacvit_deploy.quantize.qdq import (
    METHODS,
    PER_CHANNEL_AXIS,
    QUANTIZABLE_OPS,
    QuantizeError,
    plan_nodes,
    qdq_summary,
    quantize_graph,
)

MAX_CALIBRATION_IMAGES = 512
FEW_CALIBRATION_IMAGES = 32  # fewer gives a warning: ranges from a handful of images are noisy


@dataclass
class QuantizeOptions:
    per_channel: bool = True
    ops: Tuple[str, ...] = QUANTIZABLE_OPS
    method: str = "minmax"
    batch: int = 8
    quantize_head: bool = False
    threads: Optional[int] = None

    def validate(self) -> None:
        bad = [op for op in self.ops if op not in QUANTIZABLE_OPS]
        if bad or not self.ops:
            raise QuantizeError(
                f"--ops {','.join(self.ops) or '(empty)'}: choose among {', '.join(QUANTIZABLE_OPS)}"
            )
        if self.method not in METHODS:
            raise QuantizeError(f"--method {self.method}: use one of {', '.join(METHODS)}")
        if self.batch < 1:
            raise QuantizeError(f"--calib-batch {self.batch}: give a positive batch size")
        if self.threads is not None and self.threads < 1:
            raise QuantizeError(f"--threads {self.threads}: give a positive number of threads")


@dataclass
class CalibrationImages:
    """Preprocessed calibration images and what identifies them."""

    images: np.ndarray  # (N, 3, R, R) float32
    source: str
    paths: List[Path] = field(default_factory=list)
    skipped: int = 0

    def record(self) -> Dict[str, Any]:
        files = hashlib.sha256()
        for p in self.paths:
            files.update(p.name.encode() + b"\0" + sha256_file(p).encode() + b"\n")
        return {
            "source": self.source,
            "count": int(self.images.shape[0]),
            "skipped": self.skipped,
            "files_sha256": files.hexdigest(),
            "data_sha256": hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest(),
        }


def load_calibration_images(
    folder: Path, preprocess_cfg: Any, limit: int = MAX_CALIBRATION_IMAGES, log: Callable[[str], None] = print
) -> CalibrationImages:
    """Up to ``limit`` images of ``folder`` (recursive), preprocessed exactly as the runtime does."""
    from sacvit_deploy.runtime.image_folder import load_image_folder
    from sacvit_deploy.runtime.images import collect_images

    if not folder.is_dir():
        raise QuantizeError(
            f"{folder}: no such folder; --calib-images needs a folder of representative images"
        )
    paths = collect_images([folder])
    if not paths:
        raise QuantizeError(
            f"{folder}: holds no images; --calib-images needs a folder of representative images"
        )
    loaded = load_image_folder(
        folder, preprocess_cfg, limit, spread=True, on_skip=lambda m: log(f"skipped {m}")
    )
    if not loaded.paths:
        raise QuantizeError(f"{folder}: none of its {loaded.found} images could be read; see the notes above")
    return CalibrationImages(loaded.images, str(folder), loaded.paths, len(loaded.skipped))


@dataclass
class QuantizeResult:
    folder: Path
    manifest: Manifest
    seconds: float
    files: Dict[str, int] = field(default_factory=dict)


def is_quantized(manifest: Manifest) -> bool:
    return bool(getattr(manifest, "quantization", None))


def _fixed_batch(entry: ArtifactFile) -> Optional[int]:
    first = entry.inputs[0].shape[0] if entry.inputs and entry.inputs[0].shape else None
    return first if isinstance(first, int) else None


def _stage1_outputs(
    folder: Path, manifest: Manifest, images: np.ndarray, threads: Optional[int]
) -> Dict[str, np.ndarray]:
    """The float stage 1's outputs for the calibration images (stage 2's calibration feeds)."""
    from sacvit_deploy.backends.arrays import to_host
    from sacvit_deploy.backends.factory import cpu_reference, make_runner
    from sacvit_deploy.runtime.pipeline import run_any_batch

    choice = cpu_reference("stage-2 calibration feeds")
    runner = make_runner(folder, manifest, "stage1", choice, threads=threads)
    parts: Dict[str, List[np.ndarray]] = {}
    with runner:
        for start in range(0, images.shape[0], 32):
            out = run_any_batch(runner, {"image": np.ascontiguousarray(images[start : start + 32])})
            for k, v in out.items():
                parts.setdefault(k, []).append(to_host(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


def check_float_export(float_dir: Path, manifest: Manifest, out: Path) -> None:
    """Refuse what cannot be quantized (no graphs, an int8 folder, ``out`` = the float folder)."""
    if not manifest.graphs:
        raise QuantizeError(f"{float_dir}: lists no ONNX graphs (an engines folder?); pass the export folder")
    if is_quantized(manifest):
        raise QuantizeError(
            f"{float_dir}: is already an int8 (Q/DQ) folder; quantize the float export it came from "
            f"({manifest.quantization.float_folder})"
        )
    if is_within(out, float_dir):  # the folder itself, or a folder inside it
        raise QuantizeError(
            f"--out {out}: write the int8 graphs to their own folder, not into the float export"
        )


def quantize_artifacts(
    float_dir: Union[str, Path],
    out: Union[str, Path],
    calibration: CalibrationImages,
    options: QuantizeOptions,
    verify: Optional[Callable[[Path, Manifest], Dict[str, Any]]] = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> QuantizeResult:
    """Quantize every graph of ``float_dir`` into ``out``; ``verify(staging, manifest)`` may raise to abort."""
    import onnx

    from sacvit_deploy.core.onnx_files import external_data_files

    start = time.perf_counter()
    options.validate()
    float_dir, out = Path(float_dir), Path(out)
    manifest = Manifest.load(float_dir)
    check_float_export(float_dir, manifest, out)
    manifest.verify(float_dir)
    for entry in manifest.graphs.values():
        external_data_files(manifest.file_path(float_dir, entry))
    if calibration.images.shape[1:] != (3, manifest.model.img_size, manifest.model.img_size):
        raise QuantizeError(
            f"calibration images are {tuple(calibration.images.shape[1:])}, the model takes "
            f"(3, {manifest.model.img_size}, {manifest.model.img_size}); load them with this manifest's preprocessing"
        )
    if calibration.images.shape[0] < FEW_CALIBRATION_IMAGES:
        log(
            f"note: {calibration.images.shape[0]} calibration images; activation ranges from fewer "
            f"than {FEW_CALIBRATION_IMAGES} are noisy (a few hundred representative images are typical)"
        )
    previous = publish.prepare_output_folder(out, QuantizeError, "quantize")

    feeds_all: Dict[str, np.ndarray] = {"image": calibration.images}
    if "stage2" in manifest.graphs:
        feeds_all.update(_stage1_outputs(float_dir, manifest, calibration.images, options.threads))
    graphs: Dict[str, ArtifactFile] = {}
    per_role: Dict[str, Any] = {}
    with publish.staging_folder(out) as staging:
        for role, entry in manifest.graphs.items():
            t = time.perf_counter()
            src = manifest.file_path(float_dir, entry)
            plan = plan_nodes(onnx.load(str(src)), options.ops, quantize_head=options.quantize_head)
            if not plan.quantize:
                raise QuantizeError(f"{entry.file}: no node to quantize with --ops {','.join(options.ops)}")
            dst = staging / entry.file
            feeds = {spec.name: feeds_all[spec.name] for spec in entry.inputs}
            try:
                quantize_graph(
                    src,
                    dst,
                    feeds,
                    plan,
                    options.per_channel,
                    options.method,
                    options.batch,
                    _fixed_batch(entry),
                )
            except SacvitError:
                raise
            except Exception as exc:  # onnxruntime.quantization raises plain exceptions
                raise QuantizeError(
                    f"{entry.file}: onnxruntime.quantization failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); report it with the variant"
                ) from None
            proto = onnx.load(str(dst))
            _check_io(proto, entry)
            onnx.helper.set_model_props(
                proto,
                {
                    "sacvit_deploy.role": role,
                    "sacvit_deploy.variant": manifest.model.variant,
                    "sacvit_deploy.precision": "int8 (QDQ)",
                },
            )
            onnx.checker.check_model(proto, full_check=True)
            onnx.save_model(proto, str(dst))
            graphs[role] = ArtifactFile(
                file=dst.name,
                sha256=sha256_file(dst),
                size=dst.stat().st_size,
                inputs=list(entry.inputs),
                outputs=list(entry.outputs),
                info={**entry.info, "precision": "int8", "format": "QDQ"},
            )
            per_role[role] = {**plan.summary(), **qdq_summary(proto)}
            log(
                f"quantized {role}.onnx: {sum(plan.quantize_ops.values())} layers int8 "
                f"({graphs[role].size / 2**20:.1f} MB, {time.perf_counter() - t:.1f} s)"
            )
        details: Dict[str, Any] = {
            "method": {
                "tool": f"onnxruntime.quantization.quantize_static (onnxruntime {_ort_version()})",
                "calibration": options.method,
                "activations": "int8, symmetric (zero point 0), per tensor",
                "weights": "int8, symmetric, "
                + ("per output channel" if options.per_channel else "per tensor"),
                "per_channel_axis": dict(PER_CHANNEL_AXIS) if options.per_channel else None,
                "ops": list(options.ops),
                "head": "int8" if options.quantize_head else "float",
            },
            "calibration": calibration.record(),
            "graphs": per_role,
        }
        quantization = Quantization(
            str(float_dir), {role: e.sha256 for role, e in manifest.graphs.items()}, details=details
        )
        int8 = manifest.derive(
            source={"float_export": str(float_dir)}, graphs=graphs, quantization=quantization
        )
        if verify is not None:
            quantization.details["verification"] = verify(staging, int8)
        publish.publish(staging, out, int8, previous)
    return QuantizeResult(out, int8, time.perf_counter() - start, {e.file: e.size for e in graphs.values()})


def _check_io(proto: Any, entry: ArtifactFile) -> None:
    got = ([v.name for v in proto.graph.input], [v.name for v in proto.graph.output])
    want = ([t.name for t in entry.inputs], [t.name for t in entry.outputs])
    if got != want:
        raise QuantizeError(f"{entry.file}: the quantized graph's inputs/outputs {got} differ from {want}")


def _ort_version() -> str:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return "not installed"
