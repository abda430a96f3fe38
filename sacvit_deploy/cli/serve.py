"""`sacvit-deploy serve`: the early-exit model behind a real Triton server on this machine, one command.

Writes the model repository that `sacvit-deploy triton --backend python` writes (the BLS gate, and the
stages' ONNX graphs run by onnxruntime inside Triton's Python backend) and starts the tritonserver of
PyPI's nvidia-pytriton wheel on it (:mod:`sacvit_deploy.triton.server`), listening on 127.0.0.1 only.
Prints the endpoints; Ctrl-C or SIGTERM stops the server (by its PID) and exits 0. The work is
:func:`sacvit_deploy.triton.serving.serve_artifacts`; this command owns the SIGTERM handler and the wait.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import fail, note, out, safe
from sacvit_deploy.cli._paths import ARTIFACTS, INPUT, OUTPUT_FILE, OUTPUT_FOLDER

SERVER = "Server"
MODEL = "Model"


class _Stop(Exception):
    """SIGTERM arrived."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Stop


@handle_errors
def serve(
    artifacts: Annotated[
        Path,
        typer.Option(help="Export folder with the ONNX graphs.", rich_help_panel=MODEL),
        ARTIFACTS,
    ] = Path("export"),
    http_port: Annotated[
        int, typer.Option(min=0, max=65535, help="HTTP port (0: a free one).", rich_help_panel=SERVER)
    ] = 8000,
    grpc_port: Annotated[
        int, typer.Option(min=0, max=65535, help="gRPC port (0: a free one).", rich_help_panel=SERVER)
    ] = 8001,
    metrics_port: Annotated[
        int,
        typer.Option(
            min=0, max=65535, help="Prometheus metrics port (0: a free one).", rich_help_panel=SERVER
        ),
    ] = 8002,
    max_batch: Annotated[
        int, typer.Option(help="max_batch_size of every model, 1 to 1024.", rich_help_panel=MODEL)
    ] = 32,
    max_queue_delay_us: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="Dynamic batcher queue delay of every model, in µs (default: 100, stage 2: 500).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    instances: Annotated[
        int,
        typer.Option(
            min=1,
            help="Instances of each stage model; the BLS model gets twice as many.",
            rich_help_panel=MODEL,
        ),
    ] = 1,
    threshold: Annotated[
        Optional[float],
        typer.Option(
            help="Exit threshold (default: the manifest's); requests may override it.", rich_help_panel=MODEL
        ),
    ] = None,
    repository: Annotated[
        Optional[Path],
        typer.Option(
            help="Write the model repository here and keep it (default: a temporary folder, removed on exit).",
            rich_help_panel=SERVER,
        ),
        OUTPUT_FOLDER,
    ] = None,
    triton_env: Annotated[
        Optional[Path],
        typer.Option(
            help="A venv with nvidia-pytriton, numpy<2 and onnxruntime (default: $SACVIT_TRITON_ENV, else this "
            "Python's environment).",
            rich_help_panel=SERVER,
        ),
        INPUT,
    ] = None,
    log: Annotated[
        Optional[Path],
        typer.Option(help="The server's log file (default: in a temporary folder).", rich_help_panel=SERVER),
        OUTPUT_FILE,
    ] = None,
) -> None:
    """Serve the early-exit model with Triton on 127.0.0.1 until Ctrl-C or SIGTERM."""
    from sacvit_deploy.triton.server import signals_held
    from sacvit_deploy.triton.serving import Ports, RepositoryOptions, serve_artifacts

    options = RepositoryOptions(
        backend="python",
        max_batch=max_batch,
        instances=instances,
        threshold=threshold,
        queue_delay_us=max_queue_delay_us,
    )
    # The artifacts, then the Triton environment: checked here, before anything is started.
    serving = serve_artifacts(
        artifacts,
        options=options,
        ports=Ports(http_port, grpc_port, metrics_port),
        triton_env=triton_env,
        repository=repository,
        log_file=log,
        log=lambda m: note(safe(m)),
    )
    # From here on serve owns what it makes (the repository folder, tritonserver and its stubs):
    # a SIGTERM is handled like Ctrl-C from the first moment, and the cleanup below runs to the end
    # however many Ctrl-C / SIGTERM follow (each one escalates the server's stop to SIGKILL).
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    stopped_by = ""
    try:
        serving.start()
        out.print(
            f"serving '{safe(serving.models['bls'])}' (SAC-ViT early exit, threshold {serving.threshold:g}, "
            f"max batch {serving.max_batch}) with Triton {safe(serving.triton_version)}, pid {serving.pid}"
        )
        out.print(f"  HTTP     {serving.http_url}")
        out.print(f"  gRPC     {serving.grpc_url}")
        out.print(f"  metrics  {serving.metrics_url}")
        out.print(f"  try      sacvit-deploy infer --triton {serving.http_url} IMAGES")
        out.print("ready; Ctrl-C or SIGTERM stops it", highlight=False)
        out.file.flush()
        while serving.running:
            time.sleep(0.2)
        raise fail(f"tritonserver exited on its own (code {serving.returncode}): {safe(serving.log_tail())}")
    except KeyboardInterrupt:
        stopped_by = "Ctrl-C"
    except _Stop:
        stopped_by = "SIGTERM"
    finally:
        with signals_held(serving.kill):
            signal.signal(signal.SIGTERM, previous)
            code = serving.stop()
    if serving.pid is None:
        note(f"{stopped_by}: stopped before tritonserver started; nothing left running")
        raise typer.Exit(130)
    note(f"{stopped_by}: stopped tritonserver (pid {serving.pid}, exit code {code})")
