"""`sacvit-deploy serve`: the early-exit model behind a real Triton server on this machine, one command.

Writes the model repository that `sacvit-deploy triton --backend python` writes (the BLS gate, and the
stages' ONNX graphs run by onnxruntime inside Triton's Python backend) and starts the tritonserver of
PyPI's nvidia-pytriton wheel on it (:mod:`sacvit_deploy.triton.server`), listening on 127.0.0.1 only.
Prints the endpoints; Ctrl-C or SIGTERM stops the server (by its PID) and exits 0.
"""

from __future__ import annotations

import signal
import tempfile
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
        int, typer.Option(min=1, help="max_batch_size of every model.", rich_help_panel=MODEL)
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
    from sacvit_deploy.triton.repository import RepositoryOptions, check_artifacts, write_repository
    from sacvit_deploy.triton.server import Ports, TritonInstall, TritonServer, signals_held

    # The artifacts first (a read of the manifest), then the Triton environment (whose fix is a long
    # install): a wrong folder is said before the user builds an environment for it.
    check_artifacts(artifacts)
    install = TritonInstall.find(triton_env)
    versions = install.check_python()
    # From here on serve owns what it makes (the repository folder, tritonserver and its stubs):
    # a SIGTERM is handled like Ctrl-C from the first moment, and the cleanup below runs to the end
    # however many Ctrl-C / SIGTERM follow (each one escalates the server's stop to SIGKILL).
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    scratch = None
    server = None
    stopped_by = ""
    try:
        if repository is None:
            scratch = tempfile.TemporaryDirectory(prefix="sacvit-serve-")
            repository = Path(scratch.name) / "model_repository"
        options = RepositoryOptions(
            backend="python",
            max_batch=max_batch,
            instances=instances,
            threshold=threshold,
            queue_delay_us=max_queue_delay_us,
        )
        result = write_repository(artifacts, repository, options, log=lambda m: note(safe(m)))
        server = TritonServer(repository, install, Ports(http_port, grpc_port, metrics_port), log_path=log)
        note(
            f"starting tritonserver ({safe(install.binary)}) with numpy {safe(versions['numpy'])}, "
            f"onnxruntime {safe(versions['onnxruntime'])}"
        )
        server.start()
        version = server.metadata().get("version", "?")
        models = result.index.models
        out.print(
            f"serving '{safe(models['bls'])}' (SAC-ViT early exit, threshold {result.threshold:g}, max batch "
            f"{result.max_batch}) with Triton {safe(version)}, pid {server.pid}"
        )
        out.print(f"  HTTP     {server.http_url}")
        out.print(f"  gRPC     {server.grpc_url}")
        out.print(f"  metrics  {server.metrics_url}")
        out.print(f"  try      sacvit-deploy infer --triton {server.http_url} IMAGES")
        out.print("ready; Ctrl-C or SIGTERM stops it", highlight=False)
        out.file.flush()
        while server.running:
            time.sleep(0.2)
        raise fail(
            f"tritonserver exited on its own (code {server.process.returncode}): {safe(server.log_tail())}"
        )
    except KeyboardInterrupt:
        stopped_by = "Ctrl-C"
    except _Stop:
        stopped_by = "SIGTERM"
    finally:
        with signals_held(lambda: server._kill_group(server.process) if server and server.process else None):
            signal.signal(signal.SIGTERM, previous)
            code = server.stop() if server is not None else None
            if scratch is not None:
                scratch.cleanup()
    if server is None or server.pid is None:
        note(f"{stopped_by}: stopped before tritonserver started; nothing left running")
        raise typer.Exit(130)
    note(f"{stopped_by}: stopped tritonserver (pid {server.pid}, exit code {code})")
