"""The early-exit pipeline's Python overhead over its floor: two raw ``InferenceSession.run`` calls.

On the demo export (the bundled SAC-ViT, exported once into a temporary folder unless ``--artifacts``
names an export), ONNX Runtime on the CPU, three cases:

* batch 1, easy: a sample whose stage-1 confidence reaches the threshold (stage 1 only);
* batch 1, hard: a sample below it (stage 1, then stage 2 on it);
* batch 32: the demo images cycled to 32 (some exit, some do not).

The *floor* is what any early-exit loop must do, written as plainly as numpy allows, on the SAME
ONNX Runtime sessions the pipeline's runners hold: ``stage1.run``, the confidences compared with
the threshold, the hard rows gathered, ``stage2.run`` on them, their logits scattered back. The
pipeline is ``EarlyExitPipeline.run`` (what ``infer``, ``Pipeline.run`` and ``profile`` call). Both are
timed round-robin in one loop (the order alternating per round), so background load hits them
alike; per case it prints the medians over rounds and the median of the paired per-round
difference, in microseconds and as a percentage of the floor, and the load average.

A second table repeats the comparison with both sessions' ``run`` replaced by a stub returning the
outputs recorded for that input (the same for pipeline and floor): what is left is the Python
around the calls alone, which background load disturbs far less than the inference itself.

Target (issue 20): the pipeline within 30 us of the floor at batch 1.

    python benchmarks/runtime_overhead.py                  # 2000 rounds
    python benchmarks/runtime_overhead.py --quick          # 40 rounds (CI)
    python benchmarks/runtime_overhead.py --artifacts sacvit-demo/export --rounds 5000

The script drives both the numpy runtime and the older torch-tensor one (it hands the pipeline
what its runners take), so the same command measures a checkout before and after a change:
``PYTHONPATH=/path/to/other/checkout python benchmarks/runtime_overhead.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_US = 30.0


def _export_demo(tmp: str) -> Path:
    """The bundled demo model exported to ONNX (needs torch; no verification: timing only)."""
    from sacvit_deploy.demo_assets import demo_model_path
    from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
    from sacvit_deploy.model.checkpoint import load_checkpoint

    out = Path(tmp) / "export"
    t = time.perf_counter()
    export_artifacts(load_checkpoint(demo_model_path(), "sacvit").model, out, ExportOptions(), "sacvit")
    print(f"exported the demo model in {time.perf_counter() - t:.1f} s")
    return out


def _images(manifest) -> np.ndarray:
    from sacvit_deploy.demo_assets import demo_sample_images
    from sacvit_deploy.runtime.images import load_image, preprocess

    return np.stack([preprocess(load_image(p), manifest.preprocess) for p in demo_sample_images()])


def _numpy_runtime() -> bool:
    try:
        import sacvit_deploy.backends.arrays  # noqa: F401  (the numpy currency)
    except ImportError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, help="an export folder (default: export the demo model)")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--quick", action="store_true", help="40 rounds, 5 warm-up (CI)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.warmup = 40, 5

    from sacvit_deploy.runtime.loader import open_pipeline

    tmp = None
    folder = args.artifacts
    if folder is None:
        tmp = tempfile.TemporaryDirectory()
        folder = _export_demo(tmp.name)
    opened = open_pipeline(folder, backend="onnxruntime", device="cpu", threads=args.threads)
    pipe = opened.pipeline
    threshold = pipe.threshold
    numpy_rt = _numpy_runtime()
    if numpy_rt:
        wrap = lambda a: a  # noqa: E731
    else:  # the torch-tensor runtime (before issue 20)
        import torch

        wrap = torch.from_numpy

    with pipe:
        s1, s2 = pipe.stage1._session, pipe.stage2._session
        names1 = [o.name for o in s1.get_outputs()]
        reuse = [i.name for i in s2.get_inputs()][1:]  # stage-1 outputs stage 2 takes
        pool = _images(opened.manifest)
        conf = s1.run(["confidence"], {"image": pool})[0]
        easy, hard = np.flatnonzero(conf >= threshold), np.flatnonzero(conf < threshold)
        if not easy.size or not hard.size:
            raise SystemExit(f"the demo images do not split at threshold {threshold}")
        cases = {
            "batch 1, easy": np.ascontiguousarray(pool[easy[:1]]),
            "batch 1, hard": np.ascontiguousarray(pool[hard[:1]]),
            "batch 32": np.ascontiguousarray(pool[np.arange(32) % len(pool)]),
        }

        def floor(x: np.ndarray) -> np.ndarray:
            out = dict(zip(names1, s1.run(names1, {"image": x})))  # noqa: B905
            logits = out["logits"].copy()
            idx = np.flatnonzero(out["confidence"] < threshold)
            if idx.size:
                feed = {"image": x[idx], **{k: out[k][idx] for k in reuse}}
                logits[idx] = s2.run(["logits"], feed)[0]
            return logits

        inputs = {name: wrap(x) for name, x in cases.items()}
        for name, x in cases.items():  # same answers, or the comparison means nothing
            got = np.asarray(pipe.run(inputs[name]).logits)
            np.testing.assert_allclose(got, floor(x), rtol=1e-5, atol=1e-5)

        calls = []
        for name, x in cases.items():
            calls.append((name, "pipeline", lambda x=inputs[name]: pipe.run(x)))
            calls.append((name, "floor", lambda x=x: floor(x)))
        measured = _interleaved(calls, args.warmup, args.rounds)

        # The same with both sessions replaced by stubs replaying recorded outputs.
        stubs = [_Replay(s1), _Replay(s2)]
        for x in cases.values():  # record every (input batch -> outputs) both sides will ask for
            stubs[0].record(names1, {"image": x})
            out = dict(zip(names1, s1.run(names1, {"image": x})))  # noqa: B905
            idx = np.flatnonzero(out["confidence"] < threshold)
            if idx.size:
                stubs[1].record(["logits"], {"image": x[idx], **{k: out[k][idx] for k in reuse}})
        real = (s1, s2)
        for runner, stub in zip((pipe.stage1, pipe.stage2), stubs):  # noqa: B905
            runner._session = stub
            if hasattr(runner, "_run"):  # the numpy runtime binds session.run at activation
                runner._run = stub.run
        s1, s2 = stubs
        python_only = _interleaved(calls, args.warmup, args.rounds)
        s1, s2 = real
        pipe.stage1._session, pipe.stage2._session = real

    load = os.getloadavg()
    print(
        f"runtime overhead: {'numpy' if numpy_rt else 'torch-tensor'} runtime, ONNX Runtime CPU, "
        f"{args.threads} thread(s), {args.rounds} rounds (median), demo export {folder}"
    )
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    worst = _table(
        "with inference (floor = two raw InferenceSession.run calls in a numpy loop)", measured, cases
    )
    worst_py = _table(
        "Python only (both sessions replaced by a stub replaying recorded outputs)", python_only, cases
    )
    for what, value in (("with inference", worst), ("Python only", worst_py)):
        verdict = "met" if value <= TARGET_US else "NOT met"
        print(
            f"target: pipeline within {TARGET_US:.0f} us of the floor at batch 1 ({what}): {verdict} "
            f"(worst batch-1 case {value:.1f} us)"
        )
    if tmp is not None:
        tmp.cleanup()


class _Replay:
    """A session stand-in: ``run`` returns the outputs recorded for an input of that batch size."""

    def __init__(self, session) -> None:
        self.session = session
        self.outputs: dict = {}

    def record(self, names, feed) -> None:
        key = next(iter(feed.values())).shape[0]
        self.outputs[key] = dict(zip(names, self.session.run(names, feed)))  # noqa: B905

    def run(self, names, feed, run_options=None):
        out = self.outputs[next(iter(feed.values())).shape[0]]
        return [out[n] for n in names]

    def __getattr__(self, name):
        return getattr(self.session, name)


def _interleaved(calls, warmup: int, rounds: int) -> dict:
    """Seconds per call, round-robin, the order reversed every other round."""
    times: dict = {(c, k): [] for c, k, _ in calls}
    clock = time.perf_counter
    for r in range(warmup + rounds):
        order = calls if r % 2 == 0 else calls[::-1]
        for case, kind, fn in order:
            t = clock()
            fn()
            dt = clock() - t
            if r >= warmup:
                times[(case, kind)].append(dt)
    return times


def _table(title: str, times: dict, cases: dict) -> float:
    """Print one table; returns the worst batch-1 paired overhead in microseconds."""
    print(title)
    print(f"  {'case':<15} {'floor us':>10} {'pipeline us':>12} {'overhead us':>12} {'overhead %':>11}")
    worst = 0.0
    for case, x in cases.items():
        fl, pl = times[(case, "floor")], times[(case, "pipeline")]
        diff = statistics.median(p - f for p, f in zip(pl, fl))  # noqa: B905  (paired per round)
        floor_med = statistics.median(fl)
        print(
            f"  {case:<15} {1e6 * floor_med:>10.1f} {1e6 * statistics.median(pl):>12.1f} "
            f"{1e6 * diff:>12.1f} {100 * diff / floor_med:>10.1f}%"
        )
        if x.shape[0] == 1:
            worst = max(worst, 1e6 * diff)
    return worst


if __name__ == "__main__":
    main()
