"""`sacvit-deploy infer`: images in, predictions out, stage 2 only for the samples that need it."""

from __future__ import annotations

import sys
import time
from contextlib import closing
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from sacvit_deploy.cli._common import (
    RUN,
    ArtifactsOption,
    BackendName,
    BackendOption,
    DeviceOption,
    ThreadsOption,
    err,
    fail,
    handle_errors,
    note,
)
from sacvit_deploy.core.errors import SacvitError

IO_PANEL = "Input / output"
TRITON = "Triton server"


class OutputFormat(str, Enum):
    table = "table"
    jsonl = "jsonl"
    csv = "csv"


EXIT_SOME_FAILED = 2


@handle_errors
def infer(
    images: Annotated[
        list[str],
        typer.Argument(help="Image files, folders (recursive) or glob patterns.", show_default=False),
    ],
    artifacts: ArtifactsOption = None,
    backend: BackendOption = BackendName.auto,
    device: DeviceOption = None,
    threshold: Annotated[
        float | None, typer.Option(help="Exit threshold (default: the manifest's).", rich_help_panel=RUN)
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.", rich_help_panel=RUN)] = 32,
    threads: ThreadsOption = None,
    topk: Annotated[
        int, typer.Option(min=1, help="Classes reported per image.", rich_help_panel=IO_PANEL)
    ] = 1,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="table (stdout), jsonl or csv.", rich_help_panel=IO_PANEL)
    ] = OutputFormat.table,
    output: Annotated[
        Path | None, typer.Option(help="Write results to FILE instead of stdout.", rich_help_panel=IO_PANEL)
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Class names, one per line (default: the manifest's).", rich_help_panel=IO_PANEL),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="Image decoding threads, overlapped with inference.", rich_help_panel=IO_PANEL
        ),
    ] = 2,
    progress: Annotated[
        bool, typer.Option(help="Progress bar on stderr (when it is a terminal).", rich_help_panel=IO_PANEL)
    ] = True,
    triton: Annotated[
        str | None,
        typer.Option(
            help="Run on a Triton server instead: http://HOST:8000 or grpc://HOST:8001 (preprocessing stays here).",
            rich_help_panel=TRITON,
        ),
    ] = None,
    triton_model: Annotated[
        str, typer.Option(help="The BLS model `sacvit-deploy triton` wrote (--name).", rich_help_panel=TRITON)
    ] = "sacvit",
) -> None:
    """Classify images with the early-exit pipeline; stage 2 runs only for the samples that need it."""
    import torch

    from sacvit_deploy.cli.export import read_labels
    from sacvit_deploy.runtime.images import collect_images, iter_batches
    from sacvit_deploy.runtime.labels import default_class_names
    from sacvit_deploy.runtime.loader import open_pipeline
    from sacvit_deploy.runtime.results import Prediction, open_writer, to_predictions

    paths = collect_images(images)
    if triton:
        from sacvit_deploy.triton.client import open_triton

        if backend != BackendName.auto or device or threads:
            raise SacvitError(
                "--backend, --device and --threads pick a local runtime; drop them with --triton"
            )
        opened = open_triton(triton, triton_model, threshold=threshold, artifacts=artifacts)
    else:
        opened = open_pipeline(
            artifacts,
            backend=backend.value,
            device=device.value if device else None,
            threshold=threshold,
            threads=threads,
        )
    manifest = opened.manifest
    names = (
        read_labels(labels, manifest.num_classes)
        if labels
        else manifest.class_names or default_class_names(manifest.num_classes)
    )
    note(f"backend: {opened.choice.describe()}")
    note(
        f"artifacts: {opened.folder}/ ({manifest.model.variant}, {manifest.source_format}), threshold {opened.pipeline.threshold:g}"
    )

    order = {str(p): i for i, p in enumerate(paths)}
    writer = open_writer(fmt.value, output, topk)
    done = failed = stage1 = 0
    infer_seconds = 0.0
    start = time.perf_counter()
    bar = _progress(progress and len(paths) > batch_size)
    task = bar.add_task("classifying", total=len(paths)) if bar else None
    interrupted = False
    try:
        if bar:
            bar.start()
        with (
            opened.pipeline as pipe,
            closing(iter_batches(paths, manifest.preprocess, batch_size, workers)) as batches,
        ):
            for batch in batches:
                rows: list[Prediction] = []
                for failure in batch.failures:
                    note(f"[yellow]skipped[/] {failure}")
                    rows.append(Prediction(source=str(failure.path), error=failure.reason))
                failed += len(batch.failures)
                if batch.images.shape[0]:
                    t = time.perf_counter()
                    result = pipe.run(torch.from_numpy(batch.images))
                    infer_seconds += time.perf_counter() - t
                    rows += to_predictions(result, [str(p) for p in batch.paths], topk, names)
                    done += len(batch.paths)
                    stage1 += int((result.stage == 1).sum())
                rows.sort(key=lambda r: order[r.source])  # failures and successes back in input order
                writer.write(rows)
                if bar:
                    bar.advance(task, len(batch.paths) + len(batch.failures))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar:
            bar.stop()
        writer.close()

    wall = time.perf_counter() - start
    rate = f"{100 * stage1 / done:.1f}%" if done else "n/a"
    ips = f"{done / wall:.1f} images/s" if wall > 0 else ""
    pure = f" ({done / infer_seconds:.1f}/s in the pipeline)" if infer_seconds > 0 else ""
    note(
        f"{'interrupted: ' if interrupted else ''}{done} images classified, {failed} failed; "
        f"exit rate {rate} (stage 1 answered {stage1}, stage 2 {done - stage1}); {ips}{pure}"
        + (f"; results in {output}" if output else "")
    )
    if interrupted:
        raise typer.Exit(130)
    if failed:
        if not done:
            raise fail(f"none of the {failed} images could be read; see the lines above", EXIT_SOME_FAILED)
        raise typer.Exit(EXIT_SOME_FAILED)


def _progress(enabled: bool):  # -> rich.progress.Progress | None
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
