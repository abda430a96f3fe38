"""`sacvit-deploy infer`: images in, predictions out, stage 2 only for the samples that need it."""

from __future__ import annotations

import time
from contextlib import closing
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from sacvit_deploy.cli._command import deferred_interrupts, handle_errors
from sacvit_deploy.cli._console import fail, note, printable, safe
from sacvit_deploy.cli._options import (
    RUN,
    ArtifactsOption,
    BackendName,
    BackendOption,
    DeviceOption,
    Minimum,
    OvDeviceOption,
    OvHintOption,
    ThreadsOption,
    openvino_options,
)
from sacvit_deploy.cli._paths import INPUT, OUTPUT_FILE, check_output
from sacvit_deploy.cli._progress import progress_bar
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.validate import MAX_BATCH

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
        List[str],
        typer.Argument(
            metavar="IMAGES", help="Image files, folders (recursive) or glob patterns.", show_default=False
        ),
    ],
    artifacts: ArtifactsOption = None,
    backend: BackendOption = BackendName.auto,
    device: DeviceOption = None,
    threshold: Annotated[
        Optional[float], typer.Option(help="Exit threshold (default: the manifest's).", rich_help_panel=RUN)
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help=f"Images per batch, 1 to {MAX_BATCH}.", rich_help_panel=RUN)
    ] = 32,
    threads: ThreadsOption = None,
    ov_device: OvDeviceOption = None,
    ov_hint: OvHintOption = None,
    topk: Annotated[
        int,
        typer.Option(
            help="Classes reported per image, 1 or more (capped at the class count).",
            rich_help_panel=IO_PANEL,
        ),
    ] = 1,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="table (stdout), jsonl or csv.", rich_help_panel=IO_PANEL)
    ] = OutputFormat.table,
    output: Annotated[
        Optional[Path],
        typer.Option(help="Write results to FILE instead of stdout.", rich_help_panel=IO_PANEL),
        OUTPUT_FILE,
    ] = None,
    labels: Annotated[
        Optional[Path],
        typer.Option(help="Class names, one per line (default: the manifest's).", rich_help_panel=IO_PANEL),
        INPUT,
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Image decoding threads, overlapped with inference, 1 to 256.", rich_help_panel=IO_PANEL
        ),
        Minimum(1),
    ] = 2,
    progress: Annotated[
        bool, typer.Option(help="Progress bar on stderr (when it is a terminal).", rich_help_panel=IO_PANEL)
    ] = True,
    triton: Annotated[
        Optional[str],
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
    from sacvit_deploy.runtime.images import collect_images
    from sacvit_deploy.runtime.labels import default_class_names, read_labels
    from sacvit_deploy.runtime.loader import default_artifacts, open_pipeline
    from sacvit_deploy.runtime.predict import predict_files
    from sacvit_deploy.runtime.results import RowWriteError, open_writer

    paths = collect_images(images)
    if output is not None:
        folder = None if triton else (artifacts if artifacts is not None else default_artifacts())
        check_output(output, "--output", [*paths, *([labels] if labels else [])], folder)
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
            **openvino_options(backend, ov_device, ov_hint),
        )
    manifest = opened.manifest
    names = (
        read_labels(labels, manifest.num_classes)
        if labels
        else manifest.class_names or default_class_names(manifest.num_classes)
    )
    if topk > manifest.num_classes:
        note(f"--topk {topk}: the model has {manifest.num_classes} classes; reporting all of them")
        topk = manifest.num_classes
    note(f"backend: {safe(opened.choice.describe())}")
    note(
        f"artifacts: {safe(opened.folder)}/ ({safe(manifest.model.variant)}, {safe(manifest.source_format)}), "
        f"threshold {opened.pipeline.threshold:g}"
    )

    if fmt == OutputFormat.table:
        note(
            "columns: stage = the stage that answered; conf = stage 1's confidence (its max softmax), "
            f"the image exits at stage 1 when conf >= {opened.pipeline.threshold:g}; prob = the probability "
            "of the prediction, from the stage that answered"
            + (
                f"; (class prob, ...) after the path = the next {topk - 1} classes of --topk {topk} and "
                "their probabilities"
                if topk > 1
                else ""
            )
        )
    writer = open_writer(fmt.value, output, topk, clean=printable)
    done = failed = stage1 = 0
    infer_seconds = 0.0
    start = time.perf_counter()
    interrupted = False
    write_error: Optional[RowWriteError] = None
    try:
        with progress_bar(progress and len(paths) > batch_size) as bar, opened.pipeline as pipe:
            advance = bar.task("classifying", total=len(paths))
            batches = predict_files(
                pipe, paths, manifest.preprocess, topk, names, batch_size, workers, threshold
            )
            with closing(batches):
                for batch in batches:
                    for row in batch.predictions:
                        if row.error is not None:
                            note(f"[yellow]skipped[/] {safe(row.source)}: {safe(row.error)}")
                    # A signal waits until the batch's rows are written AND counted, so the summary
                    # always says what the file holds.
                    with deferred_interrupts():
                        writer.write(batch.predictions)
                        done += batch.classified
                        failed += batch.failed
                        stage1 += batch.stage1
                        infer_seconds += batch.seconds
                    advance(len(batch.predictions))
    except KeyboardInterrupt:
        interrupted = True
    except RowWriteError as exc:
        write_error = exc
    finally:
        try:
            writer.close()
        except RowWriteError as exc:
            write_error = write_error or exc

    wall = time.perf_counter() - start
    rate = f"{100 * stage1 / done:.1f}%" if done else "n/a"
    ips = f"{done / wall:.1f} images/s" if wall > 0 else ""
    pure = f" ({done / infer_seconds:.1f}/s in the pipeline)" if infer_seconds > 0 else ""
    if write_error is not None:
        note(f"[bold red]error:[/] {safe(write_error)}")
    saved = f"; {writer.rows} rows in {safe(output)}" if output else ""
    note(
        f"{'interrupted: ' if interrupted else ''}{done} images classified, {failed} failed; "
        f"exit rate {rate} (stage 1 answered {stage1}, stage 2 {done - stage1}); {ips}{pure}{saved}"
    )
    if interrupted:
        raise typer.Exit(130)
    if write_error is not None:
        raise typer.Exit(1)
    if failed:
        if not done:
            raise fail(f"none of the {failed} images could be read; see the lines above", EXIT_SOME_FAILED)
        raise typer.Exit(EXIT_SOME_FAILED)
