"""INT8 (Q/DQ, `sacvit-deploy quantize`) vs float32: the early-exit pipeline and the DeiT baseline, ONNX
Runtime (CPU), one run.

DeiT-S sizes with random weights whose head is scaled so stage 1's logits have a standard deviation
of about 4 (what a trained DeiT-S gives; an unscaled random head gives near-uniform softmaxes). The
int8 graphs are calibrated on the bundled sample photos, through the runtime's preprocessing. Timing
does not depend on the weights' values; the share of samples sent to stage 2 is fixed by choosing
the threshold from each pipeline's own stage-1 confidences.

Batch 32: 7 of 32 samples (23%) go to stage 2. Batch 1: an easy image (stage 1 only) and a hard one
(both stages) are timed, and the batch-1 figure is their 77% / 23% mix. Graphs are timed round-robin,
so background load hits them alike; the load average is printed.

    python benchmarks/int8.py                       # DeiT-S, batch 1 and 32, 23% to stage 2
    python benchmarks/int8.py --iters 10 --json int8.json
    python benchmarks/int8.py --artifacts export/ --int8 export-int8/   # your own folders (with baseline)
    python benchmarks/int8.py --quick               # tiny model, few rounds: that it runs (CI)

Statistic: each figure is the median over the timed rounds (images/s = batch / median latency); the
batch-1 figure is the 77% / 23% weighting of the easy and the hard image's medians, i.e. the mean time
per image of that mix.

Targets tracked: pipeline int8 >= 1.5x pipeline float32 at batch 32, and >= 4x the float32 baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _random_export import LOGIT_STD, random_model, split_threshold
from _timing import load_average, load_line, timed

from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.quantize.artifacts import QuantizeOptions, load_calibration_images, quantize_artifacts
from sacvit_deploy.runtime.images import sample_images
from sacvit_deploy.runtime.loader import open_pipeline
from sacvit_deploy.runtime.pipeline import run_any_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--artifacts", type=Path, help="a float export with baseline.onnx (default: random DeiT-S)"
    )
    ap.add_argument(
        "--int8", type=Path, help="its `sacvit-deploy quantize` output (default: quantize it here)"
    )
    ap.add_argument("--variant", default="deit_small_224")
    ap.add_argument("--format", default="sacvit", choices=["sacvit", "lf-vit", "cf-vit"])
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--hard-fraction", type=float, default=0.23)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="tiny model, batch 1 and 8, 2 rounds (CI)")
    args = ap.parse_args()
    if args.quick:
        args.variant, args.batch_sizes, args.warmup, args.iters = "tiny", "1,8", 1, 2
    load_before = load_average()

    tmp = tempfile.TemporaryDirectory()
    float_dir, int8_dir = args.artifacts, args.int8
    if float_dir is None:
        float_dir = Path(tmp.name) / "export"
        t = time.perf_counter()
        export_artifacts(
            random_model(args.variant, args.format), float_dir, ExportOptions(baseline=True), args.format
        )
        print(
            f"exported random-weight {args.variant} (logit std {LOGIT_STD}) in {time.perf_counter() - t:.1f} s"
        )
    if int8_dir is None:
        int8_dir = Path(tmp.name) / "export-int8"
        from sacvit_deploy.core.manifest import Manifest

        folder = sample_images()[0].parent
        calib = load_calibration_images(folder, Manifest.load(float_dir).preprocess, log=print)
        t = time.perf_counter()
        quantize_artifacts(float_dir, int8_dir, calib, QuantizeOptions(threads=args.threads))
        print(f"quantized on {calib.images.shape[0]} bundled photos in {time.perf_counter() - t:.1f} s")

    opened = {
        name: open_pipeline(folder, backend="onnxruntime", device="cpu", threads=args.threads)
        for name, folder in (("fp32", float_dir), ("int8", int8_dir))
    }
    cfg = opened["fp32"].manifest.model
    baselines = {name: o.baseline_runner(threads=args.threads) for name, o in opened.items()}
    for o in opened.values():
        o.pipeline.activate()
    for b in baselines.values():
        b.activate()
    results = []
    try:
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            g = torch.Generator().manual_seed(bs)
            x = torch.randn(bs, 3, cfg.img_size, cfg.img_size, generator=g).numpy()  # runners take numpy
            fns = {}
            if bs == 1:
                # the batch-1 mix: an easy image (threshold 0: it exits) and a hard one (above 1: it does not)
                for name, o in opened.items():
                    fns[f"pipeline {name} easy"] = lambda o=o, x=x: o.pipeline.run(x, 0.0)
                    fns[f"pipeline {name} hard"] = lambda o=o, x=x: o.pipeline.run(x, 2.0)
            else:
                n_hard = round(args.hard_fraction * bs)
                for name, o in opened.items():
                    th = split_threshold(run_any_batch(o.pipeline.stage1, {"image": x})["confidence"], n_hard)
                    assert int((o.pipeline.run(x, th).stage == 2).sum()) == n_hard
                    fns[f"pipeline {name}"] = lambda o=o, th=th, x=x: o.pipeline.run(x, th)
            for name, b in baselines.items():
                fns[f"baseline {name}"] = lambda b=b, x=x: b.infer({"image": x})
            iters = args.iters if bs > 1 else 4 * args.iters
            t = {name: statistics.median(v) for name, v in timed(fns, args.warmup, iters).items()}
            if bs == 1:
                h = args.hard_fraction
                for name in opened:
                    t[f"pipeline {name}"] = (1 - h) * t.pop(f"pipeline {name} easy") + h * t.pop(
                        f"pipeline {name} hard"
                    )
            row = {
                "batch": bs,
                "hard_fraction": args.hard_fraction,
                **{f"{k} ms": 1e3 * v for k, v in t.items()},
            }
            ips = {k: bs / v for k, v in t.items()}
            row.update({f"{k} img/s": v for k, v in ips.items()})
            row["pipeline int8 / pipeline fp32"] = ips["pipeline int8"] / ips["pipeline fp32"]
            row["pipeline int8 / baseline fp32"] = ips["pipeline int8"] / ips["baseline fp32"]
            row["pipeline fp32 / baseline fp32"] = ips["pipeline fp32"] / ips["baseline fp32"]
            row["baseline int8 / baseline fp32"] = ips["baseline int8"] / ips["baseline fp32"]
            results.append(row)
    finally:
        for o in opened.values():
            o.pipeline.deactivate()
        for b in baselines.values():
            b.deactivate()

    load = load_average()
    print(
        f"\n{cfg.variant}, ONNX Runtime CPU, {args.threads or os.cpu_count()} threads, "
        f"{100 * args.hard_fraction:.0f}% of samples to stage 2; {load_line(load_before, load)}"
    )
    print("statistic: images/s = batch / median latency over the timed rounds; ratios of those")
    names = ["pipeline fp32", "pipeline int8", "baseline fp32", "baseline int8"]
    print(f"{'batch':>5} " + " ".join(f"{n + ' img/s':>20}" for n in names))
    for r in results:
        print(f"{r['batch']:>5} " + " ".join(f"{r[n + ' img/s']:>20.1f}" for n in names))
    for r in results:
        print(
            f"batch {r['batch']}: pipeline int8 / pipeline fp32 {r['pipeline int8 / pipeline fp32']:.2f}x, "
            f"pipeline int8 / baseline fp32 {r['pipeline int8 / baseline fp32']:.2f}x, "
            f"pipeline fp32 / baseline fp32 {r['pipeline fp32 / baseline fp32']:.2f}x, "
            f"baseline int8 / baseline fp32 {r['baseline int8 / baseline fp32']:.2f}x"
        )
    big = [r for r in results if r["batch"] == 32]
    if big:
        r = big[0]
        for what, value, target in (
            ("pipeline int8 / pipeline fp32", r["pipeline int8 / pipeline fp32"], 1.5),
            ("pipeline int8 / baseline fp32", r["pipeline int8 / baseline fp32"], 4.0),
        ):
            print(
                f"target at batch 32: {what} >= {target}x: {value:.2f}x, {'met' if value >= target else 'MISSED'}"
            )
    if args.json:
        args.json.write_text(json.dumps({"load_average": load, "results": results}, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
