"""``serve_artifacts`` as a Python caller uses it: ``with serve_artifacts(...) as serving: ...``.

The real tritonserver (PyPI's nvidia-pytriton wheel) serves a real export where a Triton environment
exists (``$SACVIT_TRITON_ENV``, else ``.triton/env``; `.ci/run` makes it), and its answer is compared
with the local ONNX Runtime pipeline's; without one those tests skip (fail under
``SACVIT_REQUIRE_TRITON=1``), like tests/test_triton_server.py. The cleanup guarantees (the server and
its process group stopped, the scratch repository removed, also when the block raises) are checked on
the real server there, and everywhere on a stand-in process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import sacvit_deploy.triton.server as srv
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.runtime.loader import open_pipeline
from sacvit_deploy.triton.client import TritonClientError, open_triton
from sacvit_deploy.triton.serving import Ports, RepositoryOptions, Serving, serve_artifacts

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("SACVIT_REQUIRE_TRITON") == "1"


def _gone(pid: int) -> bool:
    """Exited (or a zombie nobody reaps: exited too)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group: tritonserver's holds its backend stubs."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            state, _ppid, pgrp = stat.read_text().split(") ", 1)[1].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                members.append(int(stat.parent.name))
    return members


def _all_gone(pids: list[int], within: float = 5.0) -> bool:
    """A SIGKILL to a process group is delivered asynchronously: its members die a moment later."""
    deadline = time.monotonic() + within
    while not all(_gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def triton_env() -> Path:
    env = Path(os.environ.get(srv.ENV_VAR) or REPO_ROOT / ".triton" / "env")
    try:
        srv.TritonInstall.find(env).check_python()
    except srv.TritonUnsupported as exc:
        pytest.skip(f"PyTriton's tritonserver cannot run here: {exc}")
    except srv.TritonServerError as exc:
        if REQUIRE:
            pytest.fail(f"SACVIT_REQUIRE_TRITON=1 but no usable server: {exc}")
        pytest.skip(f"no tritonserver environment ({exc})")
    return env


class _Boom(Exception):
    pass


@pytest.mark.parametrize("leave", ["returns", "raises"])
def test_a_python_caller_serves_a_real_export_and_leaves_nothing_behind(
    exported_tiny, triton_env, tmp_path, monkeypatch, leave
):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the scratch repository and the server's own folder
    monkeypatch.setattr(tempfile, "tempdir", None)
    logged: list[str] = []
    serving = serve_artifacts(
        exported_tiny,
        options=RepositoryOptions(backend="python", max_batch=8),
        ports=Ports(0, 0, 0),
        triton_env=triton_env,
        log=logged.append,
    )
    assert serving.pid is None and not serving.running  # checked, nothing started yet
    x = np.random.default_rng(3).standard_normal((5, 3, 128, 128), dtype=np.float32)
    with open_pipeline(exported_tiny, backend="onnxruntime", device="cpu").pipeline as local:
        want = local.run(x, None)
    with contextlib.ExitStack() as stack:
        if leave == "raises":
            stack.enter_context(pytest.raises(_Boom))
        with serving as s:
            pid, url, scratch = s.pid, s.http_url, s.repository
            assert s is serving and s.running and pid and not _gone(pid)
            stubs = [p for p in _group(pid) if p != pid]
            assert stubs, "tritonserver's process group holds no Python-backend stubs"
            assert scratch is not None and scratch.is_dir() and Path(tmp_path) in scratch.parents
            assert s.models == {"bls": "sacvit", "stage1": "sacvit_stage1", "stage2": "sacvit_stage2"}
            assert s.threshold == Manifest.load(exported_tiny).exit_threshold and s.max_batch == 8
            assert s.triton_version == "2.51.0"  # the wheel's server, from its /v2
            assert s.numpy_version.startswith("1.") and s.onnxruntime_version[0].isdigit()
            for u in (s.http_url, s.grpc_url, s.metrics_url):
                host, port = u.split("://")[1].split("/")[0].split(":")
                assert host == "127.0.0.1" and int(port) > 0  # on loopback, on the free ports taken
            with open_triton(url).pipeline as pipe:  # one request; the server's threshold
                got = pipe.run(x)
            np.testing.assert_array_equal(got.stage, want.stage)
            np.testing.assert_allclose(got.confidence, want.confidence, rtol=0, atol=1e-6)
            np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=1e-5)
            if leave == "raises":
                raise _Boom("the caller's own error")
    assert _all_gone([pid, *stubs]), f"tritonserver (pid {pid}) or its stubs outlived the with block"
    assert _group(pid) == []
    assert not serving.running and serving.exit_code == 0 and serving.pid == pid
    assert not scratch.parent.exists(), "the scratch repository was left behind"
    # neither serve's scratch repository nor the server's own folder (backends, log); other libraries'
    # files (a telemetry session file) are theirs
    assert list(tmp_path.glob("sacvit-*")) == [], "temporary folders left behind"
    assert any(line.startswith("starting tritonserver (") for line in logged), logged
    with pytest.raises(TritonClientError, match="is unreachable"):
        open_triton(url, timeout=5)
    with pytest.raises(SacvitError, match="has stopped"):
        serving.start()


