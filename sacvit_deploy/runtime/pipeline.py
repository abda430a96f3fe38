"""EarlyExitPipeline: stage 1 on the batch, per-sample exit gate, stage 2 on the hard samples only.

1. Stage 1 runs on the whole batch.
2. The gate (confidence >= threshold) is evaluated per sample on the host: the B confidences are the
   one thing brought back from the device (``to_host``), the hard indices are computed with
   core/exit_rule.
3. The hard samples are compacted into a contiguous batch (``take_rows`` of the images on the host and
   of the stage-1 outputs where they live: on the device for a GPU runner, device-to-device copies),
   padded up to a bucket size when the stage-2 runner prefers fixed shapes, and split into chunks
   when more than the runner's maximum batch.
4. Stage 2 runs on them only; its logits are brought to the host and scattered back in input order.

Every batch shape is ordinary: all samples exit (stage 2 is skipped), none exits, batch of 1, a last
partial batch. The result equals ``SACViT.forward(image, threshold)`` sample by sample.

The currency is numpy (see backends/arrays.py): nothing here imports torch or a GPU library.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from sacvit_deploy.backends.arrays import (
    concat_rows,
    is_device_array,
    pad_rows,
    slice_rows,
    take_rows,
    to_host,
)
from sacvit_deploy.backends.base import Runner
from sacvit_deploy.core.compare import mixed_threshold  # noqa: F401  (re-exported: the one definition)
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.exit_rule import ExitRule, check_threshold, exit_mask
from sacvit_deploy.core.graph_io import STAGE2_INPUTS

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class PipelineOutput:
    logits: np.ndarray  # (B, C) float32 final logits: stage 1's for exited samples, stage 2's for the rest
    stage: np.ndarray  # (B,) int64, 1 or 2
    confidence: np.ndarray  # (B,) float32 stage-1 confidence
    timings: Dict[str, float] = field(default_factory=dict)  # seconds, filled when timing is on

    @property
    def exit_rate(self) -> float:
        n = self.stage.size
        return float(np.count_nonzero(self.stage == 1)) / n if n else 0.0


_STAGE2_FROM_STAGE1 = STAGE2_INPUTS[1:]


class EarlyExitPipeline:
    """Drives a stage-1 and a stage-2 runner (any backend) with the early-exit rule."""

    def __init__(
        self,
        stage1: Runner,
        stage2: Runner,
        threshold: float,
        buckets: Optional[Sequence[int]] = None,
    ) -> None:
        self.stage1 = stage1
        self.stage2 = stage2
        self.threshold = float(threshold)
        # Fixed-shape backends (a fixed-batch export, ORT's TensorRT provider that rebuilds per shape)
        # get padded batches; dynamic ones run the exact count.
        fixed = stage2.fixed_batch
        if fixed is not None:
            self.buckets: Optional[Tuple[int, ...]] = (fixed,)
        elif buckets:
            self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        else:
            self.buckets = None
        self._buckets1 = _stage1_buckets(stage1)
        self._checked: Optional[float] = None  # the last threshold that passed check_threshold

    # ---- lifecycle -----------------------------------------------------------------------------
    def activate(self) -> EarlyExitPipeline:
        self.stage1.activate()
        self.stage2.activate()
        return self

    def deactivate(self) -> None:
        self.stage1.deactivate()
        self.stage2.deactivate()

    def __enter__(self) -> EarlyExitPipeline:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @property
    def device(self) -> str:
        return self.stage1.device

    @property
    def takes_device_arrays(self) -> bool:
        """Whether a device-array batch runs where it lies (both stages on TensorRT, which reads device
        memory; the pipeline compacts its rows on the device); other runners get it copied to the host."""
        return self.stage1.backend == "tensorrt" and self.stage2.backend == "tensorrt"

    # ---- running -------------------------------------------------------------------------------
    def run(self, images: Any, threshold: Optional[float] = None, timing: bool = False) -> PipelineOutput:
        """images: (B, 3, R, R) float32 numpy (or a device array, see :attr:`takes_device_arrays`),
        normalised. Returns logits, answering stage, confidence (numpy arrays on the host)."""
        th = self.threshold if threshold is None else float(threshold)
        if not isinstance(images, np.ndarray) and not (is_device_array(images) and self.takes_device_arrays):
            images = to_host(images)
        n = images.shape[0] if len(images.shape) else 0
        if n == 0:
            raise SacvitError("empty batch: pass at least one image")
        if not timing:
            return self._run(images, n, th)

        now = time.perf_counter
        t0 = now()
        out1 = run_batched(self.stage1, {"image": images}, n, self._buckets1)
        confidence = to_host(out1["confidence"])  # synchronises the device: the stage-1 time
        t1 = now()
        hard = hard_indices(confidence, th)
        logits = _host_copy(out1["logits"])
        stage: np.ndarray = np.ones(n, dtype=np.int64)
        t2 = now()
        if hard.size:
            feed = stage2_feed(images, out1, hard)
            t3 = now()
            logits2 = to_host(run_batched(self.stage2, feed, hard.size, self.buckets)["logits"])
            t4 = now()
            logits[hard] = logits2
            stage[hard] = 2
        else:
            t3 = t4 = t2
        t5 = now()
        times = {
            "stage1": t1 - t0,
            "gate": (t2 - t1) + (t3 - t2) + (t5 - t4),  # gate + compaction + scatter
            "stage2": t4 - t3,
            "total": t5 - t0,
        }
        return PipelineOutput(logits, stage, confidence, times)

    def _run(self, images: np.ndarray, n: int, th: float) -> PipelineOutput:
        """``run`` without timing: the hot path, kept short (issue 20: <= 30 us over two raw runs)."""
        out1 = run_batched(self.stage1, {"image": images}, n, self._buckets1)
        confidence = to_host(out1["confidence"])
        if th != self._checked:  # validated once per threshold value (NaN never equals: always checked)
            self._checked = check_threshold(th)
        # numpy compares a float32 array with a Python float in float32, as the model does.
        hard = np.flatnonzero(~exit_mask(confidence, th))
        logits = _host_copy(out1["logits"])
        stage: np.ndarray = np.ones(n, dtype=np.int64)
        if hard.size:
            logits2 = run_batched(self.stage2, stage2_feed(images, out1, hard), hard.size, self.buckets)[
                "logits"
            ]
            logits[hard] = to_host(logits2)
            stage[hard] = 2
        return PipelineOutput(logits, stage, confidence)


# ---- gate and compaction helpers ---------------------------------------------------------------------


def hard_indices(confidence: Any, threshold: float) -> np.ndarray:
    """Indices (int64, host) of the samples that do NOT exit: confidence < threshold (NaN included)."""
    return ExitRule(threshold).hard_indices(np.asarray(to_host(confidence)).reshape(-1))


def _host_copy(a: Any) -> np.ndarray:
    """A writable host copy (numpy) or the device's fresh host array."""
    return a.copy() if isinstance(a, np.ndarray) else to_host(a)


