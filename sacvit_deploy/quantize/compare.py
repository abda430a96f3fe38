"""The int8 graphs against the float ones they came from, both on ONNX Runtime (CPU).

Rows, like export verification's table:

* ``stage1``: max |Δ logit| (and relative to the float logits' standard deviation, so the figure
  means the same for a model with logit std 1 or 10), top-1 agreement, exit-decision agreement at the
  manifest's threshold, target-set agreement (the selected tokens, as sets);
* ``stage2``: both graphs fed the SAME float stage-1 outputs: the error of stage 2 alone;
* ``pipeline@T``: each early-exit pipeline end to end (int8 stage 2 on int8 stage-1 outputs): top-1
  agreement of the final answers, exit-decision agreement, and max |Δ logit| over the samples both
  answered from the same stage;
* ``baseline``: when both folders have one.

Gate (:data:`DEFAULT_MIN_AGREEMENT`): every row's top-1 agreement and the pipeline's exit agreement
must reach it. Target-set agreement is reported, not gated: a token swapped inside the window
changes stage 2's input, not necessarily its answer, and the pipeline row measures the answer.
With labels, the accuracy of both pipelines, each stage's, and each exit rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sacvit_deploy.core.exit_rule import exit_mask
from sacvit_deploy.core.graph_io import STAGE2_INPUTS

DEFAULT_MIN_AGREEMENT = 0.95


@dataclass
class AgreementRow:
    check: str
    samples: int
    max_abs_diff: float
    relative_diff: float  # max |Δ logit| / std of the float logits
    top1_agreement: float
    exit_agreement: float | None = None
    selection_agreement: float | None = None
    passed: bool = True


@dataclass
class _Outputs:
    """Everything the rows and the accuracy need, concatenated over batches."""

    logits1: list[torch.Tensor]
    confidence: list[torch.Tensor]
    target_index: list[torch.Tensor]
    logits2_float_feed: list[torch.Tensor]  # stage 2 on the float stage-1 outputs
    logits2_own_feed: list[torch.Tensor]  # stage 2 on this folder's own stage-1 outputs
    baseline: list[torch.Tensor]

    @classmethod
    def empty(cls) -> _Outputs:
        return cls([], [], [], [], [], [])

    def cat(self, name: str) -> torch.Tensor:
        return torch.cat(getattr(self, name)) if getattr(self, name) else torch.empty(0)


def _runners(folder: Path, manifest: Any, roles: Iterable[str], threads: int | None) -> dict[str, Any]:
    from sacvit_deploy.backends.factory import BackendChoice, make_runner

    choice = BackendChoice("onnxruntime", "cpu", "cpu", "int8 vs float comparison")
    return {role: make_runner(folder, manifest, role, choice, threads=threads) for role in roles}


def _rel(diff: float, ref: torch.Tensor) -> float:
    std = float(ref.float().std()) if ref.numel() > 1 else 0.0
    return diff / std if std > 0 else float("inf") if diff > 0 else 0.0


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).double().mean()) if a.numel() else 1.0


def compare_folders(
    float_dir: Path,
    float_manifest: Any,
    int8_dir: Path,
    int8_manifest: Any,
    batches: Iterable[tuple[torch.Tensor, Sequence[int] | None]],
    source: str,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    threads: int | None = None,
) -> dict[str, Any]:
    """The agreement report of ``int8_dir`` vs ``float_dir`` on ``batches`` of (images, labels or None)."""
    from sacvit_deploy.backends.arrays import as_host_batch, to_host
    from sacvit_deploy.runtime.pipeline import run_any_batch as _run_numpy

    def run_any_batch(runner: Any, feed: dict[str, Any]) -> dict[str, torch.Tensor]:
        # Runners take and return numpy; this report computes with torch.
        out = _run_numpy(runner, {k: as_host_batch(v) for k, v in feed.items()})
        return {k: torch.from_numpy(to_host(v)) for k, v in out.items()}

    roles = ["stage1", "stage2"]
    with_baseline = "baseline" in float_manifest.graphs and "baseline" in int8_manifest.graphs
    if with_baseline:
        roles.append("baseline")
    f_run = _runners(float_dir, float_manifest, roles, threads)
    q_run = _runners(int8_dir, int8_manifest, roles, threads)
    f_out, q_out = _Outputs.empty(), _Outputs.empty()
    labels: list[int] = []
    labelled = True
    try:
        for r in [*f_run.values(), *q_run.values()]:
            r.activate()
        for images, ys in batches:
            if ys is None:
                labelled = False
            else:
                labels += list(ys)
            f1 = run_any_batch(f_run["stage1"], {"image": images})
            q1 = run_any_batch(q_run["stage1"], {"image": images})
            float_feed = {"image": images, **{k: f1[k] for k in STAGE2_INPUTS[1:]}}
            own_feed = {"image": images, **{k: q1[k] for k in STAGE2_INPUTS[1:]}}
            f2 = run_any_batch(f_run["stage2"], float_feed)["logits"]
            for out, s1, r in ((f_out, f1, f_run), (q_out, q1, q_run)):
                out.logits1.append(s1["logits"].float().cpu())
                out.confidence.append(s1["confidence"].float().cpu())
                out.target_index.append(s1["target_index"].long().cpu())
                if with_baseline:
                    out.baseline.append(
                        run_any_batch(r["baseline"], {"image": images})["logits"].float().cpu()
                    )
            f_out.logits2_float_feed.append(f2.float().cpu())
            f_out.logits2_own_feed.append(f2.float().cpu())
            q_out.logits2_float_feed.append(
                run_any_batch(q_run["stage2"], float_feed)["logits"].float().cpu()
            )
            q_out.logits2_own_feed.append(run_any_batch(q_run["stage2"], own_feed)["logits"].float().cpu())
    finally:
        for r in [*f_run.values(), *q_run.values()]:
            r.deactivate()
    threshold = float(int8_manifest.exit_threshold)
    rows = _rows(f_out, q_out, threshold, with_baseline)
    for row in rows:
        row.passed = row.top1_agreement >= min_agreement and (
            row.exit_agreement is None or row.exit_agreement >= min_agreement
        )
    n = int(f_out.cat("confidence").numel())
    report: dict[str, Any] = {
        "images": source,
        "samples": n,
        "threshold": threshold,
        "min_agreement": min_agreement,
        "rows": [asdict(r) for r in rows],
        "passed": all(r.passed for r in rows),
    }
    if labelled and labels and len(labels) == n:
        report["accuracy"] = _accuracy(f_out, q_out, torch.as_tensor(labels), threshold)
    return report


def _final(out: _Outputs, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The early-exit answer per sample (confidence >= threshold: stage 1) and whether it exited."""
    exited = exit_mask(out.cat("confidence"), threshold)
    logits = torch.where(exited[:, None], out.cat("logits1"), out.cat("logits2_own_feed"))
    return logits, exited