# ---- everywhere: a stand-in for tritonserver --------------------------------------------------------
# A process-group leader with a child (like the Python-backend stubs), started by TritonServer.start's
# stand-in; the repository is the real one write_repository writes.
_STANDIN = (
    "import subprocess, sys, time\n"
    "stub = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print(stub.pid, flush=True)\n"
    "time.sleep(120)\n"
)


class _Install:
    binary = Path("/stand-in/tritonserver")

    @classmethod
    def find(cls, env):
        return cls()

    def check_python(self, need_onnxruntime=True):
        return {"numpy": "1.26.4", "onnxruntime": "1.20.0"}


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    started: list[int] = []

    def start(self, wait_for=None, timeout=0):
        self._scratch = tempfile.TemporaryDirectory(prefix="sacvit-triton-", dir=tmp_path)
        self.ports = self.ports.resolved()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _STANDIN], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        started.extend([self.process.pid, int(self.process.stdout.readline())])
        self.process.stdout.close()
        return self

    monkeypatch.setattr(srv, "TritonInstall", _Install)
    monkeypatch.setattr(srv.TritonServer, "start", start)
    monkeypatch.setattr(srv.TritonServer, "metadata", lambda self: {"version": "stand-in"})
    yield started
    for pid in started:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_an_exception_in_the_with_block_stops_the_server_and_removes_the_scratch_folder(
    exported_tiny, stand_in, tmp_path
):
    serving = serve_artifacts(exported_tiny, ports=Ports(0, 0, 0))
    with pytest.raises(_Boom, match="mid-request"), serving:
        scratch = serving.repository
        assert scratch is not None and (scratch / "sacvit" / "config.pbtxt").is_file()
        assert serving.running and serving.triton_version == "stand-in" and serving.threshold == 0.5
        assert len(stand_in) == 2 and not any(_gone(pid) for pid in stand_in)
        raise _Boom("mid-request")
    assert _all_gone(stand_in), "the server or its stub outlived the with block"
    assert serving.exit_code == -signal.SIGTERM and not serving.running
    assert not scratch.parent.exists() and not any(tmp_path.glob("sacvit-triton-*"))
    assert serving.stop() == -signal.SIGTERM  # again: nothing left to do, the same answer


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_kill_takes_the_whole_group_at_once_and_stop_still_cleans_up(exported_tiny, stand_in):
    """What a second Ctrl-C during the stop does (the CLI holds signals with serving.kill): SIGKILL
    to tritonserver and its stubs (one process group), then stop reaps it and removes the scratch."""
    with serve_artifacts(exported_tiny, ports=Ports(0, 0, 0)) as serving:
        scratch = serving.repository
        serving.kill()
        assert _all_gone(stand_in), "kill left the server or its stub running"
    assert serving.exit_code == -signal.SIGKILL
    assert scratch is not None and not scratch.parent.exists()


def test_the_callers_repository_is_written_and_kept(exported_tiny, stand_in, tmp_path):
    with serve_artifacts(exported_tiny, ports=Ports(0, 0, 0), repository=tmp_path / "repo") as serving:
        assert serving.repository == tmp_path / "repo"
    assert _all_gone(stand_in)
    assert (tmp_path / "repo" / "sacvit_triton.json").is_file()  # the index: what was written, kept
    assert (tmp_path / "repo" / "sacvit_stage1" / "1" / "model.onnx").read_bytes() == (
        exported_tiny / "stage1.onnx"
    ).read_bytes()


