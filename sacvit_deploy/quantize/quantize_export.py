"""Quantization as one call: what ``sacvit-deploy quantize`` does, for Python users.

    from sacvit_deploy.quantize.quantize_export import QuantizeRejected, quantize_export

    try:
        run = quantize_export("export", "calib_images", "export-int8", images="val_images")
    except QuantizeRejected as exc:  # int8 disagrees with float: nothing was written
        print(exc, exc.report["rows"])
    else:
        print(run.files, run.report["rows"], run.accuracy)  # accuracy: with labelled images only

The float folder is read, never changed; the int8 folder is published only after its graphs agree
with the float ones (:mod:`.compare`) on the labelled ``images`` (or the calibration images when
none are given). A rejected run raises :class:`QuantizeRejected`, which carries the report.
"""

from __future__ import annotations

import math
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from sacvit_deploy.core.flops import FlopsReport, format_gflops
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.quantize.artifacts import (
    MAX_CALIBRATION_IMAGES,
    CalibrationImages,
    QuantizeOptions,
    check_float_export,
    load_calibration_images,
    quantize_artifacts,
)
from sacvit_deploy.quantize.compare import DEFAULT_MIN_AGREEMENT, compare_folders
from sacvit_deploy.quantize.qdq import QuantizeError

__all__ = ["SMALL_GFLOPS", "QuantizeOptions", "QuantizeRejected", "QuantizeRun", "quantize_export"]

Log = Callable[[str], None]
# Below this many GFLOPs per image (the demo model: 0.0137; DeiT-Ti 1.3), int8 on ONNX Runtime CPU may be
# slower than float: measured 0.64-0.84x on the demo model (issue 24), 1.78x faster at DeiT-S (README).
SMALL_GFLOPS = 1.0
VERIFY_BATCH = 32


