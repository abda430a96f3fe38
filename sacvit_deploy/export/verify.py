"""Export verification: the ONNX graphs must compute what PyTorch computes.

Run at the end of every export (before anything is published) and printed as a table:

* ``onnx.checker`` (full check, with shape inference) on every graph;
* ONNX Runtime (CPU) vs the eager PyTorch model, both as named runners through the one comparator
  (:mod:`sacvit_deploy.core.compare`), on random images (an odd batch size, so the dynamic batch axis
  is exercised) and on real images: stage 1, stage 2 fed the same stage-1 outputs, the combined
  early exit at the export threshold and at a threshold splitting the batch, and the baseline.

Export fails when a row fails: a tensor over ``atol + rtol * max|reference|`` or a decision that
differs (see the comparator's docstring for why the limit is scaled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from sacvit_deploy.backends.factory import BackendChoice, cpu_reference, make_runner
from sacvit_deploy.backends.torch_backend import model_runners
from sacvit_deploy.core.compare import Criteria, Tolerance, first_failure
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.model.sacvit import SACViT
from sacvit_deploy.runtime.parity import compare_runners

RANDOM_BATCH = 5


class VerificationError(SacvitError):
    """The exported graphs do not match PyTorch within tolerance."""


def check_graphs(folder: Path, manifest: Manifest) -> Dict[str, str]:
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


def verify_export(
    folder: Path,
    manifest: Manifest,
    model: SACViT,
    real_images: Any = None,
    tolerance: Optional[Tolerance] = None,
    threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Verify the graphs in ``folder`` against ``model``; raise VerificationError when parity fails."""
    tolerance = tolerance or Tolerance()
    checker = check_graphs(folder, manifest)
    choice = cpu_reference("export verification")
    runners = {role: make_runner(folder, manifest, role, choice, threads=threads) for role in manifest.graphs}
    reference = model_runners(model.eval(), list(manifest.graphs))
    g = torch.Generator().manual_seed(1234)
    cfg = manifest.model
    sets = {
        "random": torch.randn(RANDOM_BATCH, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g).numpy()
    }
    if real_images is not None and real_images.shape[0]:
        sets["real"] = real_images
    rows = compare_runners(
        ("PyTorch", reference), ("ONNX Runtime", runners), sets, manifest.exit_threshold, Criteria(tolerance)
    )
    report = {
        "checker": checker,
        "atol": tolerance.atol,
        "rtol": tolerance.rtol,
        "rows": [r.to_dict() for r in rows],
        "passed": all(r.passed for r in rows),
    }
    worst = first_failure(rows)
    if worst is not None:
        raise VerificationError(
            f"ONNX Runtime differs from PyTorch on {worst.check} ({worst.images} images): {worst.reason}; "
            "nothing was written. Report it with the checkpoint's variant; --atol / --rtol raise the "
            "tolerance at your own risk"
        )
    return report


def tensorrt_parser_check(folder: Path, manifest: Manifest, target: str) -> Dict[str, Any]:
    """The static TensorRT-parser check of every graph for 8.5, 8.6, 10 and 11.

    Fails the export when a graph would not parse on the ``--target-trt`` the user asked for: that
    is a promise this export must keep. Other versions are reported.
    """
    from sacvit_deploy.export.trt_compat import check_models
    from sacvit_deploy.export.trt_support import VERSIONS

    paths = {role: manifest.file_path(folder, entry) for role, entry in manifest.graphs.items()}
    report: Dict[str, Any] = {}
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


def check_parity(
    folder: Path, manifest: Manifest, real_images: Any, tolerance: Optional[Tolerance] = None
) -> Dict[str, Any]:
    """``check --run``: ONNX Runtime on the folder's graphs vs the folder's own PyTorch weights
    (model.safetensors), through the same comparator as export verification. Returns the report;
    the caller decides what a failure means."""
    if manifest.weights is None:
        raise VerificationError(
            f"{folder}: no model.safetensors in the manifest to compare with; re-export without --no-weights"
        )
    tolerance = tolerance or Tolerance()
    ort = cpu_reference("check --run")
    torch_cpu = BackendChoice("torch", "cpu", None, "check --run")
    roles = list(manifest.graphs)
    candidate = {role: make_runner(folder, manifest, role, ort) for role in roles}
    reference = {role: make_runner(folder, manifest, role, torch_cpu) for role in roles}
    cfg = manifest.model
    g = torch.Generator().manual_seed(1234)
    sets = {
        "random": torch.randn(RANDOM_BATCH, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g).numpy()
    }
    if real_images is not None and real_images.shape[0]:
        sets["real"] = real_images
    rows = compare_runners(
        ("PyTorch", reference),
        ("ONNX Runtime", candidate),
        sets,
        manifest.exit_threshold,
        Criteria(tolerance),
    )
    return {
        "atol": tolerance.atol,
        "rtol": tolerance.rtol,
        "rows": [r.to_dict() for r in rows],
        "passed": all(r.passed for r in rows),
    }
