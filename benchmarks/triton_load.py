"""Throughput and latency through a real Triton server, next to the local pipeline, at several concurrencies.

    python benchmarks/triton_load.py                              # random DeiT-Ti weights, 64 requests per level
    python benchmarks/triton_load.py --variant deit_small_224 --requests 128 --concurrency 1,4,16
    python benchmarks/triton_load.py --protocol grpc --triton-env .triton/env
    python benchmarks/triton_load.py --quick        # tiny model, 8 requests, concurrency 1 and 4 (CI)

Without a Triton environment it prints why and exits with code 77 (tests/test_benchmarks.py skips
it then, unless SACVIT_REQUIRE_TRITON=1 as in CI). Statistics: images/s = requests / wall time of
the level; p50 / p99 are latency percentiles per request.

The server is PyPI's nvidia-pytriton tritonserver on 127.0.0.1 (sacvit_deploy.triton.server), serving
the repository `sacvit-deploy triton --backend python` writes: the BLS gate, and the stages' ONNX graphs
run by onnxruntime inside Triton's Python backend. Each client thread sends one image per request (the
server's dynamic batchers merge concurrent requests); the local pipeline (ONNX Runtime, CPU, one
shared EarlyExitPipeline) is driven the same way by the same number of threads. The threshold is the
stage-1 confidence quantile that sends --stage2-share of the images to stage 2 (random weights are fine
for timing). Every Triton answer is checked against the local pipeline's.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _random_export import export_random_weights

from sacvit_deploy.runtime.loader import open_pipeline
from sacvit_deploy.triton.client import open_triton
from sacvit_deploy.triton.repository import RepositoryOptions, write_repository
from sacvit_deploy.triton.server import TritonInstall, TritonServer, TritonServerError, TritonUnsupported

SKIPPED = 77  # no Triton environment here: nothing was measured


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def drive(make_run, images: np.ndarray, concurrency: int) -> tuple[float, list[float], list]:
    """``concurrency`` threads share the requests (one image each) -> wall seconds, latencies, outputs."""
    n = images.shape[0]
    latencies: list[float] = [0.0] * n
    outputs: list = [None] * n
    errors: list[BaseException] = []
    barrier = threading.Barrier(concurrency + 1)

    def worker(t: int) -> None:
        try:
            with make_run() as run:
                run(images[:1])  # warm-up (connection, first-call allocations)
                barrier.wait()
                for i in range(t, n, concurrency):
                    start = time.perf_counter()
                    outputs[i] = run(images[i : i + 1])
                    latencies[i] = time.perf_counter() - start
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall, latencies, outputs


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


class _Call:
    """A context manager yielding a callable: what each benchmark thread uses."""

    def __init__(self, enter, exit_=lambda: None) -> None:
        self._enter, self._exit = enter, exit_

    def __enter__(self):
        return self._enter()

    def __exit__(self, *exc: object) -> None:
        self._exit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="deit_tiny_224")
    ap.add_argument("--format", dest="fmt", default="sacvit")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--stage2-share", type=float, default=0.23)
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--triton-env", default=None, help="venv with nvidia-pytriton, numpy<2, onnxruntime")
    ap.add_argument("--quick", action="store_true", help="tiny model, 8 requests, concurrency 1,4 (CI)")
    args = ap.parse_args()
    if args.quick:
        args.variant, args.requests, args.concurrency = "tiny", 8, "1,4"
    levels = [int(c) for c in args.concurrency.split(",")]

    try:
        install = TritonInstall.find(args.triton_env)
        versions = install.check_python()
    except (TritonServerError, TritonUnsupported) as exc:
        print(f"skipped: no Triton environment: {exc}")
        sys.exit(SKIPPED)
    tmp, export = export_random_weights(args.variant, args.fmt)
    with tmp:
        repo = Path(tmp.name) / "model_repository"
        write_repository(export, repo, RepositoryOptions(backend="python", max_batch=16))
        torch.manual_seed(0)
        opened = open_pipeline(export, backend="onnxruntime", device="cpu")
        size = opened.manifest.preprocess.input_size
        images = torch.randn(args.requests, 3, size, size).numpy()  # runners and the client take numpy
        with opened.pipeline as local, TritonServer(repo, install) as server:
            conf = local.run(images, 0.0).confidence
            threshold = float(np.quantile(conf, args.stage2_share))
            reference = local.run(images, threshold)
            meta = server.metadata()
            url = server.http_url if args.protocol == "http" else server.grpc_url
            print(
                f"Triton {meta['version']} (nvidia-pytriton tritonserver, Python backend + onnxruntime "
                f"{versions['onnxruntime']}, numpy {versions['numpy']}) at {url}; {args.variant} {args.fmt}, "
                f"random weights, threshold {threshold:.4f}: {int((reference.stage == 2).sum())} of "
                f"{args.requests} images to stage 2; {os.cpu_count()} CPUs ({cpu_name()}); "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            rows = []
            for c in levels:
                lw, ll, _ = drive(lambda: _Call(lambda: lambda x: local.run(x, threshold)), images, c)

                def remote():
                    pipe = open_triton(url, threshold=threshold).pipeline.activate()
                    return _Call(lambda p=pipe: p.run, pipe.deactivate)

                tw, tl, outs = drive(remote, images, c)
                for i, out in enumerate(outs):  # every answer is the local pipeline's
                    assert int(out.stage[0]) == int(reference.stage[i]), i
                    np.testing.assert_allclose(out.logits[0], reference.logits[i], rtol=0, atol=1e-4)
                rows.append((c, args.requests / lw, ll, args.requests / tw, tl))
            s2 = server.statistics("sacvit_stage2")
            bls = server.statistics("sacvit")
        print()
        print(
            "| concurrency | local images/s | local p50 ms | local p99 ms | Triton images/s | Triton p50 ms | Triton p99 ms |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for c, lr, ll, tr, tl in rows:
            print(
                f"| {c} | {lr:.1f} | {1e3 * percentile(ll, 0.5):.1f} | {1e3 * percentile(ll, 0.99):.1f} | "
                f"{tr:.1f} | {1e3 * percentile(tl, 0.5):.1f} | {1e3 * percentile(tl, 0.99):.1f} |"
            )
        print(
            f"\nserver statistics (warm-ups included): BLS {bls['inference_count']} images in "
            f"{bls['execution_count']} executions (mean batch {bls['inference_count'] / max(1, bls['execution_count']):.2f}); "
            f"stage 2 {s2['inference_count']} images in {s2['execution_count']} executions "
            f"(mean batch {s2['inference_count'] / max(1, s2['execution_count']):.2f})"
        )


if __name__ == "__main__":
    main()