class QuantizeRejected(QuantizeError):
    """The int8 graphs disagree with the float ones: nothing was written. ``report`` is the
    agreement report (the same dict a passing run stores in its manifest)."""

    def __init__(self, message: str, report: Dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class QuantizeRun:
    """A published int8 folder and how it compares with the float export it came from."""

    folder: Path  # the int8 folder
    manifest: Manifest  # its manifest (``manifest.quantization.details``: method, calibration, graphs)
    float_folder: Path
    float_manifest: Manifest
    seconds: float
    files: Dict[str, int]  # file name -> size in bytes
    report: Dict[str, Any]  # the verification report: rows, passed, samples, accuracy (with labels)
    gflops: float  # the baseline's GFLOPs per image (how big the model is)

    @property
    def accuracy(self) -> Optional[Dict[str, Any]]:
        """Float and int8 accuracy on the labelled images (None without ``images``)."""
        return self.report.get("accuracy")

    @property
    def calibration(self) -> Dict[str, Any]:
        """What identifies the calibration images: count, source, skipped, sha256 of files and data."""
        return dict(self.manifest.quantization.details["calibration"])

    @property
    def small_model(self) -> bool:
        """Small enough that int8 may run SLOWER than float on ONNX Runtime's CPU kernels."""
        return self.gflops < SMALL_GFLOPS

    @property
    def speed_note(self) -> Optional[str]:
        """Why to measure both folders, for a small model; None otherwise."""
        if not self.small_model:
            return None
        return (
            f"note: at {format_gflops(self.gflops)} GFLOPs per image this model is small: on ONNX Runtime's CPU "
            "kernels each int8 layer adds a quantize step and an int-to-float conversion, which can make the "
            "int8 graphs SLOWER than the float ones here (int8 pays at DeiT-S size: README, section 9); "
            f"measure both: sacvit-deploy profile --artifacts {self.float_folder}   and   --artifacts {self.folder}"
        )


def _no_log(_message: str) -> None:
    return None


def _validate(
    max_calib_images: int, min_agreement: float, options: QuantizeOptions, folder_labels: str
) -> None:
    from sacvit_deploy.runtime.exit_calibration import FOLDER_MAPPINGS

    options.validate()
    if folder_labels not in FOLDER_MAPPINGS:
        raise QuantizeError(f"--folder-labels {folder_labels}: use one of {', '.join(FOLDER_MAPPINGS)}")
    if isinstance(max_calib_images, bool) or not isinstance(max_calib_images, int) or max_calib_images < 1:
        raise QuantizeError(f"--max-calib-images {max_calib_images}: give a positive number of images")
    try:
        fraction = float(min_agreement)
    except (TypeError, ValueError):
        fraction = math.nan
    if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
        raise QuantizeError(f"--min-agreement {min_agreement}: give a fraction from 0 to 1 (0.95 = 95%)")


def _verification_batches(
    calibration: CalibrationImages, labelled: Any, preprocess: Any, log: Callable[[str], None]
) -> Iterator[Tuple[np.ndarray, Optional[List[int]]]]:
    """(images, labels) for the comparison: the labelled images, or the calibration images unlabelled.
    A labelled image that does not load is left out, with a ``skipped ...`` line."""
    if labelled is None:
        for start in range(0, calibration.images.shape[0], VERIFY_BATCH):
            yield calibration.images[start : start + VERIFY_BATCH], None
        return
    from sacvit_deploy.runtime.exit_calibration import images_and_labels
    from sacvit_deploy.runtime.images import iter_batches

    def told(batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            for failure in batch.failures:
                log(f"skipped {failure}")
            yield batch

    with closing(iter_batches(labelled.paths, preprocess, batch_size=VERIFY_BATCH)) as loading:
        yield from images_and_labels(labelled, told(loading))


def _rejection(report: Dict[str, Any], min_agreement: float) -> str:
    def lowest(r: Dict[str, Any]) -> float:
        return min(r["top1_agreement"], 1.0 if r["exit_agreement"] is None else r["exit_agreement"])

    worst = min((r for r in report["rows"] if not r["passed"]), key=lowest)
    return (
        f"int8 {worst['check']} agrees with float on only {100 * lowest(worst):.1f}% of {worst['samples']} "
        f"images (need {100 * min_agreement:.0f}%); nothing was written. Try more calibration images, "
        "--method percentile, --ops MatMul (patch embedding float), or --min-agreement at your own risk"
    )


def quantize_export(
    artifacts: Union[str, Path],
    calib_images: Union[str, Path],
    out_dir: Union[str, Path] = "export-int8",
    *,
    options: Optional[QuantizeOptions] = None,
    images: Optional[Union[str, Path]] = None,
    folder_labels: str = "names",
    max_calib_images: int = MAX_CALIBRATION_IMAGES,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    log: Optional[Log] = None,
    on_step: Optional[Log] = None,
) -> QuantizeRun:
    """Quantize the float export ``artifacts`` into ``out_dir``, verified before it is published.

    ``calib_images``: a folder of representative images (recursive; at most ``max_calib_images``,
    spread over the folder). ``images``: labelled images (ImageFolder, ``images/<class>/<image>``)
    for the verification and the accuracy of both sides; default: the calibration images (not held
    out, no accuracy). ``folder_labels``: what a folder name of ``images`` means, as for
    calibrate: ``names`` (a class name), ``index`` (a class index) or ``sorted`` (folder i = class i). ``options``: :class:`QuantizeOptions` (default ``QuantizeOptions()``; its
    ``threads`` also run the comparison). ``log`` gets plain text notes, ``on_step`` the name of
    each long step as it starts ("loading the calibration images", ...).

    Raises :class:`QuantizeRejected` (``.report``) when a top-1 or exit-decision agreement is below
    ``min_agreement``, and :class:`QuantizeError` / ``SacvitError`` for bad input; either way
    nothing is written.
    """
    say = log or _no_log
    step = on_step or _no_log
    options = options if options is not None else QuantizeOptions()
    _validate(max_calib_images, min_agreement, options, folder_labels)
    artifacts, calib_images, out_dir = Path(artifacts), Path(calib_images), Path(out_dir)
    float_manifest = Manifest.load(artifacts)
    check_float_export(artifacts, float_manifest, out_dir)  # before minutes of image loading
    labelled = None
    if images is not None:
        from sacvit_deploy.runtime.exit_calibration import find_labelled_images
        from sacvit_deploy.runtime.labels import default_class_names

        m = float_manifest  # class names as calibrate matches them (ImageNet's for 1000 classes)
        names = m.class_names or default_class_names(m.num_classes)
        labelled = find_labelled_images(images, m.num_classes, names, folder_labels)

    step("loading the calibration images")
    calibration = load_calibration_images(calib_images, float_manifest.preprocess, max_calib_images, log=say)
    say(f"calibration: {calibration.images.shape[0]} images from {calib_images}")
    if labelled is not None:
        say(f"verification: {len(labelled.paths)} labelled images in {images} ({labelled.describe()})")
    source = "labelled images" if labelled is not None else "calibration images"
    reports: List[Dict[str, Any]] = []

    def verify(staging: Path, manifest: Manifest) -> Dict[str, Any]:
        step("comparing the int8 graphs with the float ones")
        batches = _verification_batches(calibration, labelled, float_manifest.preprocess, say)
        report = compare_folders(
            artifacts, float_manifest, staging, manifest, batches, source, min_agreement, options.threads
        )
        reports.append(report)
        if not report["passed"]:
            raise QuantizeRejected(_rejection(report, min_agreement), report)
        return report

    step("quantizing the graphs")
    result = quantize_artifacts(artifacts, out_dir, calibration, options, verify=verify, log=say)
    return QuantizeRun(
        folder=result.folder,
        manifest=result.manifest,
        float_folder=artifacts,
        float_manifest=float_manifest,
        seconds=result.seconds,
        files=dict(result.files),
        report=reports[-1],
        gflops=FlopsReport.of(float_manifest.model).baseline,
    )
