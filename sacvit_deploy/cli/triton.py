"""`sacvit-deploy triton`: an artifact folder -> a Triton Inference Server model repository.

Writes the two stage models (ONNX Runtime or TensorRT plans, dynamic batching) and a Python-backend
BLS model that runs the early-exit gate, then checks every config.pbtxt with Triton's own schema.
``--check DIR`` only checks an existing repository. Exit code 0: written / checks out; 2: the check
found problems; 1: a user error.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional, Tuple

import typer
from rich.table import Table
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import fail, note, out, safe
from sacvit_deploy.cli._paths import ARTIFACTS, INPUT, OUTPUT_FOLDER
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.extras import install_hint

REPO = "Repository"
SERVING = "Serving"
EXIT_CHECK_FAILED = 2
TRITON_EXTRA = install_hint("triton")


class TritonBackend(str, Enum):
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"
    python = "python"


class InstanceKind(str, Enum):
    gpu = "gpu"
    cpu = "cpu"


def parse_gpus(value: Optional[str]) -> Tuple[int, ...]:
    if not value:
        return ()
    try:
        gpus = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise SacvitError(f"--gpus {value!r}: give GPU ids separated by commas, e.g. 0,1") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise SacvitError(f"--gpus {value!r}: give distinct GPU ids (0, 1, ...) separated by commas")
    return gpus


def print_report(report) -> None:  # report: ValidationReport
    table = Table(title=f"Triton repository check: {safe(report.folder)}")
    for col in ("model", "check", "result", "detail"):
        table.add_column(col)
    for f in report.findings:
        verdict = "[yellow]note[/]" if f.note else ("[green]ok[/]" if f.ok else "[red]FAIL[/]")
        table.add_row(safe(f.model), safe(f.check), verdict, safe(f.detail))
    out.print(table)


@handle_errors
def triton(
    artifacts: Annotated[
        Optional[Path],
        typer.Option(
            help="Artifact folder (default: export/ for onnxruntime, engines/ for tensorrt).",
            rich_help_panel=REPO,
        ),
        ARTIFACTS,
    ] = None,
    out_dir: Annotated[
        Path,
        typer.Option("--out", help="Model repository folder to write.", rich_help_panel=REPO),
        OUTPUT_FOLDER,
    ] = Path("model_repository"),
    backend: Annotated[
        TritonBackend,
        typer.Option(
            help="Stage models as ONNX Runtime graphs, TensorRT plans (built for the server's TensorRT), or "
            "python: the ONNX graphs run by onnxruntime inside Triton's Python backend (servers with only "
            "that backend, e.g. PyTriton's; `sacvit-deploy serve`).",
            rich_help_panel=REPO,
        ),
    ] = TritonBackend.onnxruntime,
    name: Annotated[
        str,
        typer.Option(
            help="Name clients call; the stages are NAME_stage1 and NAME_stage2.", rich_help_panel=REPO
        ),
    ] = "sacvit",
    threshold: Annotated[
        Optional[float],
        typer.Option(
            help="Exit threshold in the BLS config (default: the manifest's); requests may override it.",
            rich_help_panel=REPO,
        ),
    ] = None,
    check: Annotated[
        Optional[Path],
        typer.Option(
            "--check",
            help="Only check this existing repository (schema, graphs, files) and exit.",
            rich_help_panel=REPO,
        ),
        INPUT,
    ] = None,
    max_batch: Annotated[
        Optional[int],
        typer.Option(
            "--max-batch",
            help="max_batch_size of every model, 1 to 1024 (default: 32; for TensorRT the engines' profile max).",
            rich_help_panel=SERVING,
        ),
    ] = None,
    instances: Annotated[
        int,
        typer.Option(
            min=1,
            help="Instances of each stage model, per GPU; the BLS model gets twice as many.",
            rich_help_panel=SERVING,
        ),
    ] = 1,
    kind: Annotated[
        Optional[InstanceKind],
        typer.Option(
            help="Where the stage models run (default: cpu for --backend python, else gpu).",
            rich_help_panel=SERVING,
        ),
    ] = None,
    gpus: Annotated[
        Optional[str],
        typer.Option(
            help="GPU ids for the stage instances, e.g. 0,1 (default: all).", rich_help_panel=SERVING
        ),
    ] = None,
) -> None:
    """Write a Triton model repository: two stage models and a BLS model that runs the early-exit gate."""
    from sacvit_deploy.runtime.loader import DEFAULT_ENGINE_DIR, DEFAULT_EXPORT_DIR
    from sacvit_deploy.triton.repository import RepositoryOptions, write_repository
    from sacvit_deploy.triton.validate import validate_repository

    if check is not None:
        report = validate_repository(check)
        print_report(report)
        failures = report.failures
        notes = sum(f.note for f in report.findings)
        if failures:
            raise fail(
                f"{safe(check)}: {len(failures)} of {len(report.findings)} checks failed; see the table above",
                EXIT_CHECK_FAILED,
            )
        out.print(
            f"{safe(check)}: all {len(report.findings) - notes} checks passed"
            + (f", {notes} notes" if notes else "")
        )
        return

    if artifacts is None:
        artifacts = DEFAULT_ENGINE_DIR if backend == TritonBackend.tensorrt else DEFAULT_EXPORT_DIR
    options = RepositoryOptions(
        backend=backend.value,
        max_batch=max_batch,
        instances=instances,
        kind=kind.value if kind else None,
        gpus=parse_gpus(gpus),
        threshold=threshold,
        name=name,
    )
    result = write_repository(artifacts, out_dir, options, log=lambda m: note(safe(m)))
    if result.validated:
        note("checked every config.pbtxt with Triton's ModelConfig schema and against the graphs")
    else:
        note(
            f"[yellow]not checked against Triton's config schema: {safe(TRITON_EXTRA)}, "
            f"then sacvit-deploy triton --check {safe(out_dir)}[/]"
        )
    models = result.index.models
    out.print(
        f"wrote {safe(out_dir)}/ in {result.seconds:.1f} s: {models['bls']} (BLS, threshold {result.threshold:g}), "
        f"{models['stage1']} + {models['stage2']} ({backend.value}), max batch {result.max_batch}"
    )
    if backend == TritonBackend.tensorrt:
        trt = result.manifest.tensorrt.version if result.manifest.tensorrt else "?"
        note(
            f"the plans were built with TensorRT {safe(trt)}: serve them with the Triton release that ships it"
        )
    if backend == TritonBackend.python:
        note(
            "the stages need onnxruntime (and numpy < 2 for PyTriton's stubs) in the Python backend's "
            f"environment; PyTriton's tritonserver runs it: sacvit-deploy serve --artifacts {safe(artifacts)} (docs/triton.md)"
        )
        return
    note(
        f"next: docker run --gpus all --shm-size 1g -p8000:8000 -p8001:8001 -p8002:8002 "
        f"-v {safe(out_dir.resolve())}:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models"
        f"   |   sacvit-deploy infer --triton http://localhost:8000 IMAGES  (docs/triton.md)"
    )
