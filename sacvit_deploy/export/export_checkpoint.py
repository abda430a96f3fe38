"""Checkpoint export as one call: what ``sacvit-deploy export`` does, for Python users.

    from sacvit_deploy.export.export_checkpoint import export_checkpoint
    from sacvit_deploy.export.onnx_export import ExportOptions

    run = export_checkpoint("sacvit.pth", "export", labels="classes.txt", options=ExportOptions(batch=8))
    print(run.folder, run.files)              # stage1.onnx, stage2.onnx, model.safetensors -> bytes
    print(run.manifest.verification.passed)   # ONNX Runtime vs PyTorch, before anything was written
    if run.calibration is not None:           # the folder had a `calibrate --write` threshold
        print(run.calibration.message(run.folder))

The checkpoint is loaded (any supported format), renamed with ``labels`` if given, exported into a
staging folder, verified against PyTorch (ONNX Runtime parity on random and real images, the
TensorRT parser check for ``options.target_trt``) and published atomically with its manifest.
A re-export of the same checkpoint (same sha256, no ``options.threshold``) into a folder whose
threshold was calibrated keeps that threshold and its record; any other export resets it, and
says so through ``log`` and ``run.calibration``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import ExitCalibration, Manifest, sha256_file

if TYPE_CHECKING:  # torch-side types: the module itself imports no torch until it exports
    from sacvit_deploy.core.compare import Tolerance
    from sacvit_deploy.export.onnx_export import ExportOptions

__all__ = ["CalibrationDecision", "ExportRun", "export_checkpoint"]

Log = Callable[[str], None]


def _no_log(_line: str) -> None:
    return None


# Why a calibrated threshold is reset, as the warning says it.
_RESET_WHY = {
    "threshold given": "--threshold replaces it",
    "other checkpoint": "it was chosen for another checkpoint",
    "unknown checkpoint": "the folder does not record which checkpoint it was chosen for",
}


@dataclass
class CalibrationDecision:
    """What happened to the exit threshold a ``calibrate --write`` had stored in the output folder."""

    previous: ExitCalibration  # the record the folder held before this export
    kept: bool  # True: the same checkpoint, no threshold given; the record is in the new manifest
    reason: str  # "same checkpoint" | "threshold given" | "other checkpoint" | "unknown checkpoint"

    def describe(self) -> str:
        target = self.previous.target
        return f"target {target.get('kind')} {target.get('value')} on {self.previous.images} images"

    def message(self, folder: Union[str, Path]) -> str:
        """The line the export logs (plain text: the caller escapes it for a terminal)."""
        t = self.previous.threshold
        if self.kept:
            return (
                f"kept the calibrated exit threshold {t:g} ({self.describe()}): the same checkpoint "
                "(sha256) was calibrated in this folder; --threshold X sets another"
            )
        return (
            f"warning: {folder}/ had the exit threshold {t:g} from `calibrate --write` ({self.describe()}); "
            f"this export resets it ({_RESET_WHY[self.reason]}). To restore it: add --threshold {t:g}, or "
            f"run `sacvit-deploy calibrate ... --artifacts {folder} --write` again"
        )


@dataclass
class ExportRun:
    """The result: the published folder and everything ``sacvit-deploy export`` reports about it."""

    folder: Path
    files: Dict[str, int]  # file name -> size in bytes (graphs, then model.safetensors)
    manifest: Manifest  # as published; ``manifest.verification`` is the report (None: not verified)
    checkpoint: Path
    checkpoint_sha256: Optional[str]  # a folder's (save_pretrained): over its config and weight files
    fmt: str  # the format the checkpoint loaded as
    variant: str
    selection: str
    attention: str
    notes: List[str] = field(default_factory=list)  # the loader's notes (resampled embeddings, ...)
    calibration: Optional[CalibrationDecision] = None  # None: the folder held no calibrated threshold
    seconds: float = 0.0  # checkpoint hash and load, export, verification, publish

    @property
    def verification(self) -> Optional[Dict[str, Any]]:
        """The verification report (checker, parity rows, TensorRT parser verdicts), or None."""
        v = self.manifest.verification
        return v.to_dict() if v is not None else None


# ---- inputs -------------------------------------------------------------------------------------------


def _labels(labels: Union[str, Path, Sequence[str]], num_classes: int) -> Tuple[str, ...]:
    """A labels file (str or Path) or the names themselves (a list or tuple of strings)."""
    if isinstance(labels, (str, Path)):
        from sacvit_deploy.runtime.labels import read_labels

        return read_labels(labels, num_classes)
    names = tuple(labels)
    for name in names:
        if not isinstance(name, str) or not name.strip() or "\n" in name:
            raise SacvitError(
                f"labels: {name!r} is not a class name; give non-empty strings without line breaks, one per class"
            )
    if len(names) != num_classes:
        raise SacvitError(
            f"labels: {len(names)} names for a model with {num_classes} classes; give one name per class"
        )
    return tuple(n.strip() for n in names)


def checkpoint_sha256(path: Path) -> Optional[str]:
    """What identifies a checkpoint (the manifest's ``source.sha256``; a kept calibration needs it):
    a file's sha256; for a folder (Hugging Face ``save_pretrained``), the sha256 of its JSON and
    safetensors files' names and sha256s, sorted; None when there is nothing to read."""
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return None
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in (".json", ".safetensors"))
    if not files:
        return None
    listing = "".join(f"{f.name}\0{sha256_file(f)}\n" for f in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def calibration_decision(
    out_dir: Path, checkpoint_sha: Optional[str], threshold: Optional[float]
) -> Optional[CalibrationDecision]:
    """Whether the calibration record of the folder being replaced applies to this export.

    ``calibrate --write`` stores a threshold chosen for one model's confidences: a re-export of the
    same checkpoint (same sha256, no threshold given) keeps it; any other export resets it.
    """
    try:
        previous = Manifest.load(out_dir)
    except Exception:  # no folder, not an export, or an unreadable manifest: nothing to keep
        return None
    cal = previous.calibration
    if cal is None:
        return None
    recorded = previous.source.get("sha256")
    if threshold is not None:
        return CalibrationDecision(cal, False, "threshold given")
    if checkpoint_sha is not None and recorded == checkpoint_sha:
        return CalibrationDecision(cal, True, "same checkpoint")
    return CalibrationDecision(cal, False, "other checkpoint" if recorded else "unknown checkpoint")


# ---- the use case -------------------------------------------------------------------------------------
def export_checkpoint(
    checkpoint: Union[str, Path],
    out_dir: Union[str, Path] = "export",
    *,
    fmt: str = "auto",
    variant: Optional[str] = None,
    labels: Optional[Union[str, Path, Sequence[str]]] = None,
    options: Optional[ExportOptions] = None,
    verify: bool = True,
    verify_images: Optional[Union[str, Path]] = None,
    tolerance: Optional[Tolerance] = None,
    log: Optional[Log] = None,
) -> ExportRun:
    """Export ``checkpoint`` into ``out_dir`` (stage1.onnx, stage2.onnx, manifest.json, ...), verified.

    ``fmt``: the checkpoint format ("auto" asks each in turn); ``variant``: inferred from the shapes
    when None; ``labels``: a labels file (one name per line) or a sequence of class names (default:
    the checkpoint's, or ImageNet's for 1000 classes); ``options``: batch, opset, TensorRT target,
    threshold, baseline, weights (:class:`ExportOptions`); ``verify``: parity against PyTorch and the
    TensorRT parser check before anything is published, on random images and ``verify_images`` (a
    folder; default the bundled samples), within ``tolerance`` (default ``Tolerance()``); ``log``:
    plain-text progress and notes. Raises :class:`SacvitError` (one line) on bad input or a failed
    verification; the folder is then left as it was.
    """
    from sacvit_deploy.core.compare import Tolerance
    from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
    from sacvit_deploy.export.verify import tensorrt_parser_check, verify_export
    from sacvit_deploy.model.checkpoint import load_checkpoint
    from sacvit_deploy.model.sacvit import SACViT
    from sacvit_deploy.runtime.labels import default_class_names

    say = log or _no_log
    started = time.perf_counter()  # the whole export: hash, load, export, verification, publish
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    options = options if options is not None else ExportOptions()
    limits = tolerance if tolerance is not None else Tolerance()
    checkpoint_sha = checkpoint_sha256(checkpoint)
    decision = calibration_decision(out_dir, checkpoint_sha, options.threshold)
    if decision is not None and not decision.kept:
        say(decision.message(out_dir))
    kept = decision.previous if decision is not None and decision.kept else None
    options.resolved_opset()  # fail on bad options before the (slow) checkpoint load

    loaded = load_checkpoint(checkpoint, fmt, variant)
    for line in loaded.notes:
        say(f"note: {line}")
    model = loaded.model
    cfg = model.cfg
    names = (
        _labels(labels, cfg.num_classes)
        if labels is not None
        else cfg.class_names or default_class_names(cfg.num_classes)
    )
    if names != cfg.class_names:
        renamed = SACViT(cfg.replace(class_names=names))
        renamed.load_state_dict(model.state_dict())
        model = renamed.eval()
        cfg = model.cfg
    say(
        f"loaded {checkpoint} as {loaded.fmt} {cfg.variant} ({cfg.selection} selection, {cfg.attention} attention)"
    )

    run_verification = None
    if verify:
        from sacvit_deploy.runtime.image_folder import verification_images

        real = verification_images(verify_images, cfg.preprocess, log=say)

        def run_verification(folder: Path, manifest: Manifest) -> Dict[str, Any]:
            report = verify_export(folder, manifest, model, real, limits)
            report["tensorrt"] = tensorrt_parser_check(folder, manifest, options.target_trt)
            return report

    result = export_artifacts(
        model,
        out_dir,
        options,
        loaded.fmt,
        source={"checkpoint": checkpoint.name, "format": loaded.fmt, "sha256": checkpoint_sha},
        verify=run_verification,
        log=say,
        calibration=kept,  # the kept record goes into the one manifest published
    )
    if decision is not None and decision.kept:
        say(decision.message(result.folder))
    return ExportRun(
        folder=result.folder,
        files=dict(result.files),
        manifest=result.manifest,
        checkpoint=checkpoint,
        checkpoint_sha256=checkpoint_sha,
        fmt=loaded.fmt,
        variant=cfg.variant,
        selection=cfg.selection,
        attention=cfg.attention,
        notes=list(loaded.notes),
        calibration=decision,
        seconds=time.perf_counter() - started,
    )