def stage2_feed(images: Any, out1: Dict[str, Any], hard: np.ndarray) -> Dict[str, Any]:
    """Stage 2's inputs for the hard samples: their images (host) and stage-1 outputs (where they
    live: host or device), compacted into contiguous batches."""
    if hard.size == images.shape[0] and hard[-1] == hard.size - 1:  # every sample is hard: no copies
        feed = {"image": images}
        for name in _STAGE2_FROM_STAGE1:
            feed[name] = out1[name]
        return feed
    feed = {"image": take_rows(images, hard)}
    for name in _STAGE2_FROM_STAGE1:
        feed[name] = take_rows(out1[name], hard)
    return feed


def hard_samples(images: Any, out1: Dict[str, Any], threshold: float) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The samples that do not exit under ``threshold`` and stage 2's compacted feed for them."""
    hard = hard_indices(out1["confidence"], threshold)
    return hard, stage2_feed(images, out1, hard)


def _stage1_buckets(runner: Runner) -> Optional[Tuple[int, ...]]:
    fixed = runner.fixed_batch
    return (fixed,) if fixed is not None else None


def run_any_batch(runner: Runner, feed: Dict[str, Any]) -> Dict[str, Any]:
    """Run a feed of any batch size: padded or chunked to what the runner accepts."""
    n = next(iter(feed.values())).shape[0]
    return run_batched(runner, feed, n, _stage1_buckets(runner))


def bucket_for(n: int, buckets: Optional[Sequence[int]]) -> int:
    """The smallest bucket that holds n samples (n itself without buckets or beyond the largest)."""
    if not buckets:
        return n
    for b in buckets:
        if b >= n:
            return b
    return n


def run_batched(
    runner: Runner, feed: Dict[str, Any], n: int, buckets: Optional[Sequence[int]]
) -> Dict[str, Any]:
    """Run n samples, in chunks of the runner's maximum batch, each padded up to its bucket."""
    limit = runner.max_batch
    if limit is None or n <= limit:
        return _run_padded(runner, feed, n, buckets)
    parts = []
    for start in range(0, n, limit):
        m = min(limit, n - start)
        chunk = {k: slice_rows(v, start, start + m) for k, v in feed.items()}
        parts.append(_run_padded(runner, chunk, m, buckets))
    return {k: concat_rows([p[k] for p in parts]) for k in parts[0]}


def _run_padded(
    runner: Runner, feed: Dict[str, Any], n: int, buckets: Optional[Sequence[int]]
) -> Dict[str, Any]:
    size = bucket_for(n, buckets)
    if size == n:
        return runner.infer(feed)
    # Pad by repeating the last sample: real data, so no NaN/inf paths; the extra rows are dropped.
    out = runner.infer({k: pad_rows(v, size) for k, v in feed.items()})
    return {k: slice_rows(v, 0, n) for k, v in out.items()}
