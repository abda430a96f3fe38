"""Run a real Triton Inference Server: the ``tritonserver`` that PyPI's ``nvidia-pytriton`` wheel bundles.

The wheel (0.7.0: Triton 2.51, manylinux_2_35 x86_64) holds ``pytriton/tritonserver/bin/tritonserver``,
the Python backend (``backends/python/libtriton_python.so`` + ``triton_python_backend_utils.py``), one
backend stub per Python version (``python_backend_stubs/3.X/triton_python_backend_stub``) and the
libraries they link (``nvidia_pytriton.libs``). It has no onnxruntime or tensorrt backend, so the
repository served here uses the ``python`` stage flavour (``sacvit-deploy triton --backend python``).

What running it takes (:class:`TritonInstall`, :class:`TritonServer`):

* a backend folder whose ``python/`` holds the library, the utils and the stub of the Python the
  stub embeds, renamed ``triton_python_backend_stub`` (prepared in a scratch folder);
* ``LD_LIBRARY_PATH`` with ``nvidia_pytriton.libs``;
* for the stub's Python, an environment with numpy < 2 (with numpy 2 the stubs return empty
  outputs) and onnxruntime (the stage models), first on ``PATH`` (the stub ignores ``PYTHONPATH``);
* every listener on 127.0.0.1: ``tritonserver`` binds HTTP, gRPC and metrics to 0.0.0.0 by default,
  so the addresses are always passed, and SageMaker / Vertex AI endpoints are turned off.

The server is started in its own process group and always stopped by its own PID (SIGTERM, then
SIGKILL to its group, which holds its stub processes).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.validate import parse_json

ENV_VAR = "SACVIT_TRITON_ENV"  # a venv with nvidia-pytriton, numpy < 2 and onnxruntime
LOOPBACK = "127.0.0.1"
SETUP = (
    "python3 -m venv ENV && ENV/bin/pip install 'numpy<2' onnxruntime && "
    "ENV/bin/pip install --no-deps nvidia-pytriton==0.7.0, then pass --triton-env ENV or set SACVIT_TRITON_ENV=ENV"
)
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
_MIN_GLIBC = (2, 35)


class TritonServerError(SacvitError):
    """tritonserver cannot be found, prepared, started, or it stopped."""


class TritonUnsupported(TritonServerError):
    """The PyTriton wheel's tritonserver does not run on this platform (Linux x86_64, glibc 2.35+)."""