def _rows(f: _Outputs, q: _Outputs, threshold: float, with_baseline: bool) -> list[AgreementRow]:
    n = int(f.cat("confidence").numel())
    rows = []
    l1f, l1q = f.cat("logits1"), q.cat("logits1")
    d1 = float((l1f - l1q).abs().max()) if n else 0.0
    sel = (f.cat("target_index").sort(dim=1).values == q.cat("target_index").sort(dim=1).values).all(dim=1)
    rows.append(
        AgreementRow(
            "stage1",
            n,
            d1,
            _rel(d1, l1f),
            _agree(l1f.argmax(-1), l1q.argmax(-1)),
            exit_agreement=_agree(
                exit_mask(f.cat("confidence"), threshold), exit_mask(q.cat("confidence"), threshold)
            ),
            selection_agreement=_agree(sel, torch.ones_like(sel)),
        )
    )
    l2f, l2q = f.cat("logits2_float_feed"), q.cat("logits2_float_feed")
    d2 = float((l2f - l2q).abs().max()) if n else 0.0
    rows.append(AgreementRow("stage2", n, d2, _rel(d2, l2f), _agree(l2f.argmax(-1), l2q.argmax(-1))))
    pf, ef = _final(f, threshold)
    pq, eq = _final(q, threshold)
    # Where the exit decisions differ the two answers come from different stages: the logit
    # difference is measured where both pipelines answered from the same stage.
    same = ef == eq
    dp = float((pf[same] - pq[same]).abs().max()) if bool(same.any()) else 0.0
    rows.append(
        AgreementRow(
            f"pipeline@{threshold:.3f}",
            n,
            dp,
            _rel(dp, pf),
            _agree(pf.argmax(-1), pq.argmax(-1)),
            exit_agreement=_agree(ef, eq),
        )
    )
    if with_baseline:
        bf, bq = f.cat("baseline"), q.cat("baseline")
        db = float((bf - bq).abs().max()) if n else 0.0
        rows.append(AgreementRow("baseline", n, db, _rel(db, bf), _agree(bf.argmax(-1), bq.argmax(-1))))
    return rows


def _accuracy(f: _Outputs, q: _Outputs, labels: torch.Tensor, threshold: float) -> dict[str, Any]:
    result: dict[str, Any] = {"threshold": threshold, "images": int(labels.numel())}
    for name, out in (("float", f), ("int8", q)):
        logits, exited = _final(out, threshold)
        entry = {
            "early_exit": _agree(logits.argmax(-1), labels),
            "exit_rate": float(exited.double().mean()) if exited.numel() else 0.0,
            "stage1": _agree(out.cat("logits1").argmax(-1), labels),
            "stage2": _agree(out.cat("logits2_own_feed").argmax(-1), labels),
        }
        if out.baseline:
            entry["baseline"] = _agree(out.cat("baseline").argmax(-1), labels)
        result[name] = entry
    result["early_exit_delta_points"] = 100 * (result["int8"]["early_exit"] - result["float"]["early_exit"])
    return result
