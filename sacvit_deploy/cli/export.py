"""`sacvit-deploy export`: checkpoint -> stage1.onnx + stage2.onnx + manifest.json, verified."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import note, out, safe
from sacvit_deploy.cli._options import CheckpointFormatChoice, TrtFamilyChoice
from sacvit_deploy.cli._paths import INPUT, OUTPUT_FOLDER
from sacvit_deploy.cli._progress import spinner
from sacvit_deploy.cli._tables import file_sizes, parity_table
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.formats import AUTO

EXPORT = "Export"
VERIFY = "Verification"
# core.compare.Tolerance's defaults, written out so that --help does not import numpy (a test holds
# them equal).
DEFAULT_ATOL = DEFAULT_RTOL = 1e-4


def parse_batch(value: str) -> Optional[int]:
    if value == "dynamic":
        return None
    try:
        n = int(value)
    except ValueError:
        raise SacvitError(f"--batch {value!r}: use 'dynamic' or a positive integer") from None
    if n < 1:
        raise SacvitError(f"--batch {value!r}: use 'dynamic' or a positive integer")
    return n


def print_verification(report: dict, target_trt: str, folder: Path) -> None:
    title = (
        f"Verification: ONNX Runtime (CPU) vs PyTorch, fp32, atol {report['atol']:.0e} + "
        f"rtol {report['rtol']:.0e} * max|reference|"
    )
    out.print(parity_table(title, report["rows"]))
    out.print(f"onnx.checker: {', '.join(f'{k} {v}' for k, v in report['checker'].items())}")
    for version, roles in report.get("tensorrt", {}).items():
        verdicts = []
        for role, r in roles.items():
            if r["parses"]:
                extra = f" ({r['warnings']} warnings)" if r["warnings"] else ""
                verdicts.append(f"{role} parses{extra}")
            else:
                verdicts.append(f"{role} will NOT parse ({r['errors']} errors)")
        out.print(f"TensorRT {version} parser check: {', '.join(verdicts)}")
        if not all(r["parses"] for r in roles.values()):
            how = " (JetPack 5: LayerNorm decomposed)" if version == "8.5" else ""
            note(
                f"  expected for an export made for TensorRT {target_trt}: for {version}, export with "
                f"--target-trt {version}{how}; `sacvit-deploy check {safe(folder)} --trt {version}` lists why"
            )


def _log_line(line: str) -> None:
    """A line the export logs, escaped; its warnings and skipped images in yellow, as elsewhere."""
    for word in ("warning", "skipped"):
        if line.startswith(word + ":") or line.startswith(word + " "):
            note(f"[yellow]{word}[/]{safe(line[len(word) :])}")
            return
    note(safe(line))


@handle_errors
def export(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="Checkpoint file (.pth, .pt, .safetensors), or a Hugging Face save_pretrained folder.",
            show_default=False,
        ),
        INPUT,
    ],
    fmt: Annotated[
        CheckpointFormatChoice,
        typer.Option(
            "--format",
            help="Checkpoint format; auto asks each format in turn (LF/CF-ViT: by their flops key).",
            rich_help_panel=EXPORT,
        ),
    ] = CheckpointFormatChoice(AUTO),
    variant: Annotated[
        Optional[str],
        typer.Option(
            help="Variant name (see `sacvit-deploy variants`); inferred from the shapes if omitted.",
            rich_help_panel=EXPORT,
        ),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Output folder.", rich_help_panel=EXPORT), OUTPUT_FOLDER
    ] = Path("export"),
    batch: Annotated[
        str, typer.Option(help="'dynamic' batch axis, or a fixed batch size N.", rich_help_panel=EXPORT)
    ] = "dynamic",
    opset: Annotated[
        Optional[int],
        typer.Option(help="ONNX opset (default 17, what TensorRT 8.5+ parse).", rich_help_panel=EXPORT),
    ] = None,
    target_trt: Annotated[
        TrtFamilyChoice,
        typer.Option(
            "--target-trt",
            help="TensorRT version the graphs must parse on (8.5 decomposes LayerNorm).",
            rich_help_panel=EXPORT,
        ),
    ] = TrtFamilyChoice("10"),
    threshold: Annotated[
        Optional[float],
        typer.Option(
            help="Exit threshold stored in the manifest (default: the checkpoint's).", rich_help_panel=EXPORT
        ),
    ] = None,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="Also write baseline.onnx (single-stage DeiT) for profiling.",
            rich_help_panel=EXPORT,
        ),
    ] = False,
    labels: Annotated[
        Optional[Path],
        typer.Option(
            help="Class names, one per line (default: the checkpoint's, or ImageNet's for 1000 classes).",
            rich_help_panel=EXPORT,
        ),
        INPUT,
    ] = None,
    weights: Annotated[
        bool,
        typer.Option(
            help="Write model.safetensors beside the graphs (for --backend torch).", rich_help_panel=EXPORT
        ),
    ] = True,
    verify: Annotated[
        bool,
        typer.Option(
            help="Verify the graphs against PyTorch before writing anything.", rich_help_panel=VERIFY
        ),
    ] = True,
    verify_images: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder of real images for verification (default: bundled samples).", rich_help_panel=VERIFY
        ),
        INPUT,
    ] = None,
    atol: Annotated[
        float,
        typer.Option(
            help="Absolute part of the parity limit: max|ONNX Runtime - PyTorch| <= atol + rtol * max|PyTorch|.",
            rich_help_panel=VERIFY,
        ),
    ] = DEFAULT_ATOL,
    rtol: Annotated[
        float,
        typer.Option(
            help="Relative part of the parity limit, times the reference tensor's max |value|.",
            rich_help_panel=VERIFY,
        ),
    ] = DEFAULT_RTOL,
) -> None:
    """Export a checkpoint to two verified ONNX graphs (stage 1 + exit gate, stage 2) and a manifest."""
    from sacvit_deploy.core.compare import Tolerance  # numpy: imported by the command, not by --help
    from sacvit_deploy.export.export_checkpoint import export_checkpoint
    from sacvit_deploy.export.onnx_export import ExportOptions

    options = ExportOptions(
        batch=parse_batch(batch),
        opset=opset,
        target_trt=target_trt.value,
        threshold=threshold,
        baseline=baseline,
        weights=weights,
    )
    with spinner("exporting" + (" and verifying against PyTorch" if verify else "")):
        run = export_checkpoint(
            checkpoint,
            out_dir,
            fmt=fmt.value,
            variant=variant,
            labels=labels,
            options=options,
            verify=verify,
            verify_images=verify_images,
            tolerance=Tolerance(atol, rtol) if verify else None,
            log=_log_line,
        )
    if run.verification is not None:
        print_verification(run.verification, target_trt.value, run.folder)
    else:
        note("[yellow]verification skipped (--no-verify)[/]")
    sizes = file_sizes(run.files)
    out.print(
        f"exported to {safe(run.folder)}/ in {run.seconds:.1f} s "
        f"(checkpoint load, export{', verification' if verify else ''}; Python start-up not counted): {sizes}"
    )
    note(
        f"next: sacvit-deploy check {safe(run.folder)} --trt {target_trt.value}   |   "
        f"sacvit-deploy infer IMAGES --artifacts {safe(run.folder)}"
    )
