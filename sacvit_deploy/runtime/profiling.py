"""Profiling the early-exit pipeline: stage times, overhead over the ideal, throughput, FLOPs, power.

What is timed, per batch size, in ROUND-ROBIN (every round runs each of these once, in a rotating
order, on the same batch, so background load and thermal state affect them alike):

- ``end_to_end``: ``pipeline.run(x, threshold)`` on a host batch ``x``, then a device sync. It
  includes the host-to-device copy of ``x`` (``run`` moves its input to the device) and the one
  host read of the gate (the hard-sample count). No device-to-host copy: the logits stay on the
  device.
- ``pipeline.run(x, threshold, timing=True)``: the same call with a device sync between its parts,
  giving ``stage1``, ``gate`` (gate + compaction + scatter of stage 2's logits), ``stage2`` and
  ``pipeline_staged`` (their total, which excludes the input copy). On a CPU the syncs cost nothing.
- ``stage1_alone``: the stage-1 runner on the same host batch (input copy included, as end to end).
- ``stage2_alone``: the stage-2 runner on exactly this batch's hard samples, already compacted on
  the device (as inside the pipeline), padded to the same buckets.
- ``ideal``: stage 1 then stage 2 on the same host batch and hard samples as the two rows above,
  back to back in ONE timed call ending with one device sync, exactly as ``end_to_end`` is timed:
  the pipeline without its gate, compaction and scatter. (It is not the sum of the two "alone"
  rows: two timed calls pay two clock reads and syncs and are disturbed separately, so their sum
  could even exceed the pipeline.)
- ``baseline``: the single-stage DeiT runner on the same host batch (input copy included).

``overhead`` is the median over rounds of ``end_to_end / ideal - 1``, both timed in the same round:
what the gate, compaction, scatter and Python cost. Measured alike, it is >= 0 up to timing noise;
a negative value means the noise (background load) is larger than the overhead: give more
``--iters``. Throughput is ``batch / median``. In a round where no sample is hard, stage 2 costs 0,
so at small batches the median of the stage-2 rows can be 0.

Percentiles interpolate linearly between order statistics (numpy's default); with few iterations
p99 is close to the maximum: give ``--iters`` >= 100 for a meaningful p99.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from sacvit_deploy.backends.arrays import as_host_batch, to_host
from sacvit_deploy.backends.base import Runner
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.exit_rule import exit_mask
from sacvit_deploy.core.flops import FlopsReport, format_gflops
from sacvit_deploy.core.version import __version__
from sacvit_deploy.runtime.pipeline import EarlyExitPipeline, hard_samples, run_any_batch, run_batched

SCHEMA = "sacvit-deploy/profile"
SCHEMA_VERSION = 1

# Row names of one batch's latency table, in display order.
PIPELINE_ROWS = ("stage1", "gate", "stage2", "pipeline_staged", "end_to_end")
ALONE_ROWS = ("stage1_alone", "stage2_alone", "ideal")
ROW_LABELS = {
    "stage1": "stage 1 (in pipeline)",
    "gate": "gate + compaction + scatter",
    "stage2": "stage 2 (in pipeline)",
    "pipeline_staged": "pipeline, synced per stage",
    "end_to_end": "end to end",
    "stage1_alone": "stage 1 alone",
    "stage2_alone": "stage 2 alone, hard samples",
    "ideal": "ideal: stage 1 + 2, back to back",
    "baseline": "baseline (single-stage DeiT)",
}
ROW_LEGEND = (
    "rows: 'in pipeline' = the parts of one pipeline.run, clock read (GPU: synced) between them, and",
    "  'pipeline, synced per stage' their sum; 'end to end' = pipeline.run as an application calls it;",
    "  'alone' = each stage's runner by itself on the same batch / hard samples; 'ideal' = stage 1 then",
    "  stage 2 in one timed call, measured like end to end, minus the gate; overhead = end to end over",
    "  ideal. A round with no hard sample has stage 2 = 0 ms, so a stage-2 median can be 0.",
    "columns: latency statistics over the timed rounds in ms; images/s = batch / median latency",
)
THROUGHPUT_ROWS = ("stage1", "pipeline_staged", "end_to_end", "stage1_alone", "ideal", "baseline")


# ---- statistics ---------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics (numpy's default method)."""
    if not len(values):
        raise ValueError("percentile of no values")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(frozen=True)
