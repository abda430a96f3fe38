"""EarlyExitPipeline: stage 1 on the batch, per-sample exit gate, stage 2 on the hard samples only.

1. Stage 1 runs on the whole batch.
2. The gate (confidence >= threshold) is evaluated per sample, on the device.
3. The hard samples are compacted into a contiguous batch (``index_select`` of the stage-1 outputs and
   the images), padded up to a bucket size when the stage-2 runner prefers fixed shapes, and split
   into chunks when more than the runner's maximum batch.
4. Stage 2 runs on them only; its logits are scattered back in input order.

Every batch shape is ordinary: all samples exit (stage 2 is skipped), none exits, batch of 1, a last
partial batch. The result equals ``SACViT.forward(image, threshold)`` sample by sample.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sacvit_deploy.backends.base import Runner
from sacvit_deploy.core.compare import mixed_threshold  # noqa: F401  (re-exported: the one definition)
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.exit_rule import ExitRule
from sacvit_deploy.model.sacvit import STAGE2_INPUTS

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class PipelineOutput:
    logits: torch.Tensor  # (B, C) final logits: stage 1's for exited samples, stage 2's for the rest
    stage: torch.Tensor  # (B,) int64, 1 or 2
    confidence: torch.Tensor  # (B,) stage-1 confidence
    timings: dict[str, float] = field(default_factory=dict)  # seconds, filled when timing is on

    @property
    def exit_rate(self) -> float:
        n = self.stage.numel()
        return float((self.stage == 1).sum()) / n if n else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EarlyExitPipeline:
    """Drives a stage-1 and a stage-2 runner (any backend) with the early-exit rule."""

    def __init__(
        self,
        stage1: Runner,
        stage2: Runner,
        threshold: float,
        buckets: Sequence[int] | None = None,
    ) -> None:
        self.stage1 = stage1
        self.stage2 = stage2
        self.threshold = float(threshold)
        # Fixed-shape backends (a fixed-batch export, ORT's TensorRT provider that rebuilds per shape)
        # get padded batches; dynamic ones run the exact count.
        fixed = stage2.fixed_batch
        if fixed is not None:
            self.buckets: tuple[int, ...] | None = (fixed,)
        elif buckets:
            self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        else:
            self.buckets = None

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
    def device(self) -> torch.device:
        return self.stage1.device

    # ---- running -------------------------------------------------------------------------------
    def run(
        self, images: torch.Tensor, threshold: float | None = None, timing: bool = False
    ) -> PipelineOutput:
        """images: (B, 3, R, R) float32, normalised. Returns logits, answering stage, confidence."""
        th = self.threshold if threshold is None else float(threshold)
        device = self.device
        times: dict[str, float] = {}
        images = images.to(device, non_blocking=True)
        n = images.shape[0]
        if n == 0:
            raise SacvitError("empty batch: pass at least one image")

        t0 = _now(timing, device)
        out1 = run_batched(self.stage1, {"image": images}, n, _stage1_buckets(self.stage1))
        t1 = _now(timing, device)

        confidence = out1["confidence"]
        hard = _hard_indices(confidence, th)  # the one host sync: stage 2's batch size
        n_hard = int(hard.numel())
        logits = out1["logits"].clone()
        stage = torch.ones(n, dtype=torch.int64, device=logits.device)
        t2 = _now(timing, device)

        if n_hard:
            feed = stage2_feed(images, out1, hard)
            t3 = _now(timing, device)
            logits2 = run_batched(self.stage2, feed, n_hard, self.buckets)["logits"]
            t4 = _now(timing, device)
            _put_rows(logits, hard, logits2.to(logits.dtype))
            _put_rows(stage, hard, 2)
        else:
            t3 = t4 = t2
        t5 = _now(timing, device)

        if timing:
            times = {
                "stage1": t1 - t0,
                "gate": (t2 - t1) + (t3 - t2) + (t5 - t4),  # gate + compaction + scatter
                "stage2": t4 - t3,
                "total": t5 - t0,
            }
        return PipelineOutput(logits, stage, confidence, times)


# ---- gate and compaction helpers ---------------------------------------------------------------------
# On the CPU these go through numpy: torch's intra-op thread pool makes copies this small up to 100x
# slower when the cores are busy with the backend's own threads (measured: 88 ms vs 0.6 ms for a
# batch-32 compaction on 2 loaded cores). numpy views share memory with the tensors: no extra copies.


def _hard_indices(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the samples that do NOT exit (confidence < threshold), int64 on the confidence's device."""
    rule = ExitRule(threshold)
    if confidence.device.type == "cpu":
        # numpy compares a float32 array with a Python float in float32, as torch does.
        return torch.from_numpy(rule.hard_indices(confidence.numpy()))
    return rule.hard_indices(confidence)


