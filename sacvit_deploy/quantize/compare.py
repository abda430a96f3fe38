"""The int8 graphs against the float ones they came from, both on ONNX Runtime (CPU): the one
comparator's folder-vs-folder mode.

The rows are :func:`sacvit_deploy.core.compare.compare`'s (stage 1, stage 2 fed the float stage-1
outputs, the early exit at the manifest's threshold and at a threshold splitting the images, the
baseline when both folders have one), judged by the reduced-precision criteria
(:func:`sacvit_deploy.core.compare.reduced_precision`): numbers reported (``relative_diff`` is
max |Δ| over the float values' standard deviation, so it means the same for logit std 1 or 10),
top-1 and exit decisions gated at ``min_agreement`` on samples not within a hair of their boundary.
Target-set agreement is reported, not gated: a token swapped inside the window changes stage 2's
input, not necessarily its answer, and the pipeline rows measure the answer.
With labels, the accuracy of both sides: early exit, exit rate, each stage, the baseline.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from sacvit_deploy.backends.arrays import as_host_batch
from sacvit_deploy.core.compare import Answers, compare_detailed, reduced_precision

DEFAULT_MIN_AGREEMENT = 0.95


def _runners(folder: Path, manifest: Any, roles: Iterable[str], threads: Optional[int]) -> Dict[str, Any]:
    from sacvit_deploy.backends.factory import cpu_reference, make_runner

    choice = cpu_reference("int8 vs float comparison")
    return {role: make_runner(folder, manifest, role, choice, threads=threads) for role in roles}


def compare_folders(
    float_dir: Path,
    float_manifest: Any,
    int8_dir: Path,
    int8_manifest: Any,
    batches: Iterable[Tuple[Any, Optional[Sequence[int]]]],
    source: str,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    threads: Optional[int] = None,
) -> Dict[str, Any]:
    """The agreement report of ``int8_dir`` vs ``float_dir`` on ``batches`` of (images, labels or None)."""
    from sacvit_deploy.runtime.parity import named

    chunks, labels, labelled = [], [], True
    for images, ys in batches:
        chunks.append(np.asarray(as_host_batch(images), dtype=np.float32))
        if ys is None:
            labelled = False
        else:
            labels += [int(y) for y in ys]
    images = np.concatenate(chunks) if chunks else np.zeros((0, 3, 1, 1), np.float32)
    roles = ["stage1", "stage2"]
    if "baseline" in float_manifest.graphs and "baseline" in int8_manifest.graphs:
        roles.append("baseline")
    threshold = float(int8_manifest.exit_threshold)
    f_run = _runners(float_dir, float_manifest, roles, threads)
    q_run = _runners(int8_dir, int8_manifest, roles, threads)
    with contextlib.ExitStack() as stack:
        for r in (*f_run.values(), *q_run.values()):
            stack.enter_context(r)
        result = compare_detailed(
            named("float", f_run),
            named("int8", q_run),
            images,
            threshold,
            source,
            reduced_precision(min_agreement),
        )
    report: Dict[str, Any] = {
        "images": source,
        "samples": int(images.shape[0]),
        "threshold": threshold,
        "min_agreement": min_agreement,
        "rows": [r.to_dict() for r in result.rows],
        "passed": all(r.passed for r in result.rows),
    }
    if labelled and labels and len(labels) == images.shape[0]:
        truth = np.asarray(labels, dtype=np.int64)
        report["accuracy"] = _accuracy(result.reference, result.candidate, truth, threshold)
    return report


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean()) if a.size else 1.0


def _accuracy(f: Answers, q: Answers, labels: np.ndarray, threshold: float) -> Dict[str, Any]:
    result: Dict[str, Any] = {"threshold": threshold, "images": int(labels.size)}
    for name, side in (("float", f), ("int8", q)):
        entry = {
            "early_exit": _agree(side.final.argmax(-1), labels),
            "exit_rate": float((side.stage == 1).mean()) if side.stage.size else 0.0,
            "stage1": _agree(side.logits1.argmax(-1), labels),
            "stage2": _agree(side.logits2.argmax(-1), labels),  # on the float stage-1 outputs
        }
        if side.baseline is not None:
            entry["baseline"] = _agree(side.baseline.argmax(-1), labels)
        result[name] = entry
    result["early_exit_delta_points"] = 100 * (result["int8"]["early_exit"] - result["float"]["early_exit"])
    return result
