"""`sacvit-deploy build-engine`: export folder -> TensorRT engines + engines/manifest.json, parity-checked."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import note, out, safe
from sacvit_deploy.cli._paths import ARTIFACTS, CACHE_FILE, INPUT, OUTPUT_FOLDER
from sacvit_deploy.cli._progress import spinner
from sacvit_deploy.cli._tables import file_sizes, parity_table

ENGINES = "Engines"
PRECISION = "Precision"
SHAPES = "Batch sizes"
TENSORRT = "TensorRT"


class HardwareCompat(str, Enum):
    none = "none"
    ampere_plus = "ampere+"
    same_cc = "same-cc"


_STYLES = {logging.WARNING: "[yellow]warning:[/] ", logging.ERROR: "[red]error:[/] "}


class _NoteHandler(logging.Handler):
    """The engine builder's log records as notes on stderr (its text escaped: it quotes TensorRT and files)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = _STYLES.get(record.levelno, "")
        note(prefix + safe(record.getMessage()))


@contextmanager
def engine_notes() -> Iterator[None]:
    """Print what ``sacvit_deploy.engine`` logs while a build runs."""
    logger = logging.getLogger("sacvit_deploy.engine")
    handler, level, propagate = _NoteHandler(logging.INFO), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed here, not a second time by every command's log route
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def print_engines(result) -> None:  # result: BuildResult
    trt = result.manifest.tensorrt
    table = Table(
        title=f"TensorRT {safe(trt.version)} engines on {safe(trt.gpu)} (compute capability "
        f"{safe(trt.compute_capability)}), {safe(trt.precision)}"
    )
    for col in ("engine", "size (MB)", "batch min/opt/max", "FP32 islands", "build (s)"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for entry in result.manifest.engines.values():
        info = entry.info
        first = next(iter(info.get("profiles", {}).values()), {})
        batches = "/".join(str(first.get(k, ["?"])[0]) for k in ("min", "opt", "max"))
        islands = info.get("fp32_islands")
        island_text = ", ".join(f"{k} {v}" for k, v in islands.items()) if islands else "-"
        table.add_row(
            safe(entry.file),
            f"{entry.size / 2**20:.1f}",
            safe(batches),
            safe(island_text),
            f"{info.get('build_seconds', 0):.1f}",
        )
    out.print(table)


def print_parity(report: dict) -> None:
    title = (
        f"Parity: engines vs {report['reference']} on {report['images']} "
        f"(top-1 agreement must be >= {100 * report['min_top1_agreement']:.0f}%)"
    )
    out.print(parity_table(title, report["rows"], low="[bold red]LOW[/]"))


@handle_errors
def build_engine(
    export_dir: Annotated[
        Path,
        typer.Argument(help="Export folder (from `sacvit-deploy export`).", show_default=True),
        ARTIFACTS,
    ] = Path("export"),
    out_dir: Annotated[
        Path,
        typer.Option("--out", help="Engines folder (engines + manifest.json).", rich_help_panel=ENGINES),
        OUTPUT_FOLDER,
    ] = Path("engines"),
    baseline: Annotated[
        Optional[bool],
        typer.Option(
            "--baseline/--no-baseline",
            help="Also build baseline.engine (default: when the export has baseline.onnx).",
            show_default=False,
            rich_help_panel=ENGINES,
        ),
    ] = None,
    fp16: Annotated[
        bool,
        typer.Option(
            "--fp16",
            help="FP16 engines; LayerNorm, Softmax, the exit gate and token scores stay FP32.",
            rich_help_panel=PRECISION,
        ),
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="INT8 with entropy calibration (TensorRT <= 10.x).", rich_help_panel=PRECISION
        ),
    ] = False,
    calib_images: Annotated[
        Optional[Path],
        typer.Option(
            help="Images for INT8 calibration and the parity check (default for parity: bundled samples).",
            rich_help_panel=PRECISION,
        ),
        INPUT,
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Fail (write nothing) on low parity or when the GPU reports no fast FP16.",
            rich_help_panel=PRECISION,
        ),
    ] = False,
    min_batch: Annotated[
        int, typer.Option(help="Smallest batch of the profiles.", rich_help_panel=SHAPES)
    ] = 1,
    opt_batch: Annotated[
        int, typer.Option(help="Batch TensorRT tunes stage 1 for.", rich_help_panel=SHAPES)
    ] = 8,
    max_batch: Annotated[
        int, typer.Option(help="Largest batch (bigger ones are split).", rich_help_panel=SHAPES)
    ] = 32,
    stage2_opt_batch: Annotated[
        Optional[int],
        typer.Option(
            help="Batch TensorRT tunes stage 2 for (default: the expected share of hard images x --opt-batch).",
            rich_help_panel=SHAPES,
        ),
    ] = None,
    workspace: Annotated[
        float, typer.Option(help="Builder workspace limit, GiB.", rich_help_panel=TENSORRT)
    ] = 4.0,
    timing_cache: Annotated[
        Optional[Path],
        typer.Option(
            help="Timing cache file: read if present, written after the build (faster rebuilds).",
            rich_help_panel=TENSORRT,
        ),
        CACHE_FILE,
    ] = None,
    version_compatible: Annotated[
        bool,
        typer.Option(
            "--version-compatible",
            help="Engines that later TensorRT releases can load (TensorRT 8.6+; may be slower).",
            rich_help_panel=TENSORRT,
        ),
    ] = False,
    hardware_compat: Annotated[
        HardwareCompat,
        typer.Option(
            help="Engines for other GPUs: ampere+ (8.6+), same-cc (10.9+).", rich_help_panel=TENSORRT
        ),
    ] = HardwareCompat.none,
    dla_core: Annotated[
        Optional[int],
        typer.Option(
            help="Run on this DLA core (Jetson Xavier/Orin), GPU fallback for the rest.",
            rich_help_panel=TENSORRT,
        ),
    ] = None,
) -> None:
    """Build TensorRT engines for both stages from an export folder, then check them against ONNX Runtime.

    Runs on the machine with the NVIDIA GPU the engines are for, with TensorRT installed."""
    from sacvit_deploy.engine.build import BuildOptions, build_engines

    options = BuildOptions(
        fp16=fp16,
        int8=int8,
        calib_images=calib_images,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        stage2_opt_batch=stage2_opt_batch,
        workspace_gib=workspace,
        timing_cache=timing_cache,
        version_compatible=version_compatible,
        hardware_compat=hardware_compat.value,
        dla_core=dla_core,
        strict=strict,
        baseline=baseline,
    )
    with engine_notes(), spinner("building TensorRT engines"):  # no TensorRT: the error says what to do
        result = build_engines(export_dir, out_dir, options)
    print_engines(result)
    parity = result.manifest.tensorrt.parity if result.manifest.tensorrt else None
    if parity and parity.get("rows"):
        print_parity(parity)
    sizes = file_sizes(result.files)
    out.print(
        f"built {len(result.files)} engines into {safe(result.folder)}/ in {result.seconds:.1f} s: {sizes}"
    )
    for warning in result.warnings:
        note(f"[bold yellow]warning:[/] {safe(warning)}")
    note(f"next: sacvit-deploy infer IMAGES --artifacts {safe(result.folder)} --backend tensorrt")