def stage2_feed(
    images: torch.Tensor, out1: dict[str, torch.Tensor], hard: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Stage 2's inputs for the hard samples: their images and stage-1 outputs, compacted."""
    feed = {"image": take_rows(images, hard)}
    for name in STAGE2_INPUTS[1:]:
        feed[name] = take_rows(out1[name], hard)
    return feed


def hard_samples(
    images: torch.Tensor, out1: dict[str, torch.Tensor], threshold: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The samples that do not exit under ``threshold`` and stage 2's compacted feed for them."""
    hard = _hard_indices(out1["confidence"], threshold)
    return hard, stage2_feed(images, out1, hard)


def take_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t[index] along the batch axis."""
    if t.device.type == "cpu":
        return torch.from_numpy(np.take(t.detach().numpy(), index.cpu().numpy(), axis=0))
    return t.index_select(0, index.to(t.device))


def _put_rows(t: torch.Tensor, index: torch.Tensor, values: torch.Tensor | int) -> None:
    """t[index] = values along the batch axis, in place."""
    if t.device.type == "cpu":
        t.numpy()[index.cpu().numpy()] = values.cpu().numpy() if isinstance(values, torch.Tensor) else values
    elif isinstance(values, torch.Tensor):
        t.index_copy_(0, index.to(t.device), values.to(t.device))
    else:
        t.index_fill_(0, index.to(t.device), values)


def _stage1_buckets(runner: Runner) -> tuple[int, ...] | None:
    fixed = runner.fixed_batch
    return (fixed,) if fixed is not None else None


def run_any_batch(runner: Runner, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run a feed of any batch size: padded or chunked to what the runner accepts."""
    n = next(iter(feed.values())).shape[0]
    return run_batched(runner, feed, n, _stage1_buckets(runner))


def _now(enabled: bool, device: torch.device) -> float:
    if not enabled:
        return 0.0
    _sync(device)
    return time.perf_counter()


def bucket_for(n: int, buckets: Sequence[int] | None) -> int:
    """The smallest bucket that holds n samples (n itself without buckets or beyond the largest)."""
    if not buckets:
        return n
    for b in buckets:
        if b >= n:
            return b
    return n


def run_batched(
    runner: Runner, feed: dict[str, torch.Tensor], n: int, buckets: Sequence[int] | None
) -> dict[str, torch.Tensor]:
    """Run n samples, in chunks of the runner's maximum batch, each padded up to its bucket."""
    limit = runner.max_batch
    if limit is None or n <= limit:
        return _run_padded(runner, feed, n, buckets)
    parts = []
    for start in range(0, n, limit):
        m = min(limit, n - start)
        parts.append(_run_padded(runner, {k: v[start : start + m] for k, v in feed.items()}, m, buckets))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _run_padded(
    runner: Runner, feed: dict[str, torch.Tensor], n: int, buckets: Sequence[int] | None
) -> dict[str, torch.Tensor]:
    size = bucket_for(n, buckets)
    if size != n:
        # Pad by repeating the last sample: real data, so no NaN/inf paths; the extra rows are dropped.
        feed = {k: _pad_rows(v, size) for k, v in feed.items()}
    out = runner.infer(feed)
    return {k: v[:n] for k, v in out.items()} if size != n else out


def _pad_rows(t: torch.Tensor, size: int) -> torch.Tensor:
    extra = size - t.shape[0]
    if t.device.type == "cpu":
        a = t.detach().numpy()
        return torch.from_numpy(np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]))
    return torch.cat([t, t[-1:].expand(extra, *t.shape[1:])])
