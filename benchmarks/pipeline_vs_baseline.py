"""SAC-ViT early-exit pipeline vs the single-stage DeiT baseline, same backend, one run.

Prints, per batch size: throughput of both (images/s), the ratio, batch latency, and the pipeline's
overhead over its own stages run back to back (stage 1 on the batch, then stage 2 on the hard
samples), i.e. what the gate, compaction and scatter cost: the median over rounds of
pipeline / stages - 1, both timed in the same round. The exit rate is fixed by choosing the threshold as
the stage-1 confidence quantile on the benchmark images, so random weights work.

    python benchmarks/pipeline_vs_baseline.py                      # DeiT-S sizes, ORT CPU, batch 32, 23% hard
    python benchmarks/pipeline_vs_baseline.py --batch-sizes 1,32 --hard-fraction 0.23 --iters 20
    python benchmarks/pipeline_vs_baseline.py --artifacts export/  # your own export (needs --baseline)
    python benchmarks/pipeline_vs_baseline.py --quick              # tiny model, few rounds (CI)

Ratios are of medians over the timed rounds (throughput = batch / median latency); the overhead is the
median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _random_export import export_random_weights, split_threshold
from _timing import load_average, load_line, timed

from sacvit_deploy.model import FlopsReport
from sacvit_deploy.model.flops import format_gflops as gf
from sacvit_deploy.runtime.loader import open_pipeline
from sacvit_deploy.runtime.pipeline import hard_samples, run_any_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--artifacts",
        type=Path,
        help="an export folder with baseline.onnx (default: export random DeiT-S weights)",
    )
    ap.add_argument("--variant", default="deit_small_224")
    ap.add_argument("--format", default="sacvit", choices=["sacvit", "lf-vit", "cf-vit"])
    ap.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", default="32")
    ap.add_argument("--hard-fraction", type=float, default=0.23, help="share of samples sent to stage 2")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="tiny model, batch 8, 2 rounds: that it runs (CI)")
    args = ap.parse_args()
    if args.quick:
        args.variant, args.batch_sizes, args.warmup, args.iters = "tiny", "8", 1, 2
    load_before = load_average()

    tmp = None
    folder = args.artifacts
    if folder is None:
        tmp, folder = export_random_weights(args.variant, args.format)

    opened = open_pipeline(folder, backend=args.backend, device=args.device, threads=args.threads)
    cfg = opened.manifest.model
    baseline = opened.baseline_runner(threads=args.threads)
    flops = FlopsReport.of(cfg)
    results = []
    with opened.pipeline as pipe, baseline:
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            g = torch.Generator().manual_seed(bs)
            x = torch.randn(bs, 3, cfg.img_size, cfg.img_size, generator=g).numpy()  # runners take numpy
            n_hard = round(args.hard_fraction * bs)
            th = split_threshold(run_any_batch(pipe.stage1, {"image": x})["confidence"], n_hard)
            out = pipe.run(x, th)
            assert int((out.stage == 2).sum()) == n_hard

            s1_out = run_any_batch(pipe.stage1, {"image": x})
            _, feed = hard_samples(x, s1_out, th)
            fns = {
                "pipeline": lambda x=x, th=th: pipe.run(x, th),
                "baseline": lambda x=x: baseline.infer({"image": x}),
                "stage1": lambda x=x: run_any_batch(pipe.stage1, {"image": x}),
            }
            if n_hard:
                fns["stage2"] = lambda feed=feed: run_any_batch(pipe.stage2, feed)

            def ideal(x=x, feed=feed, n_hard=n_hard) -> None:  # the stages back to back, no gate
                run_any_batch(pipe.stage1, {"image": x})
                if n_hard:
                    run_any_batch(pipe.stage2, feed)

            fns["ideal"] = ideal
            t = timed(fns, args.warmup, args.iters)
            t_pipe, t_base, t_s1, t_s2 = t["pipeline"], t["baseline"], t["stage1"], t.get("stage2", [0.0])

            med = statistics.median
            p, b, s1, s2 = med(t_pipe), med(t_base), med(t_s1), med(t_s2)
            row = {
                "batch": bs,
                "hard": n_hard,
                "pipeline_ms": 1e3 * p,
                "baseline_ms": 1e3 * b,
                "stage1_ms": 1e3 * s1,
                "stage2_ms": 1e3 * s2,
                "pipeline_ips": bs / p,
                "baseline_ips": bs / b,
                "throughput_ratio": b / p,
                "latency_ratio": p / b,
                # paired per round: both timed in the same round, so background load cancels
                "overhead": med([a / i - 1.0 for a, i in zip(t_pipe, t["ideal"], strict=True)]),
            }
            results.append(row)

    env = {
        "backend": opened.choice.describe(),
        "variant": cfg.variant,
        "format": opened.manifest.source_format,
        "threads": args.threads or os.cpu_count(),
        "torch": torch.__version__,
        "iters": args.iters,
        "hard_fraction": args.hard_fraction,
    }
    print(
        f"\n{cfg.variant} ({cfg.selection} selection, {cfg.attention} attention), {env['backend']}, {env['threads']} threads"
    )
    print(
        f"GFLOPs per image: baseline {gf(flops.baseline)}, stage 1 {gf(flops.stage1)}, stage 2 {gf(flops.stage2)}, "
        f"expected at {100 * args.hard_fraction:.0f}% hard {gf(flops.expected(1 - args.hard_fraction))} "
        f"(FLOPs ratio {flops.baseline / flops.expected(1 - args.hard_fraction):.2f}x)"
    )
    print(load_line(load_before, load_average()))
    print("statistic: medians over the timed rounds; speedup = baseline / pipeline median latency")
    hdr = f"{'batch':>5} {'hard':>4} {'pipeline ms':>11} {'baseline ms':>11} {'stage1 ms':>9} {'stage2 ms':>9} {'pipe img/s':>10} {'base img/s':>10} {'speedup':>7} {'overhead':>8}"
    print(hdr)
    for r in results:
        print(
            f"{r['batch']:>5} {r['hard']:>4} {r['pipeline_ms']:>11.1f} {r['baseline_ms']:>11.1f} {r['stage1_ms']:>9.1f} {r['stage2_ms']:>9.1f} "
            f"{r['pipeline_ips']:>10.1f} {r['baseline_ips']:>10.1f} {r['throughput_ratio']:>6.2f}x {100 * r['overhead']:>7.1f}%"
        )
    if args.json:
        args.json.write_text(json.dumps({"env": env, "results": results}, indent=2))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