def platform_problem() -> Optional[str]:
    """Why the wheel's binaries cannot run here, or None."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the nvidia-pytriton wheel is for Linux x86_64, this is {sys.platform} {platform.machine()}"
    lib, version = platform.libc_ver()
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        parts = ()
    if lib != "glibc" or len(parts) < 2 or parts < _MIN_GLIBC:
        return f"the nvidia-pytriton wheel needs glibc 2.35+ (manylinux_2_35), this is {lib or '?'} {version or '?'}"
    return None


def _dist_version(folders: Sequence[Path], name: str) -> Optional[str]:
    """The version of an installed distribution found on these folders (from its dist-info name)."""
    pattern = re.compile(rf"^{name}-([0-9][^-]*)\.dist-info$", re.IGNORECASE)
    for folder in folders:
        with contextlib.suppress(OSError):
            for entry in sorted(folder.iterdir()):
                m = pattern.match(entry.name)
                if m:
                    return m.group(1)
    return None


@dataclass(frozen=True)
class TritonInstall:
    """A Python environment holding the wheel (its tritonserver), numpy < 2 and onnxruntime.

    The Python-backend stub embeds Python in isolated mode: it ignores ``PYTHONPATH`` and takes its
    ``sys.path`` from the first ``python3`` on ``PATH`` (a venv's site-packages included). So the
    server is started with this environment's ``bin/`` first on ``PATH``, and the stub runs the models
    with exactly this environment's packages.
    """

    env: Path  # the environment's folder (a venv, or sys.prefix)
    site: Path  # its site-packages, holding pytriton/ and nvidia_pytriton.libs/
    python_version: str  # "3.11": the stub used, the environment's Python

    @property
    def tritonserver_dir(self) -> Path:
        return self.site / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.tritonserver_dir / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.site / "nvidia_pytriton.libs"

    @property
    def bin(self) -> Path:
        return self.env / "bin"

    def stub(self) -> Path:
        return (
            self.tritonserver_dir
            / "python_backend_stubs"
            / self.python_version
            / "triton_python_backend_stub"
        )

    @classmethod
    def find(cls, env: Optional[Union[str, Path]] = None) -> TritonInstall:
        """``env``, else ``$SACVIT_TRITON_ENV``, else this Python's environment if it has nvidia-pytriton."""
        problem = platform_problem()
        if problem:
            raise TritonUnsupported(problem)
        where = "--triton-env" if env else ENV_VAR
        chosen = env or os.environ.get(ENV_VAR)
        if chosen:
            root = Path(chosen).expanduser().absolute()
        else:
            if importlib.util.find_spec("pytriton") is None:
                raise TritonServerError(f"no tritonserver found: {SETUP}")
            root, where = Path(sys.prefix), f"this Python's environment ({sys.prefix})"
        sites = sorted(root.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
        if not sites:
            raise TritonServerError(f"{where}: {root} has no nvidia-pytriton (its tritonserver); {SETUP}")
        site = sites[-1].parents[3]
        version = (
            site.parent.name[len("python") :] if site.parent.name.startswith("python") else site.parent.name
        )
        install = cls(root, site, version)
        if not (install.bin / "python3").exists():
            raise TritonServerError(f"{where}: {root} has no bin/python3; make it a venv: {SETUP}")
        return install

    def check_python(self, need_onnxruntime: bool = True) -> Dict[str, str]:
        """numpy < 2 (and onnxruntime) in the environment the stub runs; their versions."""
        numpy = _dist_version([self.site], "numpy")
        pip = f"{self.bin / 'python3'} -m pip install"
        if numpy is None:
            raise TritonServerError(f"{self.env}: no numpy for Triton's Python backend: {pip} 'numpy<2'")
        if int(numpy.split(".")[0]) >= 2:
            raise TritonServerError(
                f"{self.env} has numpy {numpy}; PyTriton's Python-backend stubs are built against numpy 1.x "
                f"and return empty outputs with numpy 2: {pip} 'numpy<2'"
            )
        found = {"numpy": numpy}
        if need_onnxruntime:
            ort = _dist_version([self.site], "onnxruntime")
            if ort is None:
                raise TritonServerError(
                    f"{self.env} has no onnxruntime (the stage models run their graphs with it): {pip} onnxruntime"
                )
            found["onnxruntime"] = ort
        return found

    def prepare_backends(self, folder: Path) -> Path:
        """``folder/python/`` with the library, the utils and the environment's stub under its plain name."""
        stub = self.stub()
        if not stub.is_file():
            have = sorted(p.name for p in (self.tritonserver_dir / "python_backend_stubs").glob("3.*"))
            raise TritonServerError(
                f"{self.tritonserver_dir}: no Python backend stub for Python {self.python_version} "
                f"(it has {', '.join(have)})"
            )
        if ctypes.util.find_library(f"python{self.python_version}") is None:
            raise TritonServerError(
                f"the Python {self.python_version} backend stub needs libpython{self.python_version}.so.1.0, "
                f"which is not installed (Debian/Ubuntu: apt install libpython{self.python_version})"
            )
        python = Path(folder) / "python"
        python.mkdir(parents=True, exist_ok=True)
        src = self.tritonserver_dir / "backends" / "python"
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copyfile(src / name, python / name)
        shutil.copyfile(stub, python / "triton_python_backend_stub")
        (python / "triton_python_backend_stub").chmod(0o755)
        return Path(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass
class Ports:
    http: int = 0  # 0: a free port
    grpc: int = 0
    metrics: int = 0

    def resolved(self) -> Ports:
        return Ports(self.http or free_port(), self.grpc or free_port(), self.metrics or free_port())


@dataclass
class TritonServer:
    """One ``tritonserver`` process on 127.0.0.1, serving ``repository``."""

    repository: Path
    install: TritonInstall
    ports: Ports = field(default_factory=Ports)
    log_path: Optional[Path] = None  # default: server.log in the scratch folder, removed by stop()
    exit_on_error: bool = True  # False: keep running when a model fails to load (for fault tests)
    extra_args: Tuple[str, ...] = ()
    process: Optional[subprocess.Popen] = None
    _scratch: Optional[tempfile.TemporaryDirectory] = None

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{LOOPBACK}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.metrics}/metrics"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def command(self, backends: Path) -> List[str]:
        return [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--allow-gpu-metrics=false",
            f"--exit-on-error={'true' if self.exit_on_error else 'false'}",
            "--log-verbose=0",
            *self.extra_args,
        ]

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        libs = [str(self.install.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        # The stub's Python is the first python3 on PATH (see TritonInstall).
        env["PATH"] = os.pathsep.join([str(self.install.bin), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(self.install.env)
        for name in ("PYTHONHOME", "PYTHONPATH"):
            env.pop(name, None)
        return env

    def start(
        self, wait_for: Optional[Sequence[str]] = None, timeout: float = START_TIMEOUT_S
    ) -> TritonServer:
        """Start and wait until ready: the server (all models), or only the models in ``wait_for``."""
        if self.process is not None:
            return self
        self.install.check_python(need_onnxruntime=True)
        self._scratch = tempfile.TemporaryDirectory(prefix="sacvit-triton-")
        scratch = Path(self._scratch.name)
        backends = self.install.prepare_backends(scratch / "backends")
        self.ports = self.ports.resolved()
        self.log_path = Path(self.log_path or scratch / "server.log")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(backends),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: the stubs are stopped with it, and Ctrl-C is ours
            )
        try:
            self.wait_ready(wait_for, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, models: Optional[Sequence[str]], timeout: float) -> None:
        paths = [f"/v2/models/{m}/ready" for m in models] if models else ["/v2/health/ready"]
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                code = self.process.returncode if self.process else "?"
                raise TritonServerError(
                    f"tritonserver exited (code {code}) before it was ready: {self.log_tail()}"
                )
            if all(self._get(p)[0] == 200 for p in paths):
                return
            if time.monotonic() > deadline:
                raise TritonServerError(f"tritonserver not ready after {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.2)

    def _get(self, path: str) -> Tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except (OSError, ValueError):
            return 0, b""

    def get_json(self, path: str) -> Any:
        status, body = self._get(path)
        if status != 200:
            raise TritonServerError(f"{self.http_url}{path}: HTTP {status or 'unreachable'}")
        return parse_json(body)

    def metadata(self) -> Dict[str, Any]:
        """``/v2``: the server's name, version and extensions."""
        return self.get_json("/v2")

    def statistics(self, model: str) -> Dict[str, Any]:
        """``/v2/models/MODEL/stats`` of the model's version: counts and cumulative times."""
        stats = self.get_json(f"/v2/models/{model}/stats")["model_stats"]
        return stats[0] if stats else {}

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path else ""
        except OSError:
            text = ""
        useful = [line for line in text.splitlines() if line.strip() and not _is_gpu_noise(line)]
        tail = " | ".join(" ".join(line.split()) for line in useful[-lines:]) or "no output"
        scratch = self._scratch.name if self._scratch else None
        kept = self.log_path and not (scratch and str(self.log_path).startswith(scratch))
        return f"{tail} (log: {self.log_path})" if kept else f"{tail} (pass a log path to keep the log)"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> Optional[int]:
        """SIGTERM to the server's PID (it unloads the models and stops its stubs), then SIGKILL to its
        process group if it has not exited in ``timeout``; the exit code, None if never started.

        Runs to the end whatever arrives meanwhile: a Ctrl-C or SIGTERM during the stop (a user
        pressing Ctrl-C again) kills the group at once instead of interrupting the cleanup, so
        neither the server, nor its stubs, nor the temporary folder outlive us."""
        process = self.process
        if process is None:
            return None
        with signals_held(lambda: self._kill_group(process)):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout)
            # Its group (id = its PID, start_new_session) holds stubs a killed server may leave behind.
            self._kill_group(process)
            process.wait()
            code = process.returncode
            if self._scratch is not None:  # the backend copies, and the log unless log_path was given
                self._scratch.cleanup()
                self._scratch = None
        return code

    @staticmethod
    def _kill_group(process: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def kill_group(self) -> None:
        """SIGKILL to the server's process group (its Python-backend stubs with it), at once; what a
        second Ctrl-C during a stop does. :meth:`stop` still reaps it and cleans up."""
        if self.process is not None:
            self._kill_group(self.process)

    def kill(self) -> None:
        """SIGKILL to the server's PID only (a crash, for fault tests); :meth:`stop` cleans up after."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def signals_held(on_signal: Optional[Callable[[], None]] = None) -> Iterator[List[int]]:
    """Ctrl-C and SIGTERM do not interrupt the block (cleanup that must finish); each one calls
    ``on_signal`` (e.g. escalate to SIGKILL) and is recorded in the yielded list. Main thread only;
    elsewhere the block runs as is."""
    import threading

    caught: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def hold(signum: int, _frame: object) -> None:
        caught.append(signum)
        if on_signal is not None:
            on_signal()

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in handlers:
        signal.signal(sig, hold)
    try:
        yield caught
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _is_gpu_noise(line: str) -> bool:
    """The NVML / DCGM / CUDA warnings a GPU-less machine logs at start."""
    return any(
        w in line for w in ("NVML", "DCGM", "dcgm", "CUDA driver", "cudaGetDevice", "GPU metrics", "libcuda")
    )
