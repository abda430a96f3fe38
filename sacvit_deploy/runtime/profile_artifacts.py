"""Profiling as one call: what ``sacvit-deploy profile`` does, for Python users.

    from sacvit_deploy.runtime.profile_artifacts import profile_artifacts

    run = profile_artifacts("export", batch_sizes=[1, 8], exit_rate=0.5, iters=50)
    for line in run.lines:      # the text the command prints: tables per batch size, the summary
        print(line)
    e2e = run.report["batches"][0]["latency"]["end_to_end"]["median_ms"]
    run.write_json("profile.json")  # the report (what --json writes); run.write_plot("p.png") too

The pool (``images=`` a folder of real images, or N(0, 1) noise of the manifest's size) sets the
threshold (``exit_rate=`` picks the confidence quantile), then every batch size is timed
round-robin: :mod:`sacvit_deploy.runtime.profiling` says what each row measures. torch is not
needed: the runners take numpy batches.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from sacvit_deploy.core import validate
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.flops import FlopsReport
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.runtime.jetson import Jetson
from sacvit_deploy.runtime.profiling import (
    BatchProfile,
    ExitSplit,
    ProfileSettings,
    build_report,
    environment,
    format_report,
    run_profile,
)

__all__ = [
    "MAX_POOL",
    "ProfileRun",
    "exit_rate_lines",
    "image_pool",
    "load_average",
    "load_lines",
    "precision_lines",
    "profile_artifacts",
]

MAX_POOL = 256  # real images kept in memory for the pool (beyond the largest batch)
# A 1-minute load average that moves by more than this (per CPU) during the run: the rounds met
# different competition, and medians from different moments are not comparable.
LOAD_CHANGE_PER_CPU = 0.5

LoadAverage = Optional[Tuple[float, float, float]]


@dataclass
class ProfileRun:
    """The result: ``report`` (every number and the environment: what ``--json`` writes) and
    ``lines`` (the text ``sacvit-deploy profile`` prints: precision, tables, exit rates, load)."""

    report: Dict[str, Any]
    lines: List[str]
    folder: Path
    manifest: Manifest
    backend: str  # the backend choice, described
    split: ExitSplit  # the threshold and the split it gives on the pool
    batches: List[BatchProfile]  # the raw timings, per batch size

    def write_json(self, path: Union[str, Path]) -> Path:
        """Write :attr:`report` as JSON (atomically; an unwritable path is a one-line error).

        Nothing checks that ``path`` is not an input: the command line refuses those first."""
        import json

        from sacvit_deploy.core.atomic import write_text

        write_text(Path(path), json.dumps(self.report, indent=2) + "\n")
        return Path(path)

    def write_plot(self, path: Union[str, Path]) -> Path:
        """A PNG: latency per batch size and the stage breakdown (needs matplotlib)."""
        from sacvit_deploy.runtime.plotting import plot_profile, require_matplotlib

        require_matplotlib()
        plot_profile(self.report, Path(path))
        return Path(path)


# ---- the report's text --------------------------------------------------------------------------
def load_average() -> LoadAverage:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # not on this OS
        return None


def load_lines(before: LoadAverage, after: LoadAverage, cpus: int) -> List[str]:
    """The load average beside the timings, and a warning when it moved or the machine is busy."""
    if before is None or after is None:
        return ["load average: not available on this OS"]
    lines = [
        f"load average (1 min): {before[0]:.2f} before, {after[0]:.2f} after the timing, on {cpus} CPUs "
        "(other work on the machine stretches every row alike only if it stays steady)"
    ]
    if abs(after[0] - before[0]) > LOAD_CHANGE_PER_CPU * cpus:
        lines.append(
            f"warning: the load average moved from {before[0]:.2f} to {after[0]:.2f} during the run: the "
            "rounds met different competition; rerun on a quieter machine, or with more --iters"
        )
    elif max(before[0], after[0]) > cpus:
        lines.append(
            f"warning: the machine is busy (load {max(before[0], after[0]):.2f} on {cpus} CPUs): absolute "
            "times are inflated; the ratios, timed round-robin, hold better"
        )
    return lines


def precision_lines(manifest: Manifest, folder: Union[str, Path]) -> List[str]:
    """Say when the graphs are int8 (a `quantize` folder), and what that means for speed here."""
    q = manifest.quantization
    if not q:
        return []
    source = q.float_folder
    method = (q.details.get("method") or {}).get("calibration", "?")
    return [
        f"precision: INT8 (Q/DQ graphs written by `sacvit-deploy quantize` from {source}, {method} "
        f"calibration) in {folder}",
        "  on ONNX Runtime's CPU kernels each int8 layer adds a quantize step and an int-to-float "
        "conversion: at a small width these fixed costs can outweigh the saved arithmetic, so int8 may "
        f"run slower than float here (compare: sacvit-deploy profile --artifacts {source} with the same "
        "options; at DeiT-S size: python benchmarks/int8.py)",
    ]


def exit_rate_lines(report: Dict[str, Any]) -> List[str]:
    """Why a batch size's exit rate can differ from the pool's (and between int8 and float)."""
    th = report["threshold"]
    pool = th["pool_size"]
    lines = []
    for b in report["batches"]:
        timed = min(pool, b["distinct_batches"] * b["batch"])
        if timed < pool and abs(b["exit_rate"] - th["pool_exit_rate"]) > 1e-9:
            lines.append(
                f"batch {b['batch']}: exit rate {100 * b['exit_rate']:.1f}% over the {timed} images its "
                f"{b['distinct_batches']} distinct batch(es) hold, a subset of the {pool} pool images the "
                f"threshold was set on ({100 * th['pool_exit_rate']:.1f}% there)"
            )
    if lines:
        lines.append(
            "  (which images of a subset exit depends on confidences near the threshold: synthetic noise "
            "images crowd there, so int8 and float graphs can differ on them while agreeing on real ones)"
        )
    return lines


# ---- the workload ---------------------------------------------------------------------------------
def image_pool(
    images: Optional[Union[str, Path]],
    cfg: Any,  # PreprocessConfig
    largest: int,
    seed: int = 0,
    log: Callable[[str], None] = lambda _line: None,
) -> Tuple[np.ndarray, str]:
    """(pool, description): the images every batch size is cut from, a float32 numpy array.

    ``images`` None: ``largest`` N(0, 1) noise images (``seed``). A folder: its first
    ``max(largest, MAX_POOL)`` images, preprocessed per ``cfg``, cycled to fill the largest batch;
    unreadable ones are skipped (``log`` names each).
    """
    from sacvit_deploy.runtime.image_folder import load_image_folder

    if images is None:
        size = cfg.input_size
        noise = np.random.default_rng(seed).standard_normal((largest, 3, size, size), dtype=np.float32)
        return noise, f"synthetic: N(0, 1) noise, seed {seed}"
    images = Path(images)
    if not images.is_dir():
        raise SacvitError(f"--images {images}: not a folder; give a folder of images, or use --synthetic")
    limit = max(largest, MAX_POOL)
    folder = load_image_folder(images, cfg, limit, on_skip=lambda m: log(f"skipped {m}"), batch_size=32)
    if folder.total > folder.found:
        log(f"--images: using the first {folder.found} of {folder.total} images")
    if not folder.paths:
        raise SacvitError(
            f"--images {images}: none of the {folder.found} images could be read; see the lines above"
        )
    pool = folder.images
    loaded = pool.shape[0]
    if loaded < largest:  # cycle the images to fill the largest batch
        pool = np.tile(pool, ((largest + loaded - 1) // loaded, 1, 1, 1))[:largest]
    cycled = f", cycled to {largest}" if loaded < largest else ""
    return pool, f"{images} ({loaded} images{cycled})"


def _check_options(
    batch_sizes: Sequence[int],
    images: Optional[Union[str, Path]],
    synthetic: bool,
    threshold: Optional[float],
    exit_rate: Optional[float],
    warmup: int,
    iters: int,
    seed: int,
) -> List[int]:
    """The values, checked before anything is opened; the batch sizes without repeats, in order."""
    if images is not None and synthetic:
        raise validate.InvalidValue("--images and --synthetic exclude each other; give one")
    if threshold is not None and exit_rate is not None:
        raise validate.InvalidValue("--threshold and --exit-rate exclude each other; give one")
    if threshold is not None:
        validate.threshold(threshold, "--threshold")  # finite, >= 0
    if exit_rate is not None and not 0.0 <= exit_rate <= 1.0:  # NaN fails the comparison too
        raise validate.InvalidValue(f"--exit-rate {exit_rate:g}: give a fraction in [0, 1], e.g. 0.77")
    if isinstance(batch_sizes, (str, bytes)) or not len(batch_sizes):
        raise validate.InvalidValue(
            f"--batch-sizes {batch_sizes!r}: give one or more batch sizes, e.g. [1, 8, 32]"
        )
    sizes: List[int] = []
    for b in batch_sizes:
        b = validate.batch_size(b, "--batch-sizes")
        if b not in sizes:
            sizes.append(b)
    for name, value, least, what in (
        ("--warmup", warmup, 0, "warm-up rounds per batch size"),
        ("--iters", iters, 1, "timed rounds per batch size"),
        ("--seed", seed, 0, "the synthetic images' random seed"),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise validate.InvalidValue(f"{name} {value!r}: give a whole number >= {least} ({what})")
    return sizes


# ---- the use case ---------------------------------------------------------------------------------
def profile_artifacts(
    artifacts: Optional[Union[str, Path]] = None,
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    images: Optional[Union[str, Path]] = None,
    synthetic: bool = False,
    threshold: Optional[float] = None,
    exit_rate: Optional[float] = None,
    warmup: int = 5,
    iters: int = 20,
    baseline: bool = False,
    backend: str = "auto",
    device: Optional[str] = None,
    threads: Optional[int] = None,
    seed: int = 0,
    log: Optional[Callable[[str], None]] = None,
    advance: Optional[Callable[[int], None]] = None,
    **runner_options: Any,
) -> ProfileRun:
    """Time stage 1, gate, stage 2 and end to end per batch size on an artifact folder.

    ``artifacts`` None: ``engines/`` if it has engines, else ``export/``. ``images``: a folder of
    real images (default: synthetic noise; ``synthetic=True`` says so explicitly and excludes
    ``images``). ``threshold`` (default: the manifest's) or ``exit_rate`` (the fraction of the pool
    that must exit at stage 1). ``baseline``: also time ``baseline.onnx``. ``runner_options``: what
    :func:`~sacvit_deploy.runtime.loader.open_pipeline` takes besides (OpenVINO: ``provider``,
    ``hint``). ``log`` gets plain-text notes; ``advance(1)`` is called after every round, of
    ``len(batch_sizes) * (warmup + iters)``. On a Jetson with tegrastats, power is measured too.
    """
    from sacvit_deploy.runtime.loader import open_pipeline

    say: Callable[[str], None] = log if log is not None else (lambda _line: None)
    step: Callable[[int], None] = advance if advance is not None else (lambda _n: None)
    sizes = _check_options(batch_sizes, images, synthetic, threshold, exit_rate, warmup, iters, seed)

    opened = open_pipeline(artifacts, backend=backend, device=device, threads=threads, **runner_options)
    manifest = opened.manifest
    if (
        baseline
        and opened.choice.backend in ("onnxruntime", "openvino")
        and "baseline" not in manifest.graphs
    ):
        raise SacvitError(
            f"{opened.folder}: no baseline.onnx in the manifest, which --baseline times; re-export with "
            f"`sacvit-deploy export CHECKPOINT --out {opened.folder} --baseline`"
        )
    # open_pipeline's own arguments choose the backend; the rest configure every runner alike.
    base_options = {k: v for k, v in runner_options.items() if k not in ("provider", "buckets")}
    base_runner = opened.baseline_runner(threads=threads, **base_options) if baseline else None
    say(f"backend: {opened.choice.describe()}")

    jetson = Jetson()
    jetson_info, jetson_note = jetson.probe()
    say(jetson_note)
    sampler = jetson if jetson_info is not None and jetson_info.tegrastats else None

    pool, source = image_pool(images, manifest.preprocess, max(sizes), seed, say)
    load_before = load_average()
    settings = ProfileSettings(
        sizes,
        warmup,
        iters,
        threshold,
        exit_rate,
        source,
        extra={
            "pool_size": int(pool.shape[0]),
            "seed": seed if images is None else None,
            "baseline": baseline,
        },
    )
    runners = {"stage1": opened.pipeline.stage1, "stage2": opened.pipeline.stage2}
    if base_runner is not None:
        runners["baseline"] = base_runner
    with opened.pipeline as pipe:
        if base_runner is not None:
            base_runner.activate()
        try:
            split, results = run_profile(pipe, pool, settings, base_runner, sampler, log=say, advance=step)
        finally:
            if base_runner is not None:
                base_runner.deactivate()
    load_after = load_average()

    cfg = manifest.model
    notes = []
    if opened.choice.backend == "torch" and baseline:
        notes.append(
            "torch backend: the baseline is the DeiT built from the SAC-ViT weights, not baseline.onnx"
        )
    if jetson_info is None or sampler is None:
        notes.append(jetson_note)
    report = build_report(
        results,
        FlopsReport.of(cfg),
        environment(
            opened.choice, runners, pipe.device, threads, jetson_info.to_dict() if jetson_info else None
        ),
        {
            "variant": cfg.variant,
            "format": manifest.source_format,
            "selection": cfg.selection,
            "attention": cfg.attention,
            "img_size": cfg.img_size,
            "artifacts": str(opened.folder),
            "manifest_threshold": manifest.exit_threshold,
            "precision": "int8" if manifest.quantization else "float32",
        },
        settings.to_dict(),
        split,
        notes,
    )
    report["environment"]["load_average"] = {"before": load_before, "after": load_after}
    lines = [
        *precision_lines(manifest, opened.folder),
        *format_report(report),
        *exit_rate_lines(report),
        *load_lines(load_before, load_after, os.cpu_count() or 1),
    ]
    return ProfileRun(report, lines, opened.folder, manifest, opened.choice.describe(), split, list(results))
