"""Runners as the comparator's named runners, and the comparison loop every parity check shares.

:func:`sacvit_deploy.core.compare.compare` works on numpy; this adapts :class:`Runner` objects
(ONNX Runtime, TensorRT, the eager model) to it, padding or chunking each call to what the runner
accepts, and runs every image set through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numpy as np
import torch

from sacvit_deploy.backends.base import Runner
from sacvit_deploy.core.compare import EXACT, Criteria, NamedRunner, ParityRow, compare
from sacvit_deploy.runtime.pipeline import run_any_batch


def _stage_fn(runner: Runner):
    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(runner.device) for k, v in feed.items()}
        out = run_any_batch(runner, tensors)
        return {
            k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
            for k, v in out.items()
        }

    return run


def named(name: str, runners: Mapping[str, Runner]) -> NamedRunner:
    return NamedRunner(name, {role: _stage_fn(r) for role, r in runners.items()})


def compare_runners(
    reference: tuple[str, Mapping[str, Runner]],
    candidate: tuple[str, Mapping[str, Runner]],
    image_sets: Mapping[str, torch.Tensor],
    threshold: float,
    criteria: Criteria = EXACT,
) -> list[ParityRow]:
    """Activate both sides' runners, compare them on every image set, deactivate them again."""
    rows: list[ParityRow] = []
    with contextlib.ExitStack() as stack:
        for r in (*reference[1].values(), *candidate[1].values()):
            stack.enter_context(r)
        ref, cand = named(*reference), named(*candidate)
        for label, images in image_sets.items():
            rows += compare(ref, cand, images.detach().cpu().numpy(), threshold, label, criteria)
    return rows