def test_a_failed_start_cleans_up_before_it_propagates(exported_tiny, stand_in, monkeypatch):
    def broken(self):
        raise srv.TritonServerError("tritonserver exited (code 1) before it was ready: stand-in")

    monkeypatch.setattr(srv.TritonServer, "metadata", broken)
    serving = serve_artifacts(exported_tiny, ports=Ports(0, 0, 0))
    with pytest.raises(srv.TritonServerError, match="before it was ready"), serving:
        pytest.fail("the block ran although the start failed")
    assert serving.repository is not None and not serving.repository.parent.exists()
    assert _all_gone(stand_in) and serving.pid == stand_in[0]


def test_a_bad_artifacts_folder_fails_before_the_triton_env_is_looked_at(tmp_path, monkeypatch):
    looked: list[object] = []
    monkeypatch.setattr(srv.TritonInstall, "find", classmethod(lambda cls, env=None: looked.append(env)))
    with pytest.raises(SacvitError) as caught:
        serve_artifacts(tmp_path / "no-export", triton_env=tmp_path / "no-env")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'no-export'}: no such artifact folder")
    assert looked == []  # the Triton environment was never looked up
    # and without the stub: the real lookup would have said "no nvidia-pytriton"; the folder comes first
    monkeypatch.undo()
    with pytest.raises(SacvitError) as caught:
        serve_artifacts(tmp_path, triton_env=tmp_path / "no-env")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(tmp_path)) and "manifest" in message
    assert "nvidia-pytriton" not in message


def test_options_that_cannot_be_served_are_one_line(exported_tiny, tmp_path):
    with pytest.raises(SacvitError, match=r"backend 'onnxruntime': serve runs .*backend='python'"):
        serve_artifacts(exported_tiny, options=RepositoryOptions(backend="onnxruntime"))
    with pytest.raises(SacvitError, match="inside the artifact folder"):
        serve_artifacts(exported_tiny, repository=exported_tiny / "repo")
    with pytest.raises(SacvitError, match="a Triton model name"):
        serve_artifacts(exported_tiny, options=RepositoryOptions(backend="python", name="no spaces"))


def test_not_started_is_said_not_crashed(exported_tiny, stand_in):
    serving = serve_artifacts(exported_tiny)
    assert isinstance(serving, Serving) and serving.pid is None and serving.returncode is None
    with pytest.raises(SacvitError, match="not started"):
        _ = serving.http_url
    assert serving.stop() is None  # nothing started: nothing to stop


def test_the_serve_command_calls_the_use_case_and_prints_its_result(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import sacvit_deploy.triton.serving as serving_module
    from sacvit_deploy.cli import app

    calls: list[dict] = []

    class Result:  # what serve prints comes from the Serving it gets back
        def __init__(self):
            self.models = {"bls": "m[red]x"}

        threshold, max_batch, triton_version, pid = 0.625, 12, "9.9", 4242
        http_url, grpc_url, metrics_url = "http://h:1", "grpc://h:2", "http://h:3/metrics"
        running, returncode = False, 3

        def start(self):
            calls.append({"started": True})
            return self

        def stop(self):
            return 3

        def kill(self):
            pass

        def log_tail(self):
            return "the tail"

    def fake(artifacts, **kwargs):
        calls.append({"artifacts": artifacts, **kwargs})
        return Result()

    monkeypatch.setattr(serving_module, "serve_artifacts", fake)
    result = CliRunner().invoke(
        app,
        ["serve", "--artifacts", str(tmp_path), "--http-port", "0", "--max-batch", "12", "--instances", "2"],
    )
    assert result.exit_code == 1, result.output
    args = calls[0]
    assert args["artifacts"] == tmp_path and args["ports"] == Ports(0, 8001, 8002)
    assert args["options"] == RepositoryOptions(backend="python", max_batch=12, instances=2)
    assert calls[1] == {"started": True}
    assert (
        "serving 'm[red]x' (SAC-ViT early exit, threshold 0.625, max batch 12) with Triton 9.9, pid 4242"
        in (result.stdout)
    )
    assert "  HTTP     http://h:1" in result.stdout and "  metrics  http://h:3/metrics" in result.stdout
    assert result.stderr.strip() == "error: tritonserver exited on its own (code 3): the tail"