class LatencyStats:
    """Summary of repeated timings, in seconds."""

    n: int
    median: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencyStats:
        if not len(samples):
            raise ValueError("LatencyStats of no samples")
        a = np.asarray(samples, dtype=np.float64)
        return cls(
            n=int(a.size),
            median=float(np.median(a)),
            p90=percentile(a, 90),
            p99=percentile(a, 99),
            mean=float(a.mean()),
            min=float(a.min()),
            max=float(a.max()),
        )

    def throughput(self, batch: int) -> float:
        """Images per second at the median latency (0 when the median is 0)."""
        return batch / self.median if self.median > 0 else 0.0

    def to_dict(self) -> Dict[str, Union[float, int]]:
        return {
            "n": self.n,
            "median_ms": 1e3 * self.median,
            "p90_ms": 1e3 * self.p90,
            "p99_ms": 1e3 * self.p99,
            "mean_ms": 1e3 * self.mean,
            "min_ms": 1e3 * self.min,
            "max_ms": 1e3 * self.max,
        }


# ---- exit-rate thresholds -----------------------------------------------------------------------
@dataclass(frozen=True)
class ExitSplit:
    """A threshold and the split it gives on the confidences it was chosen on."""

    threshold: float
    n_exit: int
    n: int
    requested: Optional[float] = None

    @property
    def exit_rate(self) -> float:
        return self.n_exit / self.n if self.n else 0.0


def _f32(x: float) -> float:
    return float(np.float32(x))


def _between(lo: float, hi: float) -> Optional[float]:
    """A float32 strictly between two float32 values (their midpoint), or None when they are
    equal or adjacent floats: no threshold separates them robustly."""
    mid = _f32((lo + hi) / 2.0)
    return mid if lo < mid < hi else None


def threshold_for_exit_rate(confidence: Any, rate: float) -> ExitSplit:
    """The threshold that makes a fraction ``rate`` of these samples exit (confidence >= threshold).

    The target count is ``floor(rate * n + 0.5)``; the threshold lies MIDWAY between the
    highest confidence that stays and the lowest that exits, never on a confidence (a threshold
    equal to a sample's confidence makes its decision depend on the last float bit, which differs
    between backends). Thresholds are float32 numbers, like the confidences the pipeline compares
    them with. Tied (or adjacent-float) confidences cannot be split: the nearest count that can is
    used, the smaller one when two are equally near; ``ExitSplit.n_exit`` says what was achieved.
    Exit rate 1: half the lowest confidence; exit rate 0: above the highest (> 1 if it is 1.0).
    """
    if not 0.0 <= rate <= 1.0 or math.isnan(rate):
        raise SacvitError(f"exit rate {rate} is outside [0, 1]; give a fraction, e.g. 0.77")
    c = sorted(_f32(v) for v in as_host_batch(confidence).astype(np.float32).reshape(-1).tolist())
    n = len(c)
    if n == 0:
        raise SacvitError("no confidences to choose an exit threshold from")
    target = math.floor(rate * n + 0.5)

    def split(k: int) -> Optional[float]:  # threshold letting the k most confident samples exit
        if k == n:
            return _f32(c[0] / 2.0) if c[0] > 0 else 0.0
        if k == 0:
            return _between(c[-1], 1.0) or _between(c[-1], 2.0) or _f32(c[-1] * 2.0)
        return _between(c[n - k - 1], c[n - k])

    for distance in range(n + 1):
        for k in (target - distance, target + distance):
            if 0 <= k <= n and (th := split(k)) is not None:
                return ExitSplit(th, k, n, rate)
    raise AssertionError("unreachable: k = 0 and k = n always split")


