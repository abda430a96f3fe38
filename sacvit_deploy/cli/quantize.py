"""`sacvit-deploy quantize`: a float export -> INT8 Q/DQ graphs (stage 1, stage 2, baseline), verified.

A command of its own rather than ``export --int8``: it starts from a verified float export (any of
them, also one whose checkpoint is gone), needs its own input (calibration images), and its check is
agreement with the float graphs, not export's 1e-4 parity with PyTorch. The float folder stays as it
is, so both can be compared, profiled and deployed side by side. Details: docs/int8.md.
"""

from __future__ import annotations

from contextlib import closing
from enum import Enum
from pathlib import Path
from typing import Optional, Tuple

import typer
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import err, note, out, safe
from sacvit_deploy.cli._paths import ARTIFACTS, INPUT, OUTPUT_FILE, OUTPUT_FOLDER, write_json

QUANT = "Quantization"
VERIFY = "Verification"
# Below this many GFLOPs per image (the demo model: 0.0137; DeiT-Ti 1.3), int8 on ONNX Runtime CPU may be
# slower than float: measured 0.64-0.84x on the demo model (issue 24), 1.78x faster at DeiT-S (README).
SMALL_GFLOPS = 1.0


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
        int, typer.Option(min=1, help="Calibration batch size.", rich_help_panel=QUANT)
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
    import torch

    from sacvit_deploy.core.manifest import Manifest
    from sacvit_deploy.quantize.artifacts import QuantizeOptions, load_calibration_images, quantize_artifacts
    from sacvit_deploy.quantize.compare import compare_folders
    from sacvit_deploy.quantize.qdq import QuantizeError
    from sacvit_deploy.runtime.images import iter_batches

    options = QuantizeOptions(per_channel, _ops(ops), method.value, calib_batch, quantize_head, threads)
    options.validate()
    float_manifest = Manifest.load(artifacts)
    cfg = float_manifest.preprocess
    with err.status("loading the calibration images ..."):
        calib = load_calibration_images(
            calib_images, cfg, max_calib_images, log=lambda m: note(f"[yellow]{safe(m)}[/]")
        )
    note(f"calibration: {calib.images.shape[0]} images from {safe(calib_images)}")
    labelled = None
    if images is not None:
        from sacvit_deploy.runtime.exit_calibration import find_labelled_images

        labelled = find_labelled_images(images, float_manifest.num_classes, float_manifest.class_names)
        note(
            f"verification: {len(labelled.paths)} labelled images in {safe(images)} ({safe(labelled.describe())})"
        )

    def batches():
        if labelled is None:
            for start in range(0, calib.images.shape[0], 32):
                yield torch.from_numpy(calib.images[start : start + 32]), None
            return
        from sacvit_deploy.runtime.exit_calibration import images_and_labels

        with closing(iter_batches(labelled.paths, cfg, batch_size=32)) as it:
            yield from images_and_labels(labelled, it)

    source = "labelled images" if labelled is not None else "calibration images"
    report_box: dict = {}

    def verify(staging: Path, manifest: Manifest) -> dict:
        with err.status("comparing the int8 graphs with the float ones ..."):
            report = compare_folders(
                artifacts, float_manifest, staging, manifest, batches(), source, min_agreement, threads
            )
        report_box["report"] = report
        out.print(agreement_table(report))
        if "accuracy" in report:
            out.print(accuracy_table(report["accuracy"]))
        if json_file is not None:
            write_json(json_file, report)
        if not report["passed"]:

            def lowest(r: dict) -> float:
                return min(r["top1_agreement"], 1.0 if r["exit_agreement"] is None else r["exit_agreement"])

            worst = min((r for r in report["rows"] if not r["passed"]), key=lowest)
            raise QuantizeError(
                f"int8 {worst['check']} agrees with float on only "
                f"{100 * lowest(worst):.1f}% of {worst['samples']} "
                f"images (need {100 * min_agreement:.0f}%); nothing was written. Try more calibration images, "
                "--method percentile, --ops MatMul (patch embedding float), or --min-agreement at your own risk"
            )
        return report

    result = quantize_artifacts(
        artifacts, out_dir, calib, options, verify=verify, log=lambda m: note(safe(m))
    )
    sizes = ", ".join(f"{name} {size / 2**20:.1f} MB" for name, size in result.files.items())
    out.print(f"quantized to {safe(result.folder)}/ in {result.seconds:.1f} s: {sizes}")
    if report_box.get("report", {}).get("accuracy"):
        acc = report_box["report"]["accuracy"]
        out.print(
            f"early-exit accuracy: float {100 * acc['float']['early_exit']:.2f}%, int8 {100 * acc['int8']['early_exit']:.2f}% "
            f"({acc['early_exit_delta_points']:+.2f} points)"
        )
    from sacvit_deploy.model.flops import FlopsReport, format_gflops

    gflops = FlopsReport.of(float_manifest.model).baseline
    if gflops < SMALL_GFLOPS:
        note(
            f"note: at {format_gflops(gflops)} GFLOPs per image this model is small: on ONNX Runtime's CPU "
            "kernels each int8 layer adds a quantize step and an int-to-float conversion, which can make the "
            "int8 graphs SLOWER than the float ones here (int8 pays at DeiT-S size: README, section 9); "
            f"measure both: sacvit-deploy profile --artifacts {artifacts}   and   --artifacts {result.folder}"
        )
    note(
        f"next: sacvit-deploy check {safe(result.folder)} --trt 10,11   |   sacvit-deploy profile --artifacts {safe(result.folder)}"
    )
