"""A real Triton Inference Server: PyPI's nvidia-pytriton tritonserver (2.51) on 127.0.0.1.

The repository is what `sacvit-deploy triton --backend python` writes (the BLS gate exactly as
generated; the stages' ONNX graphs run by onnxruntime inside Triton's Python backend). Answers are
compared with the local EarlyExitPipeline (ONNX Runtime) on the same inputs.

Needs an environment with the wheel, numpy < 2 and onnxruntime (`.ci/run` makes `.triton/env`):
``$SACVIT_TRITON_ENV``, else ``.triton/env`` in the checkout. Without one these tests skip, unless
``SACVIT_REQUIRE_TRITON=1`` (CI), where a missing server fails them; they skip everywhere the wheel
cannot run (not Linux x86_64 with glibc 2.35+).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.runtime.loader import open_pipeline
from sacvit_deploy.runtime.pipeline import mixed_threshold
from sacvit_deploy.triton.client import TritonClientError, open_triton
from sacvit_deploy.triton.repository import RepositoryOptions, write_repository
from sacvit_deploy.triton.server import (
    ENV_VAR,
    TritonInstall,
    TritonServer,
    TritonServerError,
    TritonUnsupported,
    free_port,
)
from tests.conftest import make_tiny

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("SACVIT_REQUIRE_TRITON") == "1"
runner = CliRunner()


@pytest.fixture(scope="module")
def install() -> TritonInstall:
    env = os.environ.get(ENV_VAR) or (REPO_ROOT / ".triton" / "env")
    try:
        found = TritonInstall.find(env)
        found.check_python()
    except TritonUnsupported as exc:
        pytest.skip(f"PyTriton's tritonserver cannot run here: {exc}")
    except TritonServerError as exc:
        if REQUIRE:
            pytest.fail(f"SACVIT_REQUIRE_TRITON=1 but no usable server: {exc}")
        pytest.skip(f"no tritonserver environment ({exc})")
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton_server")
    export_artifacts(make_tiny("sacvit"), root / "export", ExportOptions(weights=False), "sacvit")
    write_repository(root / "export", root / "repo", RepositoryOptions(backend="python", max_batch=16))
    return root


def start_server(request, repository, install, wait_for=None, **kwargs) -> TritonServer:
    """Started on free 127.0.0.1 ports; stopped by its own PID when the test (or module) ends."""
    server = TritonServer(Path(repository), install, **kwargs)
    request.addfinalizer(server.stop)
    return server.start(wait_for=wait_for)


@pytest.fixture(scope="module")
def server(request, built, install) -> TritonServer:
    return start_server(request, built / "repo", install, log_path=built / "server.log")


@pytest.fixture(scope="module")
def local(built):
    opened = open_pipeline(built / "export", backend="onnxruntime", device="cpu")
    with opened.pipeline as pipe:
        yield pipe


def local_rows(built, images, *args) -> list[dict]:
    result = runner.invoke(
        app,
        ["infer", str(images), "--artifacts", str(built / "export"), "--backend", "onnxruntime", *args],
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_the_server_is_real_and_on_loopback(server):
    meta = server.metadata()
    assert meta["name"] == "triton" and meta["version"] == "2.51.0"
    cmd = server.command(Path("B"))
    for listener in ("http", "grpc", "metrics"):
        assert f"--{listener}-address=127.0.0.1" in cmd
    assert server.running and server.pid


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_infer_triton_gives_the_local_rows(built, server, images_dir, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    common = ["--format", "jsonl", "--topk", "2"]
    conf = torch.tensor([r["confidence"] for r in local_rows(built, images_dir, *common, "--threshold", "0")])
    mixed = mixed_threshold(conf)
    cases = {"all exit": ["--threshold", "0"], "none exit": ["--threshold", "1.01"]}
    cases["mixed"] = ["--threshold", repr(mixed)]
    cases["server's threshold"] = []
    cases["batch 1"] = ["--threshold", repr(mixed), "--batch-size", "1"]
    stages = {}
    for case, args in cases.items():
        want = local_rows(built, images_dir, *common, *args)
        got = runner.invoke(app, ["infer", str(images_dir), "--triton", url, *common, *args])
        assert got.exit_code == 0, (case, got.output)
        assert [json.loads(line) for line in got.stdout.splitlines()] == want, case
        assert f"Triton Inference Server at {url}" in got.stderr
        stages[case] = [r["stage"] for r in want]
    # The override is per request: the server's own threshold (0.5) gives other stages than 0 / 1.01.
    assert set(stages["all exit"]) == {1} and set(stages["none exit"]) == {2}
    assert set(stages["mixed"]) == {1, 2} and stages["batch 1"] == stages["mixed"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@torch.no_grad()
def test_triton_pipeline_equals_the_local_pipeline(server, local, protocol):
    # numpy in and out on both sides (the runtime's currency); 20 > max batch 16: two requests
    x = np.random.default_rng(7).standard_normal((20, 3, 128, 128), dtype=np.float32)
    url = server.http_url if protocol == "http" else server.grpc_url
    with open_triton(url).pipeline as pipe:
        conf = local.run(x, 0.0).confidence
        for th in (0.0, mixed_threshold(conf), 1.01, None):
            got, want = pipe.run(x, th), local.run(x, th)
            np.testing.assert_array_equal(got.stage, want.stage, err_msg=str(th))
            np.testing.assert_allclose(got.confidence, want.confidence, rtol=0, atol=1e-6)
            np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=1e-5)
        one = pipe.run(x[:1], float(conf[0]) + 1e-3)  # a single hard sample
        assert one.stage.tolist() == [2]


def stage_counts(server, model) -> dict[str, int]:
    s = server.statistics(model)
    return {
        "requests": int(s["inference_stats"]["success"]["count"]),
        "failed": int(s["inference_stats"]["fail"]["count"]),
        "samples": int(s["inference_count"]),
        "executions": int(s["execution_count"]),
    }


@torch.no_grad()
def test_load_8_threads_50_requests_each(server, local):
    threads, per_thread = 8, 50
    torch.manual_seed(11)
    x = torch.randn(threads * per_thread, 3, 128, 128)
    threshold = mixed_threshold(local.run(x, 0.0).confidence)  # about half go to stage 2
    want = local.run(x, threshold)
    before = {m: stage_counts(server, m) for m in ("sacvit", "sacvit_stage1", "sacvit_stage2")}
    answers: dict[int, list] = {i: [] for i in range(len(x))}
    errors: list[str] = []
    barrier = threading.Barrier(threads)

    def client(t: int) -> None:
        url = server.http_url if t % 2 else server.grpc_url
        try:
            with open_triton(url, threshold=threshold).pipeline as pipe:
                barrier.wait()
                for i in range(t, len(x), threads):
                    answers[i].append(pipe.run(x[i : i + 1]))
        except Exception as exc:
            errors.append(f"thread {t}: {exc}")

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    seconds = time.perf_counter() - start
    assert not errors, errors
    assert all(len(a) == 1 for a in answers.values())  # each answered once: none lost, none twice
    for i, (got,) in answers.items():
        assert int(got.stage[0]) == int(want.stage[i]), i
        torch.testing.assert_close(got.logits[0], want.logits[i], rtol=0, atol=1e-5)
    after = {m: stage_counts(server, m) for m in before}
    delta = {m: {k: after[m][k] - before[m][k] for k in after[m]} for m in after}
    hard = int((want.stage == 2).sum())
    assert delta["sacvit"]["requests"] == len(x) and delta["sacvit"]["failed"] == 0
    assert delta["sacvit_stage1"]["samples"] == len(x) and delta["sacvit_stage2"]["samples"] == hard
    s2 = delta["sacvit_stage2"]
    mean_batch = s2["samples"] / s2["executions"]
    print(
        f"\nload: {len(x)} requests from {threads} threads in {seconds:.1f} s ({len(x) / seconds:.0f}/s); "
        f"BLS {delta['sacvit']['executions']} executions; stage 2: {hard} samples in {s2['requests']} "
        f"requests, {s2['executions']} executions, mean batch {mean_batch:.2f}"
    )
    assert 0 < hard < len(x) and mean_batch > 1


def many_images(folder: Path, n: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from sacvit_deploy.cli import main; main()", *args]


def test_server_killed_mid_run(request, built, install, tmp_path):
    server = start_server(request, built / "repo", install)
    images = many_images(tmp_path / "images", 400)
    out = tmp_path / "rows.jsonl"
    args = [str(images), "--format", "jsonl", "--batch-size", "1", "--output", str(out), "--workers", "1"]
    client = subprocess.Popen(
        cli("infer", *args, "--triton", server.http_url), stderr=subprocess.PIPE, text=True
    )
    request.addfinalizer(lambda: client.poll() is None and client.kill())
    deadline = time.monotonic() + 120
    while (not out.exists() or out.read_text().count("\n") < 5) and time.monotonic() < deadline:
        assert client.poll() is None, client.stderr.read()
        time.sleep(0.02)
    server.kill()
    _, stderr = client.communicate(timeout=120)
    print("\n" + stderr.strip().splitlines()[-1])
    assert client.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert errors[0].startswith("error: Triton at " + server.http_url), errors[0]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert 5 <= len(rows) < 400
    want = {r["path"]: r for r in local_rows(built, images, "--format", "jsonl")}
    for row in rows:  # the finished rows are kept, and right
        assert row == want[row["path"]]


def test_a_stage_that_fails_to_load_reaches_the_client_in_one_line(
    request, built, install, tmp_path, images_dir
):
    repo = tmp_path / "repo"
    shutil.copytree(built / "repo", repo)
    (repo / "sacvit_stage2" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    server = start_server(request, repo, install, wait_for=["sacvit", "sacvit_stage1"], exit_on_error=False)
    deadline = time.monotonic() + 60
    while "failed to load 'sacvit_stage2'" not in server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "onnxruntime cannot load it" in server.log_path.read_text()  # stage_model.py's own message
    result = runner.invoke(
        app, ["infer", str(images_dir), "--triton", server.grpc_url, "--threshold", "1.01"]
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: Triton at {server.grpc_url}: 'sacvit' failed:"), result.stderr
    assert "sacvit_stage2" in lines[-1] and result.stderr.count("error:") == 1
    # Samples that exit after stage 1 never need the broken stage.
    easy = runner.invoke(app, ["infer", str(images_dir), "--triton", server.http_url, "--threshold", "0"])
    assert easy.exit_code == 0, easy.output


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve(request, built, install, images_dir, how):
    ports = [str(free_port()) for _ in range(3)]
    serve = subprocess.Popen(
        cli(
            "serve",
            "--artifacts",
            str(built / "export"),
            "--http-port",
            ports[0],
            "--grpc-port",
            ports[1],
            "--metrics-port",
            ports[2],
            "--max-batch",
            "8",
            "--max-queue-delay-us",
            "200",
            "--triton-env",
            str(install.env),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    request.addfinalizer(lambda: serve.poll() is None and serve.kill())
    lines = []
    for line in serve.stdout:  # until it says it is ready
        lines.append(line)
        if line.startswith("ready"):
            break
    printed = "".join(lines)
    assert f"HTTP     http://127.0.0.1:{ports[0]}" in printed, printed + serve.stderr.read()
    assert f"gRPC     grpc://127.0.0.1:{ports[1]}" in printed and f"127.0.0.1:{ports[2]}/metrics" in printed
    pid = int(printed.split(", pid ")[1].split()[0])
    want = local_rows(built, images_dir, "--format", "jsonl", "--threshold", "0.55")
    for url in (f"http://127.0.0.1:{ports[0]}", f"grpc://127.0.0.1:{ports[1]}"):
        got = runner.invoke(
            app, ["infer", str(images_dir), "--triton", url, "--format", "jsonl", "--threshold", "0.55"]
        )
        assert got.exit_code == 0, got.output
        assert [json.loads(line) for line in got.stdout.splitlines()] == want
    opened = open_triton(f"http://127.0.0.1:{ports[0]}")
    assert opened.choice.served.max_batch == 8
    opened.pipeline.deactivate()
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/models/sacvit_stage2/config") as r:
        assert json.load(r)["dynamic_batching"]["max_queue_delay_microseconds"] == 200
    serve.send_signal(how)
    _, stderr = serve.communicate(timeout=60)
    assert serve.returncode == 0, stderr
    name = "SIGTERM" if how == signal.SIGTERM else "Ctrl-C"
    assert f"{name}: stopped tritonserver (pid {pid}, exit code 0)" in stderr
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the server is gone
    with pytest.raises(TritonClientError, match="is unreachable"):
        open_triton(f"http://127.0.0.1:{ports[0]}", timeout=5)
