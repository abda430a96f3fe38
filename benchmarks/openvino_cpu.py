"""OpenVINO vs ONNX Runtime on a CPU, float32 and int8, single-stage DeiT vs the early-exit pipeline,
in ONE interleaved run (issue 25). (Not ``benchmarks/openvino.py``: the script's folder is first on
``sys.path``, so that name would shadow the ``openvino`` package.)

    python benchmarks/openvino_cpu.py                  # DeiT-S (random weights, logit std 4), batch 32 + batch-1 mix
    python benchmarks/openvino_cpu.py --quick          # tiny model, few rounds (CI; < 60 s on 2 cores)
    python benchmarks/openvino_cpu.py --accuracy /tmp/demo-data   # + int8 vs float accuracy of the demo
                                                   #   model on DATA/test (scripts/make_demo_data.py)

Timed, round-robin in the same loop so background load hits every candidate alike:

* single stage (``baseline.onnx``): ONNX Runtime fp32 / int8, OpenVINO fp32 / int8 with the LATENCY
  hint and with the THROUGHPUT hint (the batch split over the compiled model's optimal number of
  infer requests);
* the early-exit pipeline (stage 1, then stage 2 on the hard samples) with both stages on ONNX
  Runtime, or on OpenVINO (LATENCY hint), fp32 and int8; and int8 on OpenVINO with static shapes
  ("OpenVINO static": the workaround of openvino#37577 that AMX int8 CPUs get, forced here on any
  CPU; its compile time per bucket is printed).

Batch 32: 7 of 32 samples (23%) go to stage 2 (the threshold is chosen from each pipeline's own
stage-1 confidences); images/s from the MEDIAN time of a call. Batch 1: an easy image (stage 1 only)
and a hard one (both stages) are timed; the batch-1 figure is the mean latency of a 77% easy / 23%
hard mix (0.77 x median easy + 0.23 x median hard), against the single stage's median batch-1
latency. The int8 graphs are ``sacvit-deploy quantize``'s (calibrated on the bundled sample photos).

Targets (issue 25), printed met / MISSED: the best float pipeline >= 2.5x the best float single stage
at batch 32 and >= 2x in the batch-1 mix; the same for int8 against the best int8 single stage.
With ``--accuracy``: int8 early-exit accuracy within 1 point of float, on OpenVINO as on ONNX Runtime.
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _random_export import QUICK_VARIANT, random_model, split_threshold
from _timing import load_average, load_line, timed

from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.model import SACViT
from sacvit_deploy.quantize.artifacts import QuantizeOptions, load_calibration_images, quantize_artifacts
from sacvit_deploy.runtime.images import sample_images
from sacvit_deploy.runtime.loader import open_pipeline
from sacvit_deploy.runtime.pipeline import run_any_batch

HARD = 0.23
TARGETS = {"batch 32": 2.5, "batch-1 mix": 2.0}
ACCURACY_POINTS = 1.0


def qoptions(threads: int | None, ops: str | None) -> QuantizeOptions:
    return QuantizeOptions(threads=threads, **({"ops": tuple(ops.split(","))} if ops else {}))


def export_pair(model: SACViT, root: Path, threads: int | None, ops: str | None) -> dict[str, Path]:
    folders = {"fp32": root / "export", "int8": root / "export-int8"}
    t = time.perf_counter()
    export_artifacts(model, folders["fp32"], ExportOptions(baseline=True), "sacvit")
    print(f"exported {model.cfg.variant} with baseline.onnx in {time.perf_counter() - t:.1f} s")
    calib = load_calibration_images(
        sample_images()[0].parent, Manifest.load(folders["fp32"]).preprocess, log=lambda _m: None
    )
    t = time.perf_counter()
    quantize_artifacts(folders["fp32"], folders["int8"], calib, qoptions(threads, ops))
    print(f"quantized on {calib.images.shape[0]} bundled photos in {time.perf_counter() - t:.1f} s")
    return folders


def open_all(folders: dict[str, Path], threads: int | None, cache: Path) -> tuple[dict, dict, dict]:
    """-> pipelines {(runtime, precision)}, single stages {(runtime+hint, precision)}, compile times."""
    pipelines, singles, compile_s = {}, {}, {}
    for prec, folder in folders.items():
        ort = open_pipeline(folder, backend="onnxruntime", device="cpu", threads=threads)
        ov = open_pipeline(folder, backend="openvino", threads=threads, ov_cache=cache, hint="LATENCY")
        pipelines[("ORT", prec)] = ort.pipeline
        pipelines[("OpenVINO", prec)] = ov.pipeline
        if prec == "int8":  # static shapes, forced: each bucket compiles on its first call
            pipelines[("OpenVINO static", prec)] = open_pipeline(
                folder,
                backend="openvino",
                threads=threads,
                ov_cache=cache,
                hint="LATENCY",
                ov_static_shapes=True,
            ).pipeline
        singles[("ORT", prec)] = ort.baseline_runner(threads=threads)
        for hint in ("LATENCY", "THROUGHPUT"):
            singles[(f"OpenVINO {hint[:3]}", prec)] = ov.baseline_runner(
                threads=threads, ov_cache=cache, hint=hint
            )
    for p in pipelines.values():
        p.activate()
    for (name, prec), r in singles.items():
        r.activate()
        if name.startswith("OpenVINO"):
            compile_s[f"baseline {prec} {name}"] = (r.compile_seconds, r.loaded_from_cache)
    for (name, prec), p in pipelines.items():
        if name == "OpenVINO":
            for stage in ("stage1", "stage2"):
                r = getattr(p, stage)
                compile_s[f"{stage} {prec}"] = (r.compile_seconds, r.loaded_from_cache)
    return pipelines, singles, compile_s


def time_batch32(pipelines, singles, size: int, warmup: int, iters: int) -> dict[str, float]:
    x = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(32)).numpy()
    n_hard = round(HARD * 32)
    fns = {}
    for (rt, prec), pipe in pipelines.items():
        th = split_threshold(run_any_batch(pipe.stage1, {"image": x})["confidence"], n_hard)
        assert int((pipe.run(x, th).stage == 2).sum()) == n_hard
        fns[f"pipeline {rt} {prec}"] = lambda pipe=pipe, th=th: pipe.run(x, th)
    for (rt, prec), r in singles.items():
        fns[f"single {rt} {prec}"] = lambda r=r: r.infer({"image": x})
    med = {k: statistics.median(v) for k, v in timed(fns, warmup, iters).items()}
    return {k: 32 / v for k, v in med.items()}  # images/s from the median call


def time_batch1(pipelines, singles, size: int, warmup: int, iters: int) -> dict[str, float]:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).numpy()
    fns = {}
    for (rt, prec), pipe in pipelines.items():
        fns[f"pipeline {rt} {prec} easy"] = lambda pipe=pipe: pipe.run(x, 0.0)
        fns[f"pipeline {rt} {prec} hard"] = lambda pipe=pipe: pipe.run(x, 2.0)
    for (rt, prec), r in singles.items():
        fns[f"single {rt} {prec}"] = lambda r=r: r.infer({"image": x})
    med = {k: statistics.median(v) for k, v in timed(fns, warmup, iters).items()}
    lat = {}
    for k in list(med):
        if k.endswith(" easy"):
            base = k[: -len(" easy")]
            lat[base] = (1 - HARD) * med[k] + HARD * med[f"{base} hard"]
        elif not k.endswith(" hard"):
            lat[k] = med[k]
    return {k: 1.0 / v for k, v in lat.items()}  # images/s = 1 / mean latency of the mix


def best(ips: dict[str, float], kind: str, prec: str) -> tuple[str, float]:
    """The fastest candidate of a kind and precision, among the defaults: the forced static-shape
    pipeline (a workaround, on AMX CPUs only) is reported beside them, not picked."""
    cands = {
        k: v
        for k, v in ips.items()
        if k.startswith(kind + " ") and k.endswith(" " + prec) and " static " not in k
    }
    name = max(cands, key=cands.__getitem__)
    return name, cands[name]


def accuracy(data: Path, threads: int | None, cache: Path, ops: str | None) -> dict:
    """The demo model's early-exit accuracy on DATA/test, float and int8, on ORT and on OpenVINO."""
    from sacvit_deploy.demo_assets import demo_model_path
    from sacvit_deploy.model.checkpoint import load_checkpoint
    from sacvit_deploy.runtime.images import load_image, preprocess

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    model = load_checkpoint(demo_model_path(), "sacvit").model
    float_dir, int8_dir = root / "demo-export", root / "demo-export-int8"
    export_artifacts(model, float_dir, ExportOptions(baseline=True), "sacvit")
    manifest = Manifest.load(float_dir)
    calib = load_calibration_images(data / "train", manifest.preprocess, limit=512, log=lambda _m: None)
    quantize_artifacts(float_dir, int8_dir, calib, qoptions(threads, ops))
    paths = sorted((data / "test").rglob("*.png"))
    labels = np.array([int(p.parent.name) for p in paths])
    images = np.stack([preprocess(load_image(p), manifest.preprocess) for p in paths])
    result = {"images": len(paths), "threshold": manifest.exit_threshold, "ops": ops or "quantize's default"}
    for rt, backend, opts in (
        ("ORT", "onnxruntime", {"device": "cpu"}),
        ("OpenVINO", "openvino", {"ov_cache": cache}),
    ):
        for prec, folder in (("fp32", float_dir), ("int8", int8_dir)):
            opened = open_pipeline(folder, backend=backend, threads=threads, **opts)
            preds, stages = [], []
            with opened.pipeline as pipe:
                for i in range(0, len(paths), 128):
                    out = pipe.run(images[i : i + 128])
                    preds.append(np.asarray(out.logits.argmax(-1)))
                    stages.append(np.asarray(out.stage))
            pred, stage = np.concatenate(preds), np.concatenate(stages)
            result[f"{rt} {prec}"] = {
                "early_exit": float((pred == labels).mean()),
                "exit_rate": float((stage == 1).mean()),
            }
        result[f"{rt} int8 - fp32 points"] = 100 * (
            result[f"{rt} int8"]["early_exit"] - result[f"{rt} fp32"]["early_exit"]
        )
    tmp.cleanup()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, few rounds (CI)")
    ap.add_argument("--variant", default="deit_small_224")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=6, help="rounds at batch 32 (batch 1: 4x as many)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--accuracy", type=Path, help="demo data folder (scripts/make_demo_data.py OUT_DIR)")
    ap.add_argument(
        "--ops",
        help="quantize's --ops for the int8 graphs (default: quantize's). MatMul keeps the patch "
        "embedding float, which OpenVINO's int8 Conv needs on CPUs without VNNI (docs/openvino.md)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.warmup, args.iters = 1, 2

    load_before = load_average()
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    cache = root / "ov-cache"
    model = random_model(QUICK_VARIANT if args.quick else args.variant, "sacvit")
    size = model.cfg.img_size
    folders = export_pair(model, root, args.threads, args.ops)
    del model
    t = time.perf_counter()
    pipelines, singles, compile_s = open_all(folders, args.threads, cache)
    print(
        f"opened {len(pipelines)} pipelines and {len(singles)} single stages in {time.perf_counter() - t:.1f} s"
    )
    print("OpenVINO compile (first start, s) / loaded from its cache:")
    for k, (sec, cached) in compile_s.items():
        print(f"  {k:<28} {sec:6.2f} s  {'cache' if cached else 'compiled'}")
    # The second start of the same graphs: OpenVINO's compiled-model cache.
    from sacvit_deploy.runtime.loader import open_pipeline as reopen

    t = time.perf_counter()
    again = reopen(folders["fp32"], backend="openvino", threads=args.threads, ov_cache=cache, hint="LATENCY")
    again.pipeline.activate()
    second = time.perf_counter() - t
    p2 = again.pipeline
    cached = p2.stage1.loaded_from_cache and p2.stage2.loaded_from_cache
    second_compile = p2.stage1.compile_seconds + p2.stage2.compile_seconds
    again.pipeline.deactivate()
    first = compile_s["stage1 fp32"][0] + compile_s["stage2 fp32"][0]
    print(
        f"fp32 pipeline on OpenVINO: compiling stage 1 + 2 took {first:.2f} s at the first start; the "
        f"second start {'loaded them from the cache' if cached else 'did NOT load the cache'} in "
        f"{second_compile:.2f} s ({second:.2f} s in all, with the manifest's sha256 and graph checks)"
    )

    try:
        b32 = time_batch32(pipelines, singles, size, args.warmup, args.iters)
        b1 = time_batch1(pipelines, singles, size, args.warmup, 4 * args.iters)
        static = pipelines[("OpenVINO static", "int8")]
        print(
            "OpenVINO int8, static shapes (bucket 1 on activation, others on first use; the dynamic graph's first compile above):"
        )
        for stage in ("stage1", "stage2"):
            r = getattr(static, stage)
            buckets = r.describe()["buckets"]
            print(
                f"  {stage}: buckets {buckets} compiled in {r.compile_seconds:.2f} s, "
                f"{r.compile_seconds / len(buckets):.2f} s per bucket (dynamic: {compile_s[f'{stage} int8'][0]:.2f} s)"
            )
    finally:
        for p in pipelines.values():
            p.deactivate()
        for r in singles.values():
            r.deactivate()

    load = load_average()
    threads = args.threads or os.cpu_count()
    print(
        f"\n{folders and ('tiny_test' if args.quick else args.variant)}, CPU, {threads} threads, "
        f"{100 * HARD:.0f}% of samples to stage 2; {load_line(load_before, load)}"
    )
    print("images/s: batch 32 from the median call; batch-1 mix = 1 / (0.77 median easy + 0.23 median hard)")
    names = sorted(b32, key=lambda k: (k.split()[-1], not k.startswith("single"), k))
    print(f"{'':34} {'batch 32':>10} {'batch-1 mix':>12}")
    for k in names:
        print(f"{k:34} {b32[k]:10.1f} {b1[k]:12.1f}")
    ref = "single ORT fp32"
    print(f"\nratios vs {ref} (batch 32 / batch-1 mix):")
    for k in names:
        print(f"  {k:32} {b32[k] / b32[ref]:5.2f}x / {b1[k] / b1[ref]:5.2f}x")
    summary = {}
    print()
    for prec in ("fp32", "int8"):
        for label, ips in (("batch 32", b32), ("batch-1 mix", b1)):
            pn, pv = best(ips, "pipeline", prec)
            sn, sv = best(ips, "single", prec)
            ratio = pv / sv
            target = TARGETS[label]
            summary[f"{prec} {label}"] = {"pipeline": pn, "single": sn, "ratio": ratio, "target": target}
            print(
                f"{prec} {label}: best pipeline ({pn}) / best single stage ({sn}) = {ratio:.2f}x "
                f"(target >= {target}x: {'met' if ratio >= target else 'MISSED'})"
            )
    for label, ips in (("batch 32", b32), ("batch-1 mix", b1)):
        for prec in ("fp32", "int8"):
            r = ips[f"pipeline OpenVINO {prec}"] / ips[f"pipeline ORT {prec}"]
            print(f"{label}: pipeline OpenVINO {prec} / pipeline ORT {prec} = {r:.2f}x")
    acc = None
    if args.accuracy:
        acc = accuracy(args.accuracy, args.threads, cache, args.ops)
        print(
            f"\ndemo model, {acc['images']} test images, threshold {acc['threshold']:.2f}, int8 ops "
            f"{acc['ops']}: early-exit accuracy"
        )
        for rt in ("ORT", "OpenVINO"):
            d = acc[f"{rt} int8 - fp32 points"]
            print(
                f"  {rt:9} fp32 {100 * acc[f'{rt} fp32']['early_exit']:.2f}%  int8 "
                f"{100 * acc[f'{rt} int8']['early_exit']:.2f}%  ({d:+.2f} points; target within "
                f"{ACCURACY_POINTS:g}: {'met' if abs(d) <= ACCURACY_POINTS else 'MISSED'})"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "load_average": load,
                    "batch32_ips": b32,
                    "batch1_mix_ips": b1,
                    "targets": summary,
                    "accuracy": acc,
                },
                indent=2,
            )
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
