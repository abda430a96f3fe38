"""The parity check that ends every engine build: TensorRT engines vs a reference, on real images.

The reference is ONNX Runtime (CPU) on the export folder's graphs, or the PyTorch weights when ONNX
Runtime is not installed (common on Jetson). The rows are the one comparator's
(:mod:`sacvit_deploy.core.compare`): stage 1, stage 2 fed the reference's stage-1 outputs, the early
exit at the exit threshold and at a threshold splitting the batch, and the baseline when built.

Reduced precision changes numbers; what must not change is the answer: numbers are reported, and
the build warns (fails with ``--strict``) when decisions agree on fewer than
:data:`MIN_AGREEMENT` of the samples farther than :data:`sacvit_deploy.core.compare.DECISION_HAIR` from their boundary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from sacvit_deploy.backends.base import Runner
from sacvit_deploy.backends.factory import (
    BackendChoice,
    cpu_reference,
    cuda_device_count,
    has_module,
    make_runner,
)
from sacvit_deploy.core.compare import ParityRow, reduced_precision
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.runtime import parity

# The reduced-precision criteria every comparison of FP16/INT8 with FP32 uses: FP16 keeps ~3 decimal
# digits, so a confidence within 5e-3 of the threshold (or a top-2 logit margin under 1e-2) may flip
# without anything being wrong; decisions farther from their boundary must agree on 99% of samples.
CRITERIA = reduced_precision()
MIN_AGREEMENT = CRITERIA.min_agreement


def reference_runners(
    export_dir: Path, manifest: Manifest, roles: List[str]
) -> Tuple[Dict[str, Runner], str]:
    """Runners on the export folder: ONNX Runtime (CPU) if installed, else the PyTorch weights."""
    if has_module("onnxruntime"):
        choice = cpu_reference("parity reference")
        label = "ONNX Runtime (CPU)"
    elif manifest.weights is not None and has_module("torch"):
        device = "cuda" if cuda_device_count() else "cpu"
        choice = BackendChoice("torch", device, None, "parity reference")
        label = f"PyTorch ({device}; onnxruntime is not installed)"
    else:
        return {}, "none (neither onnxruntime nor model.safetensors with torch installed)"
    return {role: make_runner(export_dir, manifest, role, choice) for role in roles}, label


def compare_runners(
    reference: Dict[str, Runner],
    engines: Dict[str, Runner],
    images: Any,  # (B, 3, R, R) float32 numpy (or a torch tensor)
    threshold: float,
) -> List[ParityRow]:
    """Parity rows of ``engines`` against ``reference`` on preprocessed real ``images``."""
    return parity.compare_runners(
        ("reference", reference), ("TensorRT", engines), {"real": images}, threshold, CRITERIA
    )


def parity_report(rows: List[ParityRow], reference: str, images: str) -> Dict[str, Any]:
    return {
        "reference": reference,
        "images": images,
        "min_top1_agreement": MIN_AGREEMENT,
        "rows": [r.to_dict() for r in rows],
        "worst_top1_agreement": min((r.top1_agreement for r in rows), default=1.0),
        "passed": all(r.passed for r in rows),
    }
