"""Training on 1 vs 2 CPU processes (torchrun, gloo): time per epoch and 1-vs-2 parity, tiny config.

    python benchmarks/train_ddp_cpu.py                       # 120 images, global batch 24, 3 epochs
    python benchmarks/train_ddp_cpu.py --images 360 --epochs 2
    python benchmarks/train_ddp_cpu.py --quick               # 24 images, 1 epoch: that it runs (CI)

Writes a synthetic ImageFolder (noisy solid colours, 3 classes) and the tiny test model's config to a
temporary folder, trains it with ``sacvit-deploy train`` once in one process and once under
``torchrun --nproc-per-node 2`` (OMP_NUM_THREADS=1 in both, as torchrun sets it), with the same global
batch and seed, then prints the seconds per epoch of each (from log.jsonl: train + validation, without
process start-up) and the largest weight difference between the two final models. Figures on a
machine shared with other work vary by tens of percent (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _timing import load_average, load_line

from sacvit_deploy.model import load_checkpoint, tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test pictures, in a source checkout
from tests.fakes.pictures import write_colour_folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=120, help="training images (a third per class)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=24, help="global batch")
    ap.add_argument("--recipe", default="ours")
    ap.add_argument("--quick", action="store_true", help="24 images, global batch 12, 1 epoch (CI)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.batch_size, args.epochs = 24, 12, 1
    load_before = load_average()

    tmp = Path(tempfile.mkdtemp(prefix="sacvit-ddp-"))
    try:
        write_colour_folder(tmp / "data", args.images // 3, 4)
        cfg = tmp / "cfg.json"
        cfg.write_text(json.dumps(tiny_config().to_dict()))
        cli = shutil.which("sacvit-deploy") or str(Path(sys.executable).with_name("sacvit-deploy"))
        common = [cli, "train", str(tmp / "data"), "--config-json", str(cfg), "--device", "cpu"]
        common += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--workers", "0"]
        common += ["--selection-warmup-epochs", "1", "--warmup-epochs", "1", "--recipe", args.recipe]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        runs = {
            1: [*common, "--out", str(tmp / "p1")],
            2: [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc-per-node",
                "2",
                "--master-port",
                str(free_port()),
                *common,
                "--out",
                str(tmp / "p2"),
            ],
        }
        times = {}
        for n, cmd in runs.items():
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rows = [json.loads(line) for line in (tmp / f"p{n}" / "log.jsonl").read_text().splitlines()]
            times[n] = [r["time_s"] for r in rows]
        a = load_checkpoint(tmp / "p1" / "last.pt", "sacvit").model.state_dict()
        b = load_checkpoint(tmp / "p2" / "last.pt", "sacvit").model.state_dict()
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        steps = -(-args.images // args.batch_size)
        print(
            f"tiny config, {args.images} train images, global batch {args.batch_size} ({steps} steps/epoch), torch {torch.__version__}"
        )
        for n, t in times.items():
            # The first epoch includes the loaders' and the process group's warm-up.
            print(
                f"{n} process(es): seconds per epoch {', '.join(f'{x:.2f}' for x in t)}  (median {np.median(t):.2f})"
            )
        print(f"max |weight difference| 1 vs 2 processes after {args.epochs} epochs: {diff:.2e}")
        ratio = np.median(times[1]) / np.median(times[2])
        print(f"1 / 2 processes, median seconds per epoch: {ratio:.2f}x (statistic: median over epochs)")
        print(load_line(load_before, load_average()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
