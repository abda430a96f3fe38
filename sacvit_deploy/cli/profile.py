"""`sacvit-deploy profile`: where the time goes, per stage and batch size, and what early exit saves.

Times stage 1, the gate + compaction, stage 2 and the pipeline end to end after warm-up, with the
device synchronised; compares the end-to-end time with the "ideal" (stage 1 + stage 2 alone on the
same hard samples, timed round-robin with it) and, with --baseline, with the single-stage DeiT on
the same backend. Exactly what each row measures: :mod:`sacvit_deploy.runtime.profiling`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List, Optional, Tuple

import typer
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import note, out, printable, safe
from sacvit_deploy.cli._options import (
    ArtifactsOption,
    BackendName,
    BackendOption,
    DeviceOption,
    OvDeviceOption,
    OvHintOption,
    ThreadsOption,
    check_batch_size,
    openvino_options,
)
from sacvit_deploy.cli._paths import INPUT, OUTPUT_FILE, check_output, write_json
from sacvit_deploy.cli._progress import progress_bar
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.runtime.jetson import Jetson

WORK = "Workload"
TIMING = "Timing"
OUTPUT = "Output"
MAX_POOL = 256  # real images kept in memory for the pool (beyond the largest batch)
# A 1-minute load average that moves by more than this (per CPU) during the run: the rounds met
# different competition, and medians from different moments are not comparable.
LOAD_CHANGE_PER_CPU = 0.5


def load_average() -> Optional[Tuple[float, float, float]]:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # not on this OS
        return None


def load_lines(before, after, cpus: int) -> List[str]:
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


def precision_lines(manifest, folder) -> List[str]:
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


def exit_rate_lines(report) -> List[str]:
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


def parse_batch_sizes(text: str) -> List[int]:
    sizes: List[int] = []
    for part in text.split(","):
        part = part.strip()
        # isdigit() alone accepts "²" and other digits int() refuses: ASCII decimals only.
        if not (part.isascii() and part.isdecimal()) or int(part) < 1:
            raise SacvitError(
                f"--batch-sizes {text!r}: give positive integers separated by commas, e.g. 1,8,32"
            )
        check_batch_size(int(part), "--batch-sizes")
        if int(part) not in sizes:
            sizes.append(int(part))
    return sizes


def _pool(images: Optional[Path], synthetic: bool, cfg, largest: int, seed: int):  # -> (array, description)
    import numpy as np

    from sacvit_deploy.runtime.images import collect_images, iter_batches

    if images is None:
        size = cfg.input_size
        noise = np.random.default_rng(seed).standard_normal((largest, 3, size, size), dtype=np.float32)
        return _host_batch(noise), f"synthetic: N(0, 1) noise, seed {seed}"
    if not images.is_dir():
        raise SacvitError(f"--images {images}: not a folder; give a folder of images, or use --synthetic")
    paths = collect_images([images])
    limit = max(largest, MAX_POOL)
    if len(paths) > limit:
        note(f"--images: using the first {limit} of {len(paths)} images")
        paths = paths[:limit]
    arrays = []
    for batch in iter_batches(paths, cfg, batch_size=32):
        for failure in batch.failures:
            note(f"[yellow]skipped[/] {safe(failure)}")
        if batch.images.shape[0]:
            arrays.append(batch.images)
    if not arrays:
        raise SacvitError(
            f"--images {images}: none of the {len(paths)} images could be read; see the lines above"
        )
    pool = np.concatenate(arrays)
    loaded = pool.shape[0]
    if loaded < largest:  # cycle the images to fill the largest batch
        pool = np.tile(pool, ((largest + loaded - 1) // loaded, 1, 1, 1))[:largest]
    cycled = f", cycled to {largest}" if loaded < largest else ""
    return _host_batch(pool), f"{images} ({loaded} images{cycled})"


def _host_batch(pool):  # numpy -> what the runtime takes
    """The pool is numpy (profile runs without torch). Until the runtime takes numpy (issue 20's
    numpy currency), a torch tensor when torch is installed; drop this once it does."""
    try:
        import torch
    except ModuleNotFoundError:
        return pool
    return torch.from_numpy(pool)


@handle_errors
def profile(
    artifacts: ArtifactsOption = None,
    backend: BackendOption = BackendName.auto,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    ov_device: OvDeviceOption = None,
    ov_hint: OvHintOption = None,
    batch_sizes: Annotated[
        str, typer.Option(help="Batch sizes to time, comma-separated.", rich_help_panel=WORK)
    ] = "1,8,32",
    images: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder of real images, preprocessed per the manifest (cycled to fill the largest batch).",
            rich_help_panel=WORK,
        ),
        INPUT,
    ] = None,
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic",
            help="Random normal images of the manifest's size (the default).",
            rich_help_panel=WORK,
        ),
    ] = False,
    threshold: Annotated[
        Optional[float], typer.Option(help="Exit threshold (default: the manifest's).", rich_help_panel=WORK)
    ] = None,
    exit_rate: Annotated[
        Optional[float],
        typer.Option(
            help="Instead of --threshold: the fraction of the images that must exit at stage 1 (threshold = that confidence quantile).",
            rich_help_panel=WORK,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic images.", rich_help_panel=WORK)] = 0,
    warmup: Annotated[
        int, typer.Option(min=0, help="Warm-up rounds per batch size.", rich_help_panel=TIMING)
    ] = 5,
    iters: Annotated[
        int, typer.Option(min=1, help="Timed rounds per batch size.", rich_help_panel=TIMING)
    ] = 20,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="Also time baseline.onnx (export --baseline) and report the speedup.",
            rich_help_panel=TIMING,
        ),
    ] = False,
    json_file: Annotated[
        Optional[Path],
        typer.Option(
            "--json", help="Write every number and the environment to FILE.", rich_help_panel=OUTPUT
        ),
        OUTPUT_FILE,
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            help="Write a PNG: latency per batch size and the stage breakdown.", rich_help_panel=OUTPUT
        ),
        OUTPUT_FILE,
    ] = None,
) -> None:
    """Time stage 1, gate, stage 2 and end to end per batch size; overhead, speedup, GFLOPs, power."""

    from sacvit_deploy.model.flops import FlopsReport
    from sacvit_deploy.runtime.loader import default_artifacts, open_pipeline
    from sacvit_deploy.runtime.plotting import plot_profile, require_matplotlib
    from sacvit_deploy.runtime.profiling import (
        ProfileSettings,
        build_report,
        environment,
        format_report,
        run_profile,
    )

    if plot is not None:
        require_matplotlib()
    if images is not None and synthetic:
        raise SacvitError("--images and --synthetic exclude each other; give one")
    if threshold is not None and exit_rate is not None:
        raise SacvitError("--threshold and --exit-rate exclude each other; give one")
    if threshold is not None and not math.isfinite(threshold):
        raise SacvitError(f"--threshold {threshold}: give a finite number (0: everything exits at stage 1)")
    if exit_rate is not None and not 0.0 <= exit_rate <= 1.0:
        raise SacvitError(f"--exit-rate {exit_rate:g}: give a fraction in [0, 1], e.g. 0.77")
    sizes = parse_batch_sizes(batch_sizes)
    folder = artifacts if artifacts is not None else default_artifacts()
    for option, path in (("--json", json_file), ("--plot", plot)):
        if path is not None:
            check_output(path, option, [], folder)

    ov = openvino_options(backend, ov_device, ov_hint)
    opened = open_pipeline(
        artifacts, backend=backend.value, device=device.value if device else None, threads=threads, **ov
    )
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
    base_runner = (
        opened.baseline_runner(threads=threads, **{k: v for k, v in ov.items() if k == "hint"})
        if baseline
        else None
    )
    note(f"backend: {safe(opened.choice.describe())}")

    jetson = Jetson()
    jetson_info, jetson_note = jetson.probe()
    note(jetson_note)
    sampler = jetson if jetson_info is not None and jetson_info.tegrastats else None

    pool, source = _pool(images, synthetic, manifest.preprocess, max(sizes), seed)
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
    with opened.pipeline as pipe, progress_bar() as bar:
        if base_runner is not None:
            base_runner.activate()
        try:
            advance = bar.task("timing", total=len(sizes) * (warmup + iters))
            split, results = run_profile(
                pipe, pool, settings, base_runner, sampler, log=note, advance=advance
            )
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
    for line in lines:
        out.print(printable(line), markup=False, highlight=False)
    if json_file is not None:
        write_json(json_file, report)
        note(f"profile JSON: {safe(json_file)}")
    if plot is not None:
        plot_profile(report, plot)
        note(f"plot: {safe(plot)}")
