"""`sacvit-deploy profile`: where the time goes, per stage and batch size, and what early exit saves.

Times stage 1, the gate + compaction, stage 2 and the pipeline end to end after warm-up, with the
device synchronised; compares the end-to-end time with the "ideal" (stage 1 + stage 2 alone on the
same hard samples, timed round-robin with it) and, with --baseline, with the single-stage DeiT on
the same backend. Exactly what each row measures: :mod:`sacvit_deploy.runtime.profiling`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import typer
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import note, out, printable, safe
from sacvit_deploy.cli._options import (
    ArtifactsOption,
    BackendName,
    BackendOption,
    DeviceOption,
    OvDeviceOption,
    OvHintOption,
    ThreadsOption,
    openvino_options,
)
from sacvit_deploy.cli._paths import INPUT, OUTPUT_FILE
from sacvit_deploy.cli._progress import progress_bar
from sacvit_deploy.core.errors import SacvitError

WORK = "Workload"
TIMING = "Timing"
OUTPUT = "Output"


def parse_batch_sizes(text: str) -> List[int]:
    """The option's text, e.g. 1,8,32, as batch sizes without repeats (syntax only: the range is
    the use case's check)."""
    sizes: List[int] = []
    for part in text.split(","):
        part = part.strip()
        # isdigit() alone accepts "²" and other digits int() refuses: ASCII decimals only.
        if not (part.isascii() and part.isdecimal()) or int(part) < 1:
            raise SacvitError(
                f"--batch-sizes {text!r}: give positive integers separated by commas, e.g. 1,8,32"
            )
        if int(part) not in sizes:
            sizes.append(int(part))
    return sizes


@handle_errors
def profile(
    artifacts: ArtifactsOption = None,
    backend: BackendOption = BackendName.auto,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    ov_device: OvDeviceOption = None,
    ov_hint: OvHintOption = None,
    batch_sizes: Annotated[
        str, typer.Option(help="Batch sizes to time, comma-separated.", rich_help_panel=WORK)
    ] = "1,8,32",
    images: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder of real images, preprocessed per the manifest (cycled to fill the largest batch).",
            rich_help_panel=WORK,
        ),
        INPUT,
    ] = None,
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic",
            help="Random normal images of the manifest's size (the default).",
            rich_help_panel=WORK,
        ),
    ] = False,
    threshold: Annotated[
        Optional[float], typer.Option(help="Exit threshold (default: the manifest's).", rich_help_panel=WORK)
    ] = None,
    exit_rate: Annotated[
        Optional[float],
        typer.Option(
            help="Instead of --threshold: the fraction of the images that must exit at stage 1 (threshold = that confidence quantile).",
            rich_help_panel=WORK,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic images.", rich_help_panel=WORK)] = 0,
    warmup: Annotated[
        int, typer.Option(min=0, help="Warm-up rounds per batch size.", rich_help_panel=TIMING)
    ] = 5,
    iters: Annotated[
        int, typer.Option(min=1, help="Timed rounds per batch size.", rich_help_panel=TIMING)
    ] = 20,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="Also time baseline.onnx (export --baseline) and report the speedup.",
            rich_help_panel=TIMING,
        ),
    ] = False,
    json_file: Annotated[
        Optional[Path],
        typer.Option(
            "--json", help="Write every number and the environment to FILE.", rich_help_panel=OUTPUT
        ),
        OUTPUT_FILE,
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            help="Write a PNG: latency per batch size and the stage breakdown.", rich_help_panel=OUTPUT
        ),
        OUTPUT_FILE,
    ] = None,
) -> None:
    """Time stage 1, gate, stage 2 and end to end per batch size; overhead, speedup, GFLOPs, power."""
    from sacvit_deploy.runtime.plotting import require_matplotlib
    from sacvit_deploy.runtime.profile_artifacts import profile_artifacts

    if plot is not None:
        require_matplotlib()
    sizes = parse_batch_sizes(batch_sizes)

    def log(line: str) -> None:
        note(safe(line))

    with progress_bar() as bar:
        timing: List[Callable[[int], None]] = []

        def advance(n: int) -> None:  # the bar appears when the timing starts, not while opening
            if not timing:
                timing.append(bar.task("timing", total=len(sizes) * (warmup + iters)))
            timing[0](n)

        run = profile_artifacts(
            artifacts,
            batch_sizes=sizes,
            images=images,
            synthetic=synthetic,
            threshold=threshold,
            exit_rate=exit_rate,
            warmup=warmup,
            iters=iters,
            baseline=baseline,
            backend=backend.value,
            device=device.value if device else None,
            threads=threads,
            seed=seed,
            log=log,
            advance=advance,
            **openvino_options(backend, ov_device, ov_hint),
        )
    for line in run.lines:
        out.print(printable(line), markup=False, highlight=False)
    if json_file is not None:
        run.write_json(json_file)
        note(f"profile JSON: {safe(json_file)}")
    if plot is not None:
        run.write_plot(plot)
        note(f"plot: {safe(plot)}")
