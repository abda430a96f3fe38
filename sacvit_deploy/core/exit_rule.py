"""The exit rule: the one definition of "this sample exits at stage 1".

A sample exits when its stage-1 confidence (max softmax probability) is at least the threshold:
``confidence >= threshold``, compared in the confidence's own dtype (float32 everywhere). Threshold 0
lets every sample exit; above 1, none does. The model, the pipeline, profiling, threshold
calibration, training and the benchmarks all ask this module; the Triton BLS model keeps a copy (it
runs inside Triton without this package) that a test holds against this one.

Works on numpy arrays and torch tensors alike (duck-typed: nothing here imports torch), and
broadcasts, so a (T, 1) column of thresholds against (N,) confidences gives a (T, N) exit table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sacvit_deploy.core.errors import SacvitError


def exit_mask(confidence: Any, threshold: Any) -> Any:
    """True where a sample exits at stage 1: ``confidence >= threshold`` (arrays or tensors)."""
    return confidence >= threshold


def check_threshold(value: Any, where: str = "exit threshold") -> float:
    """A usable threshold: a finite number >= 0 (above 1: nothing exits). NaN would let nothing exit
    silently on some backends and everything on others, so it is refused."""
    try:
        th = float(value)
    except (TypeError, ValueError):
        raise SacvitError(f"{where}: {value!r} is not a number; use a value in [0, 1]") from None
    if isinstance(value, bool) or not math.isfinite(th) or th < 0.0:
        raise SacvitError(f"{where}: {value!r} must be a finite number >= 0 (0: all exit; above 1: none)")
    return th


@dataclass(frozen=True)
class ExitRule:
    """``confidence >= threshold`` for one threshold, with the index helpers the runtime needs."""

    threshold: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))

    def exits(self, confidence: Any) -> Any:
        return exit_mask(confidence, self.threshold)

    def hard_indices(self, confidence: Any) -> Any:
        """Indices of the samples that go on to stage 2 (int64, on the confidence's device)."""
        hard = ~self.exits(confidence)
        if _is_numpy(hard):
            import numpy as np  # already loaded: the array is numpy's

            return np.flatnonzero(hard)
        return hard.nonzero().flatten()

    def exit_rate(self, confidence: Any) -> float:
        n = int(confidence.shape[0]) if hasattr(confidence, "shape") else len(confidence)
        return float(self.exits(confidence).sum()) / n if n else 0.0

    def stage(self, confidence: Any) -> Any:
        """1 where stage 1 answers, 2 where stage 2 does (int64)."""
        e = self.exits(confidence)
        if _is_numpy(e):
            return 2 - e.astype("int64")
        return 2 - e.long()

    def near(self, confidence: Any, margin: float) -> Any:
        """True where the decision depends on rounding: |confidence - threshold| <= margin."""
        return abs(confidence - self.threshold) <= margin


def _is_numpy(a: Any) -> bool:
    # numpy arrays without importing numpy here: the CLI's --help imports this module (via validate)
    return type(a).__module__ == "numpy"
