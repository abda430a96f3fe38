"""`sacvit-deploy calibrate`: choose the exit threshold on labelled images, for a target.

Runs stage 1 and stage 2 on every image once, sweeps the threshold (the budgeted-classification
curve: accuracy vs mean GFLOPs per image) and picks the threshold that meets the target. The rules
and the sweep: :mod:`sacvit_deploy.runtime.exit_calibration`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import note, out, safe
from sacvit_deploy.cli._options import (
    RUN,
    ArtifactsOption,
    BackendName,
    BackendOption,
    DeviceOption,
    FolderLabels,
    OvDeviceOption,
    OvHintOption,
    ThreadsOption,
    openvino_options,
)
from sacvit_deploy.cli._paths import INPUT, OUTPUT_FILE, check_manifest_writable, check_output
from sacvit_deploy.cli._progress import progress_bar
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.validate import MAX_BATCH
from sacvit_deploy.model.flops import format_gflops

TARGET = "Target (give one)"


OUTPUT = "Output"


def _targets(
    accuracy: Optional[float], gflops: Optional[float], exit_rate: Optional[float]
):  # -> Target | None
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


def _th(value: float) -> str:
    """Thresholds as calibrate prints them everywhere: 4 decimals (the column, the choice, the manifest)."""
    return f"{value:.4f}"


def _row(p, baseline: float, mark: str = "") -> str:
    return (
        f"  {_th(p.threshold):>9} {p.accuracy:>9.4f} {p.exit_rate:>9.3f} {format_gflops(p.gflops):>12} "
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
        INPUT,
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
        int, typer.Option(help=f"Images per batch, 1 to {MAX_BATCH}.", rich_help_panel=RUN)
    ] = 32,
    target_accuracy: Annotated[
        Optional[float],
        typer.Option(
            help="The cheapest threshold whose accuracy >= A (a fraction, e.g. 0.80).", rich_help_panel=TARGET
        ),
    ] = None,
    target_gflops: Annotated[
        Optional[float],
        typer.Option(
            help="The most accurate threshold whose mean GFLOPs per image <= G.", rich_help_panel=TARGET
        ),
    ] = None,
    target_exit_rate: Annotated[
        Optional[float],
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
        Optional[Path],
        typer.Option("--csv", help="Write the whole curve as CSV.", rich_help_panel=OUTPUT),
        OUTPUT_FILE,
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option(help="Write a PNG of the curve (accuracy vs GFLOPs).", rich_help_panel=OUTPUT),
        OUTPUT_FILE,
    ] = None,
) -> None:
    """Choose the exit threshold on labelled images: accuracy / GFLOPs / exit-rate target."""
    from sacvit_deploy.core.manifest import MANIFEST_NAME
    from sacvit_deploy.runtime.calibrate_exit import ExitCalibrationJob
    from sacvit_deploy.runtime.exit_calibration import write_csv
    from sacvit_deploy.runtime.loader import default_artifacts
    from sacvit_deploy.runtime.plotting import plot_calibration, require_matplotlib

    if plot is not None:
        require_matplotlib()
    target = _targets(target_accuracy, target_gflops, target_exit_rate)
    if write and target is None:
        raise SacvitError(
            "--write needs a target to choose the threshold: add --target-accuracy, --target-gflops or --target-exit-rate"
        )

    folder = artifacts if artifacts is not None else default_artifacts()
    if write:
        check_manifest_writable(folder / MANIFEST_NAME)
    job = ExitCalibrationJob(
        artifacts,
        images,
        backend.value,
        device.value if device else None,
        threads,
        folder_labels.value,
        **openvino_options(backend, ov_device, ov_hint),
    )
    opened, labelled = job.opened, job.labelled
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

    with progress_bar() as bar:
        advance = bar.task("both stages on every image", total=len(labelled.paths))

        def on_batch(batch) -> None:
            for failure in batch.failures:
                note(f"[yellow]skipped[/] {safe(failure)}")
            advance(len(batch.paths) + len(batch.failures))

        run = job.run(target, batch_size, on_batch)
    manifest, cal, flops, unreachable, failed = (
        run.manifest,
        run.calibration,
        run.flops,
        run.unreachable,
        run.unreadable,
    )
    current = [manifest.exit_threshold] if 0.0 <= manifest.exit_threshold <= 1.0 else []

    base = flops.baseline
    lines = [
        f"calibration on {cal.n} images ({len(labelled.folders)} class folders"
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
            f"chosen threshold {_th(c.threshold)} ({target.rule}): accuracy {c.accuracy:.4f}, exit rate "
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
        path = run.write()  # Manifest.with_calibration(record).save(folder)
        note(
            f"manifest: {safe(path)}: exit_threshold {_th(previous)} -> {_th(cal.chosen.threshold)}, calibration record stored"
        )
    elif target is not None:
        note(f"manifest: unchanged (add --write to store threshold {_th(cal.chosen.threshold)})")  # type: ignore[union-attr]
