"""`sacvit-deploy calibrate`: choose the exit threshold on labelled images, for a target.

Runs stage 1 and stage 2 on every image once, sweeps the threshold (the budgeted-classification
curve: accuracy vs mean GFLOPs per image) and picks the threshold that meets the target. The rules
and the sweep: :mod:`sacvit_deploy.runtime.exit_calibration`.
"""

from __future__ import annotations

import datetime as _dt
from contextlib import closing
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from sacvit_deploy.cli._common import (
    MAX_BATCH,
    RUN,
    ArtifactsOption,
    BackendName,
    BackendOption,
    DeviceOption,
    OvDeviceOption,
    OvHintOption,
    ThreadsOption,
    check_batch_size,
    check_manifest_writable,
    check_output,
    handle_errors,
    note,
    openvino_options,
    out,
    safe,
)
from sacvit_deploy.cli._progress import progress_bar
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.model.flops import format_gflops

TARGET = "Target (give one)"


class FolderLabels(str, Enum):
    names = "names"
    index = "index"
    sorted = "sorted"


OUTPUT = "Output"


def _targets(accuracy: float | None, gflops: float | None, exit_rate: float | None):  # -> Target | None
    from sacvit_deploy.runtime.exit_calibration import Target

    given = [
        (k, v)
        for k, v in (("accuracy", accuracy), ("gflops", gflops), ("exit_rate", exit_rate))
        if v is not None
    ]
    if len(given) > 1:
        raise SacvitError(
            "--target-accuracy, --target-gflops and --target-exit-rate exclude each other; give one"
        )
    return Target(*given[0]) if given else None


def _row(p, baseline: float, mark: str = "") -> str:
    return (
        f"  {p.threshold:>9.3f} {p.accuracy:>9.4f} {p.exit_rate:>9.3f} {p.gflops:>12.4g} "
        f"{p.gflops / baseline:>10.2f}x  {mark}"
    ).rstrip()


