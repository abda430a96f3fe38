"""The parity check that ends every engine build: TensorRT engines vs a reference, on real images.

The reference is ONNX Runtime (CPU) on the export folder's graphs, or the PyTorch weights when ONNX
Runtime is not installed (common on Jetson). Rows:

* ``stage1``: max |logit difference| (and confidence difference), top-1 agreement, token-selection
  agreement;
* ``stage2``: both sides fed the reference's stage-1 outputs, so stage 2 is judged on its own;
* ``pipeline@T``: both run through :class:`EarlyExitPipeline` at the exit threshold and at a
  threshold midway through the batch's confidences: logits, top-1 and exit-decision agreement;
* ``baseline`` when built.

Reduced precision changes numbers; what must not change is the answer: the build warns (and fails
with ``--strict``) when a gated row's top-1 agreement is below :data:`MIN_TOP1_AGREEMENT`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sacvit_deploy.backends.base import Runner
from sacvit_deploy.backends.factory import BackendChoice, make_runner
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.export.verify import ParityRow
from sacvit_deploy.model.sacvit import STAGE2_INPUTS
from sacvit_deploy.runtime.pipeline import EarlyExitPipeline, mixed_threshold, run_any_batch

MIN_TOP1_AGREEMENT = 0.99


def reference_runners(
    export_dir: Path, manifest: Manifest, roles: list[str]
) -> tuple[dict[str, Runner], str]:
    """Runners on the export folder: ONNX Runtime (CPU) if installed, else the PyTorch weights."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is not None:
        choice = BackendChoice("onnxruntime", "cpu", "cpu", "parity reference")
        label = "ONNX Runtime (CPU)"
    elif manifest.weights is not None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        choice = BackendChoice("torch", device, None, "parity reference")
        label = f"PyTorch ({device}; onnxruntime is not installed)"
    else:
        return {}, "none (neither onnxruntime nor model.safetensors)"
    return {role: make_runner(export_dir, manifest, role, choice) for role in roles}, label


def _top1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1).cpu() == b.argmax(-1).cpu()).float().mean())


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def _selection(a: torch.Tensor, b: torch.Tensor) -> float:
    same = (a.long().cpu().sort(dim=1).values == b.long().cpu().sort(dim=1).values).all(dim=1)
    return float(same.float().mean())


@torch.no_grad()
def compare_runners(
    reference: dict[str, Runner],
    engines: dict[str, Runner],
    images: torch.Tensor,
    threshold: float,
) -> list[ParityRow]:
    """Parity rows of ``engines`` against ``reference`` (both active) on preprocessed ``images``."""
    n = images.shape[0]
    rows = []
    ref1 = run_any_batch(reference["stage1"], {"image": images})
    out1 = run_any_batch(engines["stage1"], {"image": images.to(engines["stage1"].device)})
    rows.append(
        ParityRow(
            "stage1",
            "real",
            n,
            max(_maxdiff(out1["logits"], ref1["logits"]), _maxdiff(out1["confidence"], ref1["confidence"])),
            _top1(out1["logits"], ref1["logits"]),
            selection_agreement=_selection(out1["target_index"], ref1["target_index"]),
        )
    )
    feed = {"image": images, **{k: ref1[k] for k in STAGE2_INPUTS[1:]}}
    ref2 = run_any_batch(reference["stage2"], feed)["logits"]
    device = engines["stage2"].device
    out2 = run_any_batch(engines["stage2"], {k: v.to(device) for k, v in feed.items()})["logits"]
    rows.append(ParityRow("stage2", "real", n, _maxdiff(out2, ref2), _top1(out2, ref2)))

    ref_pipe = EarlyExitPipeline(reference["stage1"], reference["stage2"], threshold)
    trt_pipe = EarlyExitPipeline(engines["stage1"], engines["stage2"], threshold)
    for th, gated in ((threshold, True), (mixed_threshold(ref1["confidence"]), False)):
        ref = ref_pipe.run(images, th)
        got = trt_pipe.run(images, th)
        rows.append(
            ParityRow(
                f"pipeline@{th:.3f}",
                "real",
                n,
                _maxdiff(got.logits, ref.logits),
                _top1(got.logits, ref.logits),
                exit_agreement=float((got.stage.cpu() == ref.stage.cpu()).float().mean()),
                gated=gated,
            )
        )
    if "baseline" in engines and "baseline" in reference:
        refb = run_any_batch(reference["baseline"], {"image": images})["logits"]
        outb = run_any_batch(engines["baseline"], {"image": images.to(engines["baseline"].device)})["logits"]
        rows.append(ParityRow("baseline", "real", n, _maxdiff(outb, refb), _top1(outb, refb)))
    for row in rows:
        row.passed = row.top1_agreement >= MIN_TOP1_AGREEMENT or not row.gated
    return rows


def parity_report(rows: list[ParityRow], reference: str, images: str) -> dict[str, Any]:
    gated = [r for r in rows if r.gated]
    return {
        "reference": reference,
        "images": images,
        "min_top1_agreement": MIN_TOP1_AGREEMENT,
        "rows": [asdict(r) for r in rows],
        "worst_top1_agreement": min((r.top1_agreement for r in gated), default=1.0),
        "passed": all(r.passed for r in rows),
    }
