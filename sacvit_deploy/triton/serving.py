"""Serving an export with a real Triton server on this machine: what ``sacvit-deploy serve`` does, for
Python users.

    from sacvit_deploy.triton.client import open_triton
    from sacvit_deploy.triton.serving import Ports, serve_artifacts

    with serve_artifacts("export", ports=Ports(0, 0, 0), triton_env=".triton/env") as serving:
        print(serving.http_url, serving.pid, serving.models["bls"], serving.triton_version)
        with open_triton(serving.http_url).pipeline as pipe:
            out = pipe.run(images)  # float32 NCHW numpy; the server's early-exit answer
    print(serving.exit_code)  # tritonserver has stopped, its scratch repository is removed

``serve_artifacts`` checks the artifact folder, then the Triton environment (that order: a wrong folder
is said before anyone builds an environment for it) and returns a :class:`Serving`; entering it writes
the model repository (``--backend python``, into a temporary folder unless ``repository`` is given) and
starts ``tritonserver`` on 127.0.0.1 (:mod:`sacvit_deploy.triton.server`); leaving it, however the block
ends, stops the server by its PID and removes the temporary folder, with Ctrl-C and SIGTERM held until
that is done.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from sacvit_deploy.core.fileinfo import is_within

# Looked up through the modules at call time (not bound here), so a stand-in server can replace them.
from sacvit_deploy.triton import repository as _repository
from sacvit_deploy.triton import server as _server
from sacvit_deploy.triton.index import RepositoryError
from sacvit_deploy.triton.repository import RepositoryOptions, RepositoryResult
from sacvit_deploy.triton.server import Ports, TritonServer, TritonServerError

__all__ = ["DEFAULT_PORTS", "Ports", "RepositoryOptions", "Serving", "serve_artifacts"]

DEFAULT_PORTS = Ports(8000, 8001, 8002)  # Triton's own defaults; 0 picks a free port
SERVED_BACKEND = "python"  # PyTriton's tritonserver has no onnxruntime or tensorrt backend


def _quiet(_message: str) -> None:
    pass


@dataclass
class Serving:
    """One served export: the checks done, started by :meth:`start` (``with``), stopped by :meth:`stop`."""

    artifacts: Path
    options: RepositoryOptions
    ports: Ports  # as asked (0: a free one); the ones in use are in the urls
    install: Any  # the TritonInstall whose tritonserver runs the repository
    versions: Dict[str, str]  # numpy and onnxruntime in that environment (the Python backend's)
    repository: Optional[Path] = None  # the caller's folder (kept), or the scratch one once started
    log_file: Optional[Path] = None  # the server's log (default: in the server's scratch folder)
    log: Callable[[str], None] = _quiet
    result: Optional[RepositoryResult] = None  # write_repository's, once started
    server: Optional[TritonServer] = None
    triton_version: Optional[str] = None  # the running server's, from /v2
    exit_code: Optional[int] = None  # tritonserver's, after stop()
    _scratch: Optional[tempfile.TemporaryDirectory] = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    # ---- what it serves ----------------------------------------------------------------------------
    @property
    def models(self) -> Dict[str, str]:
        """Role -> Triton model name: ``bls`` (the model clients call), ``stage1``, ``stage2``."""
        return dict(self._result().index.models)

    @property
    def threshold(self) -> float:
        return float(self._result().threshold)

    @property
    def max_batch(self) -> int:
        return int(self._result().max_batch)

    @property
    def numpy_version(self) -> str:
        return self.versions.get("numpy", "?")

    @property
    def onnxruntime_version(self) -> str:
        return self.versions.get("onnxruntime", "?")

    # ---- the server ---------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return self._server().http_url

    @property
    def grpc_url(self) -> str:
        return self._server().grpc_url

    @property
    def metrics_url(self) -> str:
        return self._server().metrics_url

    @property
    def pid(self) -> Optional[int]:
        """tritonserver's PID (kept after it stopped); None if it never started."""
        return self.server.pid if self.server is not None else None

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.running

    @property
    def returncode(self) -> Optional[int]:
        """tritonserver's exit code once it has exited (on its own, or stopped); None while it runs."""
        process = self.server.process if self.server is not None else None
        return process.poll() if process is not None else None

    def log_tail(self, lines: int = 6) -> str:
        """The server log's last useful lines, on one line."""
        return self._server().log_tail(lines)

    def _result(self) -> RepositoryResult:
        if self.result is None:
            raise TritonServerError("not started: use `with serve_artifacts(...) as serving:` or .start()")
        return self.result

    def _server(self) -> TritonServer:
        if self.server is None:
            raise TritonServerError("not started: use `with serve_artifacts(...) as serving:` or .start()")
        return self.server

    # ---- start and stop ----------------------------------------------------------------------------
    def start(self) -> Serving:
        """Write the repository and start tritonserver; ready (all models loaded) when it returns. On
        any failure (Ctrl-C included) what was started is stopped and removed before it propagates."""
        if self._stopped:
            raise TritonServerError(
                "this Serving has stopped; call serve_artifacts(...) again to serve again"
            )
        if self.server is not None:
            return self
        try:
            if self.repository is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="sacvit-serve-")
                self.repository = Path(self._scratch.name) / "model_repository"
            self.result = _repository.write_repository(
                self.artifacts, self.repository, self.options, log=self.log
            )
            self.server = _server.TritonServer(
                self.repository, self.install, self.ports, log_path=self.log_file
            )
            self.log(
                f"starting tritonserver ({self.install.binary}) with numpy {self.numpy_version}, "
                f"onnxruntime {self.onnxruntime_version}"
            )
            self.server.start()
            self.triton_version = str(self.server.metadata().get("version", "?"))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> Optional[int]:
        """Stop tritonserver by its PID (SIGTERM, then SIGKILL to its process group) and remove the
        scratch repository; Ctrl-C / SIGTERM arriving meanwhile kill the group at once instead of
        interrupting this. Safe to call again; tritonserver's exit code (None if it never started)."""
        with _server.signals_held(self.kill):
            try:
                if self.server is not None and not self._stopped:
                    self.exit_code = self.server.stop()
            finally:
                self._stopped = True
                if self._scratch is not None:
                    self._scratch.cleanup()
                    self._scratch = None
        return self.exit_code

    def kill(self) -> None:
        """SIGKILL to tritonserver's process group (its stubs with it), now; :meth:`stop` still cleans up."""
        if self.server is not None:
            self.server.kill_group()

    def __enter__(self) -> Serving:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_artifacts(
    artifacts: Union[str, Path],
    *,
    options: RepositoryOptions = RepositoryOptions(backend=SERVED_BACKEND),
    ports: Optional[Ports] = None,
    triton_env: Optional[Union[str, Path]] = None,
    repository: Optional[Union[str, Path]] = None,
    log_file: Optional[Union[str, Path]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Serving:
    """Check what serving ``artifacts`` needs and return the :class:`Serving` that serves it when entered.

    ``options``: the repository's (``max_batch``, ``instances``, ``threshold``, ``queue_delay_us``,
    ``name``); its backend must be ``python``. ``ports``: HTTP, gRPC, metrics (default 8000, 8001,
    8002; 0: a free one). ``triton_env``: a venv with nvidia-pytriton, numpy<2 and onnxruntime
    (default: ``$SACVIT_TRITON_ENV``, else this Python's environment). ``repository``: write the model
    repository there and keep it (default: a temporary folder, removed on exit). ``log_file``: keep the
    server's log there. ``log``: called with plain-text progress lines."""
    if options.backend != SERVED_BACKEND:
        raise RepositoryError(
            f"backend {options.backend!r}: serve runs the stages with onnxruntime inside Triton's Python "
            "backend (PyTriton's tritonserver has no other); use RepositoryOptions(backend='python')"
        )
    options.check()
    artifacts = Path(artifacts)
    for what, path in (("repository", repository), ("log file", log_file)):
        if path is not None and is_within(path, artifacts):
            raise RepositoryError(
                f"{what} {path}: inside the artifact folder {artifacts}, which serve only reads; "
                "write it elsewhere"
            )
    # The artifacts first (a read of the manifest), then the Triton environment (whose fix is a long
    # install): a wrong folder is said before the user builds an environment for it.
    _repository.check_artifacts(artifacts, options.backend)
    install = _server.TritonInstall.find(triton_env)
    versions = install.check_python()
    return Serving(
        artifacts=artifacts,
        options=replace(options),
        ports=replace(ports if ports is not None else DEFAULT_PORTS),
        install=install,
        versions=dict(versions),
        repository=Path(repository) if repository is not None else None,
        log_file=Path(log_file) if log_file is not None else None,
        log=log or _quiet,
    )
