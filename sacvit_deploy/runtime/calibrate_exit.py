"""Exit-threshold calibration as one call: what ``sacvit-deploy calibrate`` does, for Python users.

    from sacvit_deploy.runtime.calibrate_exit import Target, calibrate_exit

    run = calibrate_exit("export", "val_images", Target("accuracy", 0.80))
    print(run.calibration.chosen)  # threshold, accuracy, exit rate, GFLOPs
    run.write()                    # Manifest.with_calibration(run.record()).save(folder)

Stage 1 and stage 2 run on every labelled image once; the sweep over thresholds is then exact
(:mod:`sacvit_deploy.runtime.exit_calibration`). ``calibrate_exit`` returns the result; writing is a
separate step, :meth:`ExitCalibrationRun.write`, through :meth:`Manifest.with_calibration`.
"""

from __future__ import annotations

import datetime as _dt
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import MANIFEST_NAME, ExitCalibration, Manifest
from sacvit_deploy.core.version import __version__
from sacvit_deploy.model.flops import FlopsReport
from sacvit_deploy.runtime.exit_calibration import (
    Calibration,
    LabelledImages,
    Target,
    UnreachableTarget,
    find_labelled_images,
    images_and_labels,
    predict_both_stages,
)
from sacvit_deploy.runtime.exit_calibration import calibrate as sweep
from sacvit_deploy.runtime.images import Batch, iter_batches
from sacvit_deploy.runtime.labels import default_class_names
from sacvit_deploy.runtime.loader import OpenedPipeline, open_pipeline

__all__ = ["ExitCalibrationJob", "ExitCalibrationRun", "Target", "calibrate_exit"]


@dataclass
class ExitCalibrationRun:
    """The result: the curve (``calibration``; ``calibration.chosen`` when a target was reached)."""

    folder: Path
    manifest: Manifest  # the folder's manifest, as it was
    images: Path
    labelled: LabelledImages
    backend: str
    calibration: Calibration
    flops: FlopsReport
    unreadable: int  # images skipped because they did not load
    unreachable: Optional[UnreachableTarget]  # the target no threshold reaches (the curve is still here)

    def record(self) -> ExitCalibration:
        """The manifest's ``calibration`` record for the chosen threshold."""
        if self.unreachable is not None:
            raise self.unreachable
        if self.calibration.chosen is None:
            raise SacvitError("no threshold was chosen: calibrate with a target to write one")
        record = self.calibration.record()
        record.update(
            images_folder=str(self.images),
            label_mapping=self.labelled.mapping,
            unreadable_images=self.unreadable,
            backend=self.backend,
            previous_threshold=self.manifest.exit_threshold,
            created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            package_version=__version__,
        )
        return ExitCalibration.from_record(record)

    def write(self) -> Path:
        """Store the chosen threshold and its record in the folder's manifest (atomically)."""
        manifest = self.manifest.with_calibration(self.record())
        try:
            return manifest.save(self.folder)
        except OSError as exc:
            raise SacvitError(
                f"{self.folder}/{MANIFEST_NAME}: cannot write it ({exc.strerror or exc}); check the folder's permissions"
            ) from None


class ExitCalibrationJob:
    """Two steps for callers that report between them (the CLI): open the folder and find the
    labelled images, then :meth:`run`."""

    def __init__(
        self,
        artifacts: Optional[Union[str, Path]],
        images: Union[str, Path],
        backend: str = "auto",
        device: Optional[str] = None,
        threads: Optional[int] = None,
        folder_labels: str = "names",
        **runner_options: Any,
    ) -> None:
        self.opened: OpenedPipeline = open_pipeline(
            artifacts, backend=backend, device=device, threads=threads, **runner_options
        )
        self.images = Path(images)
        m = self.opened.manifest
        names = m.class_names or default_class_names(m.num_classes)
        self.labelled = find_labelled_images(images, m.num_classes, names, folder_labels)

    def run(
        self,
        target: Optional[Target] = None,
        batch_size: int = 32,
        on_batch: Optional[Callable[[Batch], None]] = None,
    ) -> ExitCalibrationRun:
        """Both stages on every image, then the sweep; ``on_batch`` sees each loaded batch
        (its ``failures`` are the unreadable files)."""
        manifest = self.opened.manifest
        failed = 0

        def batches(source: Iterator[Batch]) -> Iterator[Batch]:
            nonlocal failed
            for batch in source:
                failed += len(batch.failures)
                if on_batch is not None:
                    on_batch(batch)
                yield batch

        loading = iter_batches(self.labelled.paths, manifest.preprocess, batch_size)
        with self.opened.pipeline as pipe, closing(loading) as source:
            pred = predict_both_stages(
                pipe.stage1, pipe.stage2, images_and_labels(self.labelled, batches(source)), pipe.buckets
            )
        flops = FlopsReport.of(manifest.model)
        current = [manifest.exit_threshold] if 0.0 <= manifest.exit_threshold <= 1.0 else []
        unreachable = None
        try:
            cal = sweep(pred, flops, target, extra=current)
        except UnreachableTarget as exc:
            cal, unreachable = sweep(pred, flops, None, extra=current), exc
        return ExitCalibrationRun(
            self.opened.folder,
            manifest,
            self.images,
            self.labelled,
            self.opened.choice.describe(),
            cal,
            flops,
            failed,
            unreachable,
        )


def calibrate_exit(
    artifacts: Optional[Union[str, Path]],
    images: Union[str, Path],
    target: Optional[Target] = None,
    **options: Any,
) -> ExitCalibrationRun:
    """Calibrate the exit threshold of an artifact folder on an ImageFolder of labelled images.

    ``options``: ``backend``, ``device``, ``threads``, ``folder_labels`` (opening) and
    ``batch_size``, ``on_batch`` (running). Nothing is written: call ``.write()`` on the result.
    """
    run_keys = ("batch_size", "on_batch")
    job = ExitCalibrationJob(artifacts, images, **{k: v for k, v in options.items() if k not in run_keys})
    return job.run(target, **{k: v for k, v in options.items() if k in run_keys})