@handle_errors
def calibrate(
    images: Annotated[
        Path,
        typer.Option(
            help="Labelled images, ImageFolder layout: one sub-folder per class (IMAGES/<class>/<image>).",
            show_default=False,
        ),
    ],
    folder_labels: Annotated[
        FolderLabels,
        typer.Option(
            help="What a folder name means: names = one of the model's class names; index = a class index "
            "(folder 3 = class 3); sorted = the i-th folder in sorted order is class i.",
        ),
    ] = FolderLabels.names,
    artifacts: ArtifactsOption = None,
    backend: BackendOption = BackendName.auto,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    ov_device: OvDeviceOption = None,
    ov_hint: OvHintOption = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help=f"Images per batch (at most {MAX_BATCH}).", rich_help_panel=RUN)
    ] = 32,
    target_accuracy: Annotated[
        float | None,
        typer.Option(
            help="The cheapest threshold whose accuracy >= A (a fraction, e.g. 0.80).", rich_help_panel=TARGET
        ),
    ] = None,
    target_gflops: Annotated[
        float | None,
        typer.Option(
            help="The most accurate threshold whose mean GFLOPs per image <= G.", rich_help_panel=TARGET
        ),
    ] = None,
    target_exit_rate: Annotated[
        float | None,
        typer.Option(
            help="The threshold whose exit rate is closest to R, not below it.", rich_help_panel=TARGET
        ),
    ] = None,
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="Store the chosen threshold in the folder's manifest.json.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Write the whole curve as CSV.", rich_help_panel=OUTPUT)
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Write a PNG of the curve (accuracy vs GFLOPs).", rich_help_panel=OUTPUT),
    ] = None,
) -> None:
    """Choose the exit threshold on labelled images: accuracy / GFLOPs / exit-rate target."""
    from sacvit_deploy.core.manifest import MANIFEST_NAME, ExitCalibration
    from sacvit_deploy.core.version import __version__
    from sacvit_deploy.model.flops import FlopsReport
    from sacvit_deploy.runtime.exit_calibration import (
        UnreachableTarget,
        find_labelled_images,
        images_and_labels,
        predict_both_stages,
        write_csv,
    )
    from sacvit_deploy.runtime.exit_calibration import calibrate as sweep
    from sacvit_deploy.runtime.images import iter_batches
    from sacvit_deploy.runtime.labels import default_class_names
    from sacvit_deploy.runtime.loader import default_artifacts, open_pipeline
    from sacvit_deploy.runtime.plotting import plot_calibration, require_matplotlib

    if plot is not None:
        require_matplotlib()
    target = _targets(target_accuracy, target_gflops, target_exit_rate)
    if write and target is None:
        raise SacvitError(
            "--write needs a target to choose the threshold: add --target-accuracy, --target-gflops or --target-exit-rate"
        )

    check_batch_size(batch_size, "--batch-size")
    folder = artifacts if artifacts is not None else default_artifacts()
    if write:
        check_manifest_writable(folder / MANIFEST_NAME)
    for option, path in (("--csv", csv_file), ("--plot", plot)):
        if path is not None:
            check_output(path, option, [], folder)
    opened = open_pipeline(
        artifacts,
        backend=backend.value,
        device=device.value if device else None,
        threads=threads,
        **openvino_options(backend, ov_device, ov_hint),
    )
    manifest = opened.manifest
    names = manifest.class_names or default_class_names(manifest.num_classes)
    labelled = find_labelled_images(images, manifest.num_classes, names, folder_labels.value)
    for option, path in (("--csv", csv_file), ("--plot", plot)):
        if path is not None:
            check_output(path, option, labelled.paths, folder)
    note(f"backend: {safe(opened.choice.describe())}")
    note(f"labels: {safe(labelled.describe())}")
    if labelled.empty_folders:
        note(f"[yellow]note[/] class folders without images: {safe(', '.join(labelled.empty_folders))}")
    if labelled.ignored_files:
        note(
            f"[yellow]note[/] {labelled.ignored_files} images directly in {safe(images)} ignored (no class folder)"
        )

    failed = 0

    def batches(source, advance):
        nonlocal failed
        for batch in source:
            for failure in batch.failures:
                note(f"[yellow]skipped[/] {safe(failure)}")
            failed += len(batch.failures)
            yield batch
            advance(len(batch.paths) + len(batch.failures))

    with (
        progress_bar() as bar,
        opened.pipeline as pipe,
        closing(iter_batches(labelled.paths, manifest.preprocess, batch_size)) as source,
    ):
        advance = bar.task("both stages on every image", total=len(labelled.paths))
        pred = predict_both_stages(
            pipe.stage1, pipe.stage2, images_and_labels(labelled, batches(source, advance)), pipe.buckets
        )

    flops = FlopsReport.of(manifest.model)
    current = [manifest.exit_threshold] if 0.0 <= manifest.exit_threshold <= 1.0 else []
    try:
        cal = sweep(pred, flops, target, extra=current)
        unreachable = None
    except UnreachableTarget as exc:
        cal, unreachable = sweep(pred, flops, None, extra=current), exc

    base = flops.baseline
    lines = [
        f"calibration on {pred.n} images ({len(labelled.folders)} class folders"
        + (f", {failed} unreadable skipped" if failed else "")
        + "), stage 1 and stage 2 run on every image",
        f"reference: stage 1 only: accuracy {cal.stage1_accuracy:.4f} at {format_gflops(flops.stage1)} GFLOPs/image; "
        f"stage 2 for every image: accuracy {cal.stage2_accuracy:.4f} at {format_gflops(flops.expected(0.0))} GFLOPs/image; "
        f"baseline DeiT: {format_gflops(base)} GFLOPs/image",
        f"  {'threshold':>9} {'accuracy':>9} {'exit rate':>9} {'GFLOPs/image':>12} {'vs baseline':>11}",
    ]
    for p in cal.summary_rows(0.05, current):
        marks = []
        if cal.chosen is not None and p.threshold == cal.chosen.threshold:
            marks.append("<- chosen")
        if current and p.threshold == current[0]:
            marks.append("<- manifest's current")
        lines.append(_row(p, base, " ".join(marks)))
    for line in lines:
        out.print(line, markup=False, highlight=False)
    if cal.chosen is not None and target is not None:
        c = cal.chosen
        out.print(
            f"chosen threshold {c.threshold:g} ({target.rule}): accuracy {c.accuracy:.4f}, exit rate "
            f"{c.exit_rate:.3f}, {format_gflops(c.gflops)} GFLOPs/image ({100 * (1 - c.gflops / base):.0f}% fewer than the baseline)",
            markup=False,
            highlight=False,
        )

    if csv_file is not None:
        write_csv(cal, csv_file)
        note(f"curve CSV: {safe(csv_file)} ({len(cal.points)} thresholds)")
    else:
        note("curve CSV: not written (give --csv FILE)")
    if plot is not None:
        plot_calibration(
            [p.to_dict() for p in cal.points],
            cal.chosen.to_dict() if cal.chosen else None,
            {"stage2_accuracy": cal.stage2_accuracy, "baseline_gflops": base},
            plot,
        )
        note(f"plot: {safe(plot)}")
    if unreachable is not None:
        raise unreachable

    if write:
        assert cal.chosen is not None
        previous = manifest.exit_threshold
        record = cal.record()
        record.update(
            images_folder=str(images),
            label_mapping=labelled.mapping,
            unreadable_images=failed,
            backend=opened.choice.describe(),
            previous_threshold=previous,
            created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            package_version=__version__,
        )
        manifest.exit_threshold = cal.chosen.threshold
        manifest.calibration = ExitCalibration.from_record(record)
        try:
            path = manifest.save(opened.folder)
        except OSError as exc:
            raise SacvitError(
                f"{opened.folder}/manifest.json: cannot write it ({exc.strerror or exc}); check the folder's permissions"
            ) from None
        note(
            f"manifest: {safe(path)}: exit_threshold {previous:g} -> {cal.chosen.threshold:g}, calibration record stored"
        )
    elif target is not None:
        note(f"manifest: unchanged (add --write to store threshold {cal.chosen.threshold:g})")  # type: ignore[union-attr]
