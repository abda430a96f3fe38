"""Export verification: the ONNX graphs must compute what PyTorch computes.

Run at the end of every export (before anything is published) and printed as a table:

* ``onnx.checker`` (full check, with shape inference) on every graph;
* ONNX Runtime (CPU) vs the PyTorch model on random images (an odd batch size, so the dynamic batch
  axis is exercised) and on real images: max |logit difference|, top-1 agreement, and
  - stage 1: confidence difference and token-selection agreement,
  - stage 2: fed the SAME stage-1 outputs on both sides,
  - the combined early-exit pipeline at the export threshold and at a threshold midway through the batch's confidences
    (a mixed batch): exit-decision agreement;
* the baseline graph, when exported.

Export fails when a graph's fp32 logits differ by more than ``atol`` (1e-4 by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sacvit_deploy.backends.base import Runner
from sacvit_deploy.backends.factory import BackendChoice, make_runner
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.model.sacvit import DeiT, SACViT
from sacvit_deploy.runtime.pipeline import EarlyExitPipeline, mixed_threshold, run_any_batch

DEFAULT_ATOL = 1e-4
RANDOM_BATCH = 5


class VerificationError(SacvitError):
    """The exported graphs do not match PyTorch within tolerance."""


@dataclass
class ParityRow:
    check: str  # stage1 | stage2 | pipeline@T | baseline
    images: str  # random | real
    samples: int
    max_abs_diff: float
    top1_agreement: float
    exit_agreement: float | None = None
    selection_agreement: float | None = None
    gated: bool = True  # does this row decide pass/fail (pipeline rows are informative)
    passed: bool = True


def _top1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def _selection(a: torch.Tensor, b: torch.Tensor) -> float:
    same = (a.long().sort(dim=1).values == b.long().sort(dim=1).values).all(dim=1)
    return float(same.float().mean())


def check_graphs(folder: Path, manifest: Manifest) -> dict[str, str]:
    import onnx

    results = {}
    for role, entry in manifest.graphs.items():
        try:
            onnx.checker.check_model(str(manifest.file_path(folder, entry)), full_check=True)
            results[role] = "ok"
        except Exception as exc:  # the checker raises several exception types
            raise VerificationError(
                f"{entry.file}: onnx.checker failed ({str(exc).splitlines()[0][:160]})"
            ) from None
    return results


@torch.no_grad()
def parity_rows(
    model: SACViT,
    runners: dict[str, Runner],
    images: torch.Tensor,
    label: str,
    threshold: float,
    atol: float,
    baseline: DeiT | None = None,
) -> list[ParityRow]:
    rows: list[ParityRow] = []
    n = images.shape[0]
    ref1 = model.forward_stage1(images)
    out1 = run_any_batch(runners["stage1"], {"image": images})
    d1 = float((out1["logits"] - ref1.logits).abs().max())
    rows.append(
        ParityRow(
            "stage1",
            label,
            n,
            max(d1, float((out1["confidence"] - ref1.confidence).abs().max())),
            _top1(out1["logits"], ref1.logits),
            selection_agreement=_selection(out1["target_index"], ref1.target_index),
        )
    )
    feed = {
        "image": images,
        **{k: getattr(ref1, k) for k in ("target_index", "nontarget_tokens", "target_features")},
    }
    ref2 = model.forward_stage2(**feed)
    out2 = run_any_batch(runners["stage2"], feed)["logits"]
    rows.append(ParityRow("stage2", label, n, float((out2 - ref2).abs().max()), _top1(out2, ref2)))

    pipeline = EarlyExitPipeline(runners["stage1"], runners["stage2"], threshold)
    for th in (threshold, mixed_threshold(ref1.confidence)):
        ref = model(images, th)
        got = pipeline.run(images, th)
        rows.append(
            ParityRow(
                f"pipeline@{th:.3f}",
                label,
                n,
                float((got.logits - ref.logits).abs().max()),
                _top1(got.logits, ref.logits),
                exit_agreement=float((got.stage == ref.stage).float().mean()),
                gated=False,
            )
        )
    if baseline is not None and "baseline" in runners:
        refb = baseline(images)
        outb = run_any_batch(runners["baseline"], {"image": images})["logits"]
        rows.append(ParityRow("baseline", label, n, float((outb - refb).abs().max()), _top1(outb, refb)))
    for row in rows:
        row.passed = row.max_abs_diff <= atol or not row.gated
    return rows


def verify_export(
    folder: Path,
    manifest: Manifest,
    model: SACViT,
    real_images: torch.Tensor | None = None,
    atol: float = DEFAULT_ATOL,
    threads: int | None = None,
) -> dict[str, Any]:
    """Verify the graphs in ``folder`` against ``model``; raise VerificationError when parity fails."""
    checker = check_graphs(folder, manifest)
    choice = BackendChoice("onnxruntime", "cpu", "cpu", "export verification")
    runners = {role: make_runner(folder, manifest, role, choice, threads=threads) for role in manifest.graphs}
    model = model.eval()
    baseline = DeiT.from_sacvit(model) if "baseline" in runners else None
    g = torch.Generator().manual_seed(1234)
    cfg = manifest.model
    sets = {"random": torch.randn(RANDOM_BATCH, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)}
    if real_images is not None and real_images.shape[0]:
        sets["real"] = real_images
    rows: list[ParityRow] = []
    try:
        for r in runners.values():
            r.activate()
        for label, images in sets.items():
            rows += parity_rows(model, runners, images, label, manifest.exit_threshold, atol, baseline)
    finally:
        for r in runners.values():
            r.deactivate()
    report = {
        "checker": checker,
        "atol": atol,
        "rows": [asdict(r) for r in rows],
        "passed": all(r.passed for r in rows),
    }
    if not report["passed"]:
        worst = max((r for r in rows if not r.passed), key=lambda r: r.max_abs_diff)
        raise VerificationError(
            f"ONNX Runtime differs from PyTorch by {worst.max_abs_diff:.2e} on {worst.check} ({worst.images} images), "
            f"over the {atol:.0e} tolerance; nothing was written. Report it with the checkpoint's variant; "
            "--atol raises the tolerance at your own risk"
        )
    return report


def tensorrt_parser_check(folder: Path, manifest: Manifest, target: str) -> dict[str, Any]:
    """The static TensorRT-parser check of every graph for 8.5, 8.6, 10 and 11.

    Fails the export when a graph would not parse on the ``--target-trt`` the user asked for: that
    is a promise this export must keep. Other versions are reported.
    """
    from sacvit_deploy.export.trt_compat import check_models
    from sacvit_deploy.export.trt_support import VERSIONS

    paths = {role: manifest.file_path(folder, entry) for role, entry in manifest.graphs.items()}
    report: dict[str, Any] = {}
    for role, version, problems in check_models(paths, VERSIONS):
        errors = [p for p in problems if p.is_error]
        report.setdefault(version, {})[role] = {
            "parses": not errors,
            "errors": len(errors),
            "warnings": len(problems) - len(errors),
            "first_error": errors[0].line(manifest.graphs[role].file) if errors else None,
        }
    broken = [r for r in report.get(target, {}).values() if not r["parses"]]
    if broken:
        raise VerificationError(
            f"the exported graph will not parse on TensorRT {target}: {broken[0]['first_error']}"
        )
    return report