# ---- timing -------------------------------------------------------------------------------------
def device_sync(device: str) -> Callable[[], None]:
    """A call that waits for the device's queued work: nothing on the CPU; on a GPU the CUDA
    driver's ``cuCtxSynchronize`` of the calling thread's context (ctypes; no torch needed)."""
    if not str(device).startswith("cuda"):
        return lambda: None
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("cuda")
    if not name:
        return lambda: None
    lib = ctypes.CDLL(name)

    def sync() -> None:
        lib.cuCtxSynchronize()  # its error (no current context) means nothing is queued

    return sync


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> Tuple[float, Any]:
    """(seconds, result) of one call, the device synchronised before the clock stops."""
    t = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - t, result


def pool_batches(pool: Any, batch: int, count: int) -> List[np.ndarray]:
    """``count`` batches of ``batch`` consecutive pool images, wrapping around the pool.

    Only distinct batches are built: the offsets repeat after ``len(pool) / gcd(len(pool), batch)``.
    """
    pool = as_host_batch(pool)
    n = pool.shape[0]
    distinct = min(count, n // math.gcd(n, batch))
    out = []
    for j in range(distinct):
        idx = np.arange(j * batch, (j + 1) * batch) % n
        out.append(np.ascontiguousarray(pool.take(idx, axis=0)))
    return out


@dataclass
class _Prepared:
    images: np.ndarray  # host batch
    n_hard: int
    stage2_feed: Dict[str, Any]  # hard samples, compacted where stage 1 left them (host or device)


def _prepare(pipe: EarlyExitPipeline, x: np.ndarray, threshold: float) -> _Prepared:
    out1 = run_any_batch(pipe.stage1, {"image": x})
    hard, feed = hard_samples(x, out1, threshold)
    return _Prepared(x, int(hard.size), feed)


def _stages_back_to_back(pipe: EarlyExitPipeline, p: _Prepared) -> Any:
    """Stage 1 on the batch, then stage 2 on its (already compacted) hard samples: one call."""
    out1 = run_any_batch(pipe.stage1, {"image": p.images})
    if p.n_hard:
        return run_batched(pipe.stage2, p.stage2_feed, p.n_hard, pipe.buckets)
    return out1


@dataclass
class BatchProfile:
    """Every timing of one batch size (seconds) and what the pipeline decided."""

    batch: int
    rounds: int
    distinct_batches: int
    samples: Dict[str, List[float]]
    exits: int  # samples answered by stage 1, over the timed rounds
    images: int  # samples run, over the timed rounds
    power: Optional[Dict[str, Any]] = None

    @property
    def exit_rate(self) -> float:
        return self.exits / self.images if self.images else 0.0

    def stats(self, row: str) -> Optional[LatencyStats]:
        values = self.samples.get(row)
        return LatencyStats.of(values) if values else None

    @property
    def overhead(self) -> float:
        """Median over rounds of end_to_end / ideal - 1 (paired: both timed in the same round)."""
        pairs = zip(self.samples["end_to_end"], self.samples["ideal"])
        ratios = [e / i for e, i in pairs if i > 0]
        return float(np.median(ratios)) - 1.0 if ratios else 0.0

    @property
    def speedup(self) -> Optional[float]:
        """Baseline median latency / end-to-end median latency (= the images/s ratio)."""
        base, e2e = self.stats("baseline"), self.stats("end_to_end")
        if base is None or e2e is None or e2e.median <= 0:
            return None
        return base.median / e2e.median


def profile_batch(
    pipe: EarlyExitPipeline,
    pool: Any,
    batch: int,
    threshold: float,
    warmup: int,
    iters: int,
    baseline: Optional[Runner] = None,
    advance: Callable[[int], None] = lambda _n: None,
) -> BatchProfile:
    """Time one batch size (see the module docstring for what each row measures).

    ``advance(1)`` is called after every round (warm-up included), for a progress bar.
    """
    if iters < 1 or warmup < 0:
        raise SacvitError(f"--iters must be >= 1 and --warmup >= 0 (got {iters}, {warmup})")
    sync = device_sync(pipe.device)
    prepared = [_prepare(pipe, x, threshold) for x in pool_batches(pool, batch, iters)]
    samples: Dict[str, List[float]] = {
        r: [] for r in (*PIPELINE_ROWS, *ALONE_ROWS, *(("baseline",) if baseline else ()))
    }
    exits = images = 0

    for i in range(warmup + iters):
        p = prepared[i % len(prepared)]
        x = p.images
        calls: Dict[str, Callable[[], Any]] = {
            "end_to_end": lambda x=x: pipe.run(x, threshold),
            "staged": lambda x=x: pipe.run(x, threshold, timing=True),
            "stage1_alone": lambda x=x: run_any_batch(pipe.stage1, {"image": x}),
        }
        if p.n_hard:
            calls["stage2_alone"] = lambda p=p: run_batched(
                pipe.stage2, p.stage2_feed, p.n_hard, pipe.buckets
            )
        calls["ideal"] = lambda p=p: _stages_back_to_back(pipe, p)
        if baseline is not None:
            calls["baseline"] = lambda x=x: run_any_batch(baseline, {"image": x})
        names = list(calls)
        shift = i % len(names)  # rotate the order so no call always follows the same one
        seconds: Dict[str, float] = {"stage2_alone": 0.0}
        results: Dict[str, Any] = {}
        for name in names[shift:] + names[:shift]:
            seconds[name], results[name] = timed(calls[name], sync)
        advance(1)
        if i < warmup:
            continue
        staged = results["staged"]
        for part in ("stage1", "gate", "stage2"):
            samples[part].append(staged.timings[part])
        samples["pipeline_staged"].append(staged.timings["total"])
        samples["end_to_end"].append(seconds["end_to_end"])
        samples["stage1_alone"].append(seconds["stage1_alone"])
        samples["stage2_alone"].append(seconds["stage2_alone"])
        samples["ideal"].append(seconds["ideal"])
        if baseline is not None:
            samples["baseline"].append(seconds["baseline"])
        exits += int((results["end_to_end"].stage == 1).sum())
        images += batch
    return BatchProfile(batch, iters, len(prepared), samples, exits, images)


def measure_power(
    fn: Callable[[], Any],
    images_per_call: int,
    sampler: Any,
    sync: Callable[[], None],
    min_calls: int,
    min_seconds: float,
) -> Dict[str, Any]:
    """Run ``fn`` alone under a power sampler (at least ``min_calls`` calls and ``min_seconds``).

    Returns the sampler's average power and the energy per image: mean power x loop time / images.
    """
    calls = 0
    with sampler:
        start = time.perf_counter()
        while calls < min_calls or time.perf_counter() - start < min_seconds:
            fn()
            sync()
            calls += 1
        seconds = time.perf_counter() - start
    summary = sampler.summary()
    images = calls * images_per_call
    record: Dict[str, Any] = {"seconds": seconds, "images": images, "calls": calls}
    if summary is None:
        record.update(samples=0, mean_mw=None, energy_per_image_mj=None)
        return record
    record.update(summary.to_dict())
    record["energy_per_image_mj"] = summary.energy_mj(seconds) / images
    return record


# ---- environment ----------------------------------------------------------------------------------
def package_versions() -> Dict[str, Optional[str]]:
    """Versions of what decides the timings (None: not installed)."""
    import importlib.util
    from importlib import metadata

    versions: Dict[str, Optional[str]] = {"sacvit-deploy": __version__, "python": platform.python_version()}
    for dist in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "onnx", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    if versions["tensorrt"] is None and importlib.util.find_spec("tensorrt") is not None:
        try:  # JetPack installs TensorRT's Python module with apt, without pip metadata
            import tensorrt

            versions["tensorrt"] = str(tensorrt.__version__)
        except Exception:  # a broken install: leave it unknown
            pass
    return versions


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def host_device_note(device: str) -> str:
    if not str(device).startswith("cuda"):
        return "not applicable: the backend runs on the CPU, no host-device copies"
    return (
        "every timed pipeline call includes the host-to-device copy of the input batch (the runner "
        "copies its numpy input), the read-back of the B stage-1 confidences (the gate runs on the "
        "host) and of the logits (results are numpy); stage2_alone is fed the compacted stage-1 outputs "
        "where stage 1 left them (on the device for TensorRT), as inside the pipeline; "
        "every timed call ends with the CUDA context synchronised"
    )


def environment(
    choice: Any,
    runners: Dict[str, Runner],
    device: str,
    threads: Optional[int],
    jetson: Optional[Dict[str, Any]],
) -> Dict[str, Any]:
    gpu = _gpu_name(str(device))
    return {
        "backend": choice.backend,
        "device": str(device),
        "provider": choice.provider,
        "backend_choice": choice.describe(),
        "runners": {role: r.describe() for role, r in runners.items()},
        "versions": package_versions(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch_threads": _torch_threads(),
        "gpu": gpu,
        "host_device_copies": host_device_note(device),
        "jetson": jetson,
        "argv": list(sys.argv),
    }


def _gpu_name(device: str) -> Optional[str]:
    """The GPU's name from the driver (ctypes on libcuda), or None on the CPU / without a driver."""
    if not device.startswith("cuda"):
        return None
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("cuda")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        index = int(device.partition(":")[2] or 0)
        dev = ctypes.c_int(0)
        buf = ctypes.create_string_buffer(256)
        if lib.cuInit(0) or lib.cuDeviceGet(ctypes.byref(dev), index) or lib.cuDeviceGetName(buf, 256, dev):
            return None
        return buf.value.decode(errors="replace")
    except (OSError, AttributeError, ValueError):
        return None


def _torch_threads() -> Optional[int]:
    """torch's intra-op threads when torch is already loaded (it is not imported for this)."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None and hasattr(torch, "get_num_threads") else None


# ---- the report -----------------------------------------------------------------------------------
def batch_record(
    bp: BatchProfile, flops: FlopsReport, requested_exit_rate: Optional[float]
) -> Dict[str, Any]:
    rows = {name: s.to_dict() for name in bp.samples if (s := bp.stats(name)) is not None}
    throughput = {
        name: s.throughput(bp.batch) for name in THROUGHPUT_ROWS if (s := bp.stats(name)) is not None
    }
    hard_fraction = 1.0 - bp.exit_rate
    return {
        "batch": bp.batch,
        "rounds": bp.rounds,
        "distinct_batches": bp.distinct_batches,
        "exit_rate": bp.exit_rate,
        "hard_per_batch": hard_fraction * bp.batch,
        "latency": rows,
        "samples_ms": {name: [1e3 * v for v in values] for name, values in bp.samples.items()},
        "throughput_ips": throughput,
        "overhead": bp.overhead,
        "speedup": bp.speedup,
        "latency_ratio": 1.0 / bp.speedup if bp.speedup else None,
        "gflops_per_image": {
            "measured": flops.expected(bp.exit_rate),
            "expected": flops.expected(requested_exit_rate) if requested_exit_rate is not None else None,
            "baseline": flops.baseline,
            "saving": 1.0 - flops.expected(bp.exit_rate) / flops.baseline,
        },
        "power": bp.power,
    }


def build_report(
    batches: Sequence[BatchProfile],
    flops: FlopsReport,
    env: Dict[str, Any],
    model: Dict[str, Any],
    settings: Dict[str, Any],
    split: ExitSplit,
    notes: Sequence[str] = (),
) -> Dict[str, Any]:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "environment": env,
        "model": model,
        "settings": settings,
        "threshold": {
            "value": split.threshold,
            "requested_exit_rate": split.requested,
            "pool_exit_rate": split.exit_rate,
            "pool_size": split.n,
        },
        "flops": {
            "accounting": "implementation (multiply-accumulates of this package's graphs)",
            "baseline": flops.baseline,
            "stage1": flops.stage1,
            "stage2": flops.stage2,
            "stage2_reference": flops.stage2_reference,
            "expected_at_requested": flops.expected(split.requested) if split.requested is not None else None,
        },
        "batches": [batch_record(b, flops, split.requested) for b in batches],
        "notes": list(notes),
    }


# ---- text output ----------------------------------------------------------------------------------
def _ms(v: float) -> str:
    return f"{v:9.3f}" if v < 10 else f"{v:9.2f}"


def format_report(report: Dict[str, Any]) -> List[str]:
    """trtexec-style text: one latency table per batch size, then a summary across batch sizes."""
    env, th, fl = report["environment"], report["threshold"], report["flops"]
    m, s = report["model"], report["settings"]
    lines = [
        f"model: {m['variant']} ({m['format']}, {m['selection']} selection, {m['attention']} attention), "
        f"artifacts {m['artifacts']}",
        f"backend: {env['backend_choice']}; threads {env['threads'] or 'default'}; cpu {env['cpu_model']}"
        + (f"; gpu {env['gpu']}" if env["gpu"] else ""),
        f"threshold {th['value']:.6g}"
        + (
            f" (exit rate {th['requested_exit_rate']:g} requested, {th['pool_exit_rate']:.3f} on the "
            f"{th['pool_size']} pool images)"
            if th["requested_exit_rate"] is not None
            else f" (exit rate {th['pool_exit_rate']:.3f} on the {th['pool_size']} pool images)"
        ),
        f"timing: {s['warmup']} warm-up + {s['iters']} timed rounds per batch size, round-robin; "
        f"images: {s['images']}",
        f"host-device copies: {env['host_device_copies']}",
        *ROW_LEGEND,
    ]
    head = f"  {'':33}{'median':>9} {'p90':>9} {'p99':>9} {'mean':>9} {'min':>9} {'max':>9}  {'images/s':>10}"
    for b in report["batches"]:
        lines += [
            "",
            f"=== batch {b['batch']}: {b['rounds']} rounds over {b['distinct_batches']} distinct batch(es), "
            f"exit rate {100 * b['exit_rate']:.1f}% ({b['hard_per_batch']:.2f} of {b['batch']} to stage 2 per batch) ===",
            head + "   (latency in ms)",
        ]
        for row in (*PIPELINE_ROWS, *ALONE_ROWS, "baseline"):
            st = b["latency"].get(row)
            if st is None:
                continue
            ips = b["throughput_ips"].get(row)
            lines.append(
                f"  {ROW_LABELS[row]:<33}"
                + " ".join(
                    _ms(st[k]) for k in ("median_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")
                )
                + (f"  {ips:>10.1f}" if ips is not None else f"  {'-':>10}")
            )
        e2e, ideal = b["latency"]["end_to_end"]["median_ms"], b["latency"]["ideal"]["median_ms"]
        noise = (
            " (negative: timing noise exceeds the overhead; give more --iters)" if b["overhead"] < 0 else ""
        )
        lines.append(
            f"  overhead: {100 * b['overhead']:+.1f}% (median of end to end / ideal - 1 per round; medians "
            f"{e2e:.3f} vs {ideal:.3f} ms){noise}"
        )
        if b["speedup"] is not None:
            lines.append(
                f"  vs baseline: {b['speedup']:.2f}x images/s, latency {b['latency_ratio']:.2f}x "
                f"({b['throughput_ips']['end_to_end']:.1f} vs {b['throughput_ips']['baseline']:.1f} images/s)"
            )
        g = b["gflops_per_image"]
        gf = format_gflops
        exp = (
            f", {gf(g['expected'])} expected at exit rate {th['requested_exit_rate']:g}"
            if g["expected"]
            else ""
        )
        lines.append(
            f"  GFLOPs/image: {gf(g['measured'])} measured ({gf(fl['stage1'])} + {1 - b['exit_rate']:.3f} x "
            f"{gf(fl['stage2'])}){exp}; baseline {gf(g['baseline'])} ({100 * g['saving']:.0f}% fewer)"
        )
        if b["power"]:
            lines.append("  power: " + _power_text(b["power"]))
    lines += ["", "summary (medians)"]
    lines.append(
        f"  {'batch':>5} {'e2e ms':>10} {'ideal ms':>10} {'overhead':>9} {'images/s':>10} "
        f"{'base img/s':>10} {'speedup':>8} {'exit rate':>9} {'GFLOPs':>7}"
    )
    for b in report["batches"]:
        base = b["throughput_ips"].get("baseline")
        base_text = f"{base:.1f}" if base is not None else "-"
        speedup_text = f"{b['speedup']:.2f}x" if b["speedup"] is not None else "-"
        lines.append(
            f"  {b['batch']:>5} {b['latency']['end_to_end']['median_ms']:>10.3f} "
            f"{b['latency']['ideal']['median_ms']:>10.3f} {100 * b['overhead']:>+8.1f}% "
            f"{b['throughput_ips']['end_to_end']:>10.1f} {base_text:>10} {speedup_text:>8} "
            f"{100 * b['exit_rate']:>8.1f}% {format_gflops(b['gflops_per_image']['measured']):>7}"
        )
    return lines


def _power_text(power: Dict[str, Any]) -> str:
    parts = []
    for who in ("pipeline", "baseline"):
        p = power.get(who)
        if not p:
            continue
        if p.get("mean_mw") is None:
            parts.append(f"{who}: no tegrastats samples")
            continue
        parts.append(
            f"{who} {p['mean_mw']:.0f} mW avg ({p['rail']}, {p['samples']} samples), "
            f"{p['energy_per_image_mj']:.2f} mJ/image"
        )
    return "; ".join(parts)


@dataclass
class ProfileSettings:
    batch_sizes: List[int]
    warmup: int = 5
    iters: int = 20
    threshold: Optional[float] = None
    exit_rate: Optional[float] = None
    images: str = "synthetic"
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "batch_sizes": list(self.batch_sizes),
            "warmup": self.warmup,
            "iters": self.iters,
            "threshold": self.threshold,
            "exit_rate": self.exit_rate,
            "images": self.images,
            **self.extra,
        }


def pool_confidence(pipe: EarlyExitPipeline, pool: Any, chunk: int) -> np.ndarray:
    """Stage-1 confidences of every pool image (in chunks, on the host)."""
    pool = as_host_batch(pool)
    parts = [
        to_host(run_any_batch(pipe.stage1, {"image": pool[i : i + chunk]})["confidence"]).astype(np.float32)
        for i in range(0, pool.shape[0], chunk)
    ]
    return np.concatenate(parts)


def run_profile(
    pipe: EarlyExitPipeline,
    pool: Any,
    settings: ProfileSettings,
    baseline: Optional[Runner] = None,
    jetson: Any = None,
    log: Callable[[str], None] = lambda _msg: None,
    advance: Callable[[int], None] = lambda _n: None,
) -> Tuple[ExitSplit, List[BatchProfile]]:
    """Choose the threshold on the pool, then profile every batch size (runners must be active).

    ``jetson``: a :class:`sacvit_deploy.runtime.jetson.Jetson` whose sampler measures power, or
    None. Power runs after the timed rounds, the pipeline then the baseline each ALONE (a round-robin
    mix would average their power): at least ``iters`` calls and ``jetson.power_seconds`` each.
    """
    largest = max(settings.batch_sizes)
    pool = as_host_batch(pool)
    confidence = pool_confidence(pipe, pool, largest)
    if settings.exit_rate is not None:
        split = threshold_for_exit_rate(confidence, settings.exit_rate)
    else:
        th = pipe.threshold if settings.threshold is None else float(settings.threshold)
        split = ExitSplit(th, int(exit_mask(confidence, th).sum()), int(confidence.size), None)
    results = []
    for batch in settings.batch_sizes:
        log(f"batch {batch}: {settings.warmup} warm-up + {settings.iters} timed rounds ...")
        bp = profile_batch(
            pipe, pool, batch, split.threshold, settings.warmup, settings.iters, baseline, advance
        )
        if jetson is not None:
            sync = device_sync(pipe.device)
            power_seconds = jetson.power_seconds
            x = pool_batches(pool, batch, 1)[0]
            bp.power = {
                "pipeline": measure_power(
                    lambda x=x: pipe.run(x, split.threshold),
                    batch,
                    jetson.sampler(),
                    sync,
                    settings.iters,
                    power_seconds,
                )
            }
            if baseline is not None:
                bp.power["baseline"] = measure_power(
                    lambda x=x: run_any_batch(baseline, {"image": x}),
                    batch,
                    jetson.sampler(),
                    sync,
                    settings.iters,
                    power_seconds,
                )
        results.append(bp)
    return split, results
