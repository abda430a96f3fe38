"""Runners as the comparator's named runners, and the comparison loop every parity check shares.

:func:`sacvit_deploy.core.compare.compare` works on numpy; this adapts :class:`Runner` objects
(ONNX Runtime, TensorRT, the eager model) to it, padding or chunking each call to what the runner
accepts, and runs every image set through it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from sacvit_deploy.backends.arrays import as_host_batch, to_host
from sacvit_deploy.backends.base import Runner
from sacvit_deploy.core.compare import EXACT, Criteria, NamedRunner, ParityRow, compare
from sacvit_deploy.runtime.pipeline import run_any_batch


def _stage_fn(runner: Runner):
    def run(feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out = run_any_batch(runner, {k: np.ascontiguousarray(v) for k, v in feed.items()})
        host = {k: to_host(v) for k, v in out.items()}
        return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in host.items()}

    return run


def named(name: str, runners: Mapping[str, Runner]) -> NamedRunner:
    return NamedRunner(name, {role: _stage_fn(r) for role, r in runners.items()})


def compare_runners(
    reference: Tuple[str, Mapping[str, Runner]],
    candidate: Tuple[str, Mapping[str, Runner]],
    image_sets: Mapping[str, Any],
    threshold: float,
    criteria: Criteria = EXACT,
) -> List[ParityRow]:
    """Activate both sides' runners, compare them on every image set, deactivate them again."""
    rows: List[ParityRow] = []
    with contextlib.ExitStack() as stack:
        for r in (*reference[1].values(), *candidate[1].values()):
            stack.enter_context(r)
        ref, cand = named(*reference), named(*candidate)
        for label, images in image_sets.items():
            rows += compare(ref, cand, as_host_batch(images), threshold, label, criteria)
    return rows
