"""`sacvit-deploy quantize`: a float export -> INT8 Q/DQ graphs (stage 1, stage 2, baseline), verified.

A command of its own rather than ``export --int8``: it starts from a verified float export (any of
them, also one whose checkpoint is gone), needs its own input (calibration images), and its check is
agreement with the float graphs, not export's 1e-4 parity with PyTorch. The float folder stays as it
is, so both can be compared, profiled and deployed side by side. Details: docs/int8.md.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional, Tuple

import typer
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import err, note, out, safe
from sacvit_deploy.cli._options import FolderLabels
from sacvit_deploy.cli._paths import ARTIFACTS, INPUT, OUTPUT_FILE, OUTPUT_FOLDER, write_json
from sacvit_deploy.cli._tables import file_sizes

QUANT = "Quantization"
VERIFY = "Verification"


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


def _ops(value: str) -> Tuple[str, ...]:
    return tuple(op.strip() for op in value.split(",") if op.strip())


def agreement_table(report: dict):  # -> rich Table
    from rich.table import Table

    def pct(v: Optional[float]) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    table = Table(
        title=f"Verification: int8 (QDQ) vs float, ONNX Runtime (CPU), on {report['samples']} {report['images']}; "
        f"pass: agreement >= {100 * report['min_agreement']:.0f}%"
    )
    for col in (
        "check",
        "n",
        "max |Δ logit|",
        "Δ / σ(logits)",
        "top-1 agree",
        "exit agree",
        "target-set agree",
    ):
        table.add_column(col, justify="left" if col == "check" else "right")
    table.add_column("result", justify="right")
    for r in report["rows"]:
        table.add_row(
            r["check"],
            str(r["samples"]),
            f"{r['max_abs_diff']:.2e}",
            f"{r['relative_diff']:.3f}",
            pct(r["top1_agreement"]),
            pct(r["exit_agreement"]),
            pct(r["selection_agreement"]),
            "[green]pass[/]" if r["passed"] else "[red]FAIL[/]",
        )
    return table


def accuracy_table(acc: dict):  # -> rich Table
    from rich.table import Table

    table = Table(title=f"Accuracy on {acc['images']} labelled images, exit threshold {acc['threshold']:.3f}")
    cols = ["graphs", "early exit", "exit rate", "stage 1 only", "stage 2 only"]
    with_baseline = "baseline" in acc["float"]
    cols += ["baseline"] if with_baseline else []
    for col in cols:
        table.add_column(col, justify="left" if col == "graphs" else "right")
    for name in ("float", "int8"):
        a = acc[name]
        table.add_row(
            name,
            f"{100 * a['early_exit']:.2f}%",
            f"{100 * a['exit_rate']:.1f}%",
            f"{100 * a['stage1']:.2f}%",
            f"{100 * a['stage2']:.2f}%",
            *([f"{100 * a['baseline']:.2f}%"] if with_baseline else []),
        )
    return table


@handle_errors
def quantize(
    artifacts: Annotated[
        Path,
        typer.Argument(help="The float export folder (from `sacvit-deploy export`)."),
        ARTIFACTS,
    ] = Path("export"),
    calib_images: Annotated[
        Path,
        typer.Option(
            help="Folder of representative images (recursive; a few hundred) for static calibration.",
            show_default=False,
            rich_help_panel=QUANT,
        ),
        INPUT,
    ] = ...,  # type: ignore[assignment]
    out_dir: Annotated[
        Path,
        typer.Option("--out", help="Output folder for the int8 graphs.", rich_help_panel=QUANT),
        OUTPUT_FOLDER,
    ] = Path("export-int8"),
    per_channel: Annotated[
        bool,
        typer.Option(
            "--per-channel/--per-tensor",
            help="Weight scales per output channel (default) or one per tensor.",
            rich_help_panel=QUANT,
        ),
    ] = True,
    ops: Annotated[
        str,
        typer.Option(
            help="Weight-layer op types to quantize (MatMul, Gemm, Conv); attention, LayerNorm, Softmax, "
            "the head and the token scores stay float.",
            rich_help_panel=QUANT,
        ),
    ] = "MatMul,Gemm,Conv",
    method: Annotated[
        CalibrationMethod,
        typer.Option(
            help="How activation ranges are taken from the calibration images.", rich_help_panel=QUANT
        ),
    ] = CalibrationMethod.minmax,
    max_calib_images: Annotated[
        int, typer.Option(min=1, help="Use at most this many calibration images.", rich_help_panel=QUANT)
    ] = 512,
    calib_batch: Annotated[
        int, typer.Option(help="Calibration batch size, 1 to 1024.", rich_help_panel=QUANT)
    ] = 8,
    quantize_head: Annotated[
        bool,
        typer.Option(
            "--quantize-head",
            help="Quantize the classifier head too (it feeds the exit gate).",
            rich_help_panel=QUANT,
        ),
    ] = False,
    images: Annotated[
        Optional[Path],
        typer.Option(
            help="Labelled images (ImageFolder: IMAGES/<class>/<image>) for verification and accuracy; "
            "default: the calibration images (not held out).",
            rich_help_panel=VERIFY,
        ),
        INPUT,
    ] = None,
    folder_labels: Annotated[
        FolderLabels,
        typer.Option(
            help="What a folder name of --images means: names = one of the model's class names; index = a "
            "class index (folder 3 = class 3); sorted = the i-th folder in sorted order is class i.",
            rich_help_panel=VERIFY,
        ),
    ] = FolderLabels.names,
    min_agreement: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Fail (write nothing) when a top-1 or exit-decision agreement with float is below this.",
            rich_help_panel=VERIFY,
        ),
    ] = 0.95,
    threads: Annotated[Optional[int], typer.Option(min=1, help="ONNX Runtime CPU threads.")] = None,
    json_file: Annotated[
        Optional[Path],
        typer.Option("--json", help="Write the verification report as JSON.", rich_help_panel=VERIFY),
        OUTPUT_FILE,
    ] = None,
) -> None:
    """Quantize a float export to INT8 Q/DQ graphs (static calibration), verified against the float graphs."""
    from sacvit_deploy.quantize.quantize_export import QuantizeOptions, QuantizeRejected, quantize_export

    def log(message: str) -> None:  # a calibration image that does not load is a warning
        note(f"[yellow]{safe(message)}[/]" if message.startswith("skipped ") else safe(message))

    options = QuantizeOptions(per_channel, _ops(ops), method.value, calib_batch, quantize_head, threads)
    try:
        with err.status("checking the float export ...") as status:
            run = quantize_export(
                artifacts,
                calib_images,
                out_dir,
                options=options,
                images=images,
                folder_labels=folder_labels.value,
                max_calib_images=max_calib_images,
                min_agreement=min_agreement,
                log=log,
                on_step=lambda step: status.update(f"{step} ..."),
            )
    except QuantizeRejected as exc:  # the report is shown (and written) before the one-line error
        _show_report(exc.report, json_file)
        raise
    _show_report(run.report, json_file)
    sizes = file_sizes(run.files)
    out.print(f"quantized to {safe(run.folder)}/ in {run.seconds:.1f} s: {sizes}")
    acc = run.accuracy
    if acc:
        out.print(
            f"early-exit accuracy: float {100 * acc['float']['early_exit']:.2f}%, int8 {100 * acc['int8']['early_exit']:.2f}% "
            f"({acc['early_exit_delta_points']:+.2f} points)"
        )
    if run.speed_note is not None:
        note(safe(run.speed_note))
    note(
        f"next: sacvit-deploy check {safe(run.folder)} --trt 10,11   |   sacvit-deploy profile --artifacts {safe(run.folder)}"
    )


def _show_report(report: dict, json_file: Optional[Path]) -> None:
    out.print(agreement_table(report))
    if "accuracy" in report:
        out.print(accuracy_table(report["accuracy"]))
    if json_file is not None:
        write_json(json_file, report)
