"""``check --run --backend openvino``: the export's comparator (:mod:`sacvit_deploy.core.compare`)
run against the OpenVINO runners of a folder.

* A float export: OpenVINO vs the folder's PyTorch weights (model.safetensors), or ONNX Runtime on
  the same graphs when the folder has no weights, with the SAME limits as ONNX Runtime's check
  (``atol + rtol * max|reference|``, decisions exact outside the hair).
* An int8 (Q/DQ) folder from ``quantize``: OpenVINO vs ONNX Runtime on the same int8 graphs, with
  quantize's decision-agreement rule: numbers reported, not gated; top-1 and exit decisions must
  agree on :data:`~sacvit_deploy.quantize.compare.DEFAULT_MIN_AGREEMENT` of the samples farther
  than :data:`INT8_HAIR` from their boundary. Both
  runtimes run the Q/DQ graph with their own int8 kernels (OpenVINO folds the Q/DQ pairs into int8
  ops, ONNX Runtime runs QLinear ops), so their logits differ by more than float rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from sacvit_deploy.backends.factory import BackendChoice, cpu_reference, make_runner
from sacvit_deploy.core.compare import Criteria, Tolerance
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.extras import install_hint
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.quantize.compare import DEFAULT_MIN_AGREEMENT
from sacvit_deploy.runtime.parity import compare_runners

RANDOM_BATCH = 5  # odd, so the dynamic batch axis is exercised (as export verification)
# Two runtimes' int8 kernels (rounding of the requantized activations) move a logit by up to ~0.5-2
# at logit std 4 (the tiny test export: 0.87-1.65; DeiT-S in issue 25: 0.61), hence a confidence by
# a few hundredths: a decision closer than this to its boundary (the mixed-threshold row puts the
# threshold between samples by construction) is reported as undecided, not gated.
INT8_HAIR = 0.05
INT8_CRITERIA = Criteria(tolerance=None, min_agreement=DEFAULT_MIN_AGREEMENT, hair=INT8_HAIR)


def check_openvino_parity(
    folder: Path,
    manifest: Manifest,
    real_images: Optional[np.ndarray],
    ov_device: Optional[str] = None,
    hint: Optional[str] = None,
    tolerance: Optional[Tolerance] = None,
) -> Dict[str, Any]:
    """The parity report (rows as export verification's) of OpenVINO on ``folder``'s graphs."""
    from sacvit_deploy.backends.factory import choose_backend

    candidate_choice = choose_backend(manifest, "openvino", None, ov_device)
    int8 = bool(manifest.quantization)  # written by `quantize` (int8 Q/DQ) only
    ort_installed = _has("onnxruntime")
    if int8:
        if not ort_installed:
            raise SacvitError(
                f"{folder}: an int8 folder is checked against ONNX Runtime on the same graphs; "
                + install_hint("cpu")
            )
        ref_choice, ref_label = cpu_reference("check --run"), "ONNX Runtime int8"
        criteria = INT8_CRITERIA
    else:
        tolerance = tolerance or Tolerance()
        criteria = Criteria(tolerance)
        if manifest.weights is not None:
            ref_choice, ref_label = BackendChoice("torch", "cpu", None, "check --run"), "PyTorch"
        elif ort_installed:
            ref_choice, ref_label = cpu_reference("check --run"), "ONNX Runtime"
        else:
            raise SacvitError(
                f"{folder}: nothing to compare OpenVINO with (no model.safetensors, no onnxruntime); "
                "re-export without --no-weights or " + install_hint("cpu")
            )
    roles = list(manifest.graphs)
    reference = {role: make_runner(folder, manifest, role, ref_choice) for role in roles}
    candidate = {role: make_runner(folder, manifest, role, candidate_choice, hint=hint) for role in roles}
    cfg = manifest.model
    rng = np.random.default_rng(1234)
    shape = (RANDOM_BATCH, cfg.in_chans, cfg.img_size, cfg.img_size)
    sets = {"random": rng.standard_normal(shape, dtype=np.float32)}
    if real_images is not None and real_images.shape[0]:
        sets["real"] = real_images
    label = f"OpenVINO ({candidate_choice.provider})"
    rows = compare_runners(
        (ref_label, reference), (label, candidate), sets, manifest.exit_threshold, criteria
    )
    return {
        "reference": ref_label,
        "candidate": label,
        "int8": int8,
        "atol": criteria.tolerance.atol if criteria.tolerance else None,
        "rtol": criteria.tolerance.rtol if criteria.tolerance else None,
        "min_agreement": criteria.min_agreement,
        "rows": [r.to_dict() for r in rows],
        "passed": all(r.passed for r in rows),
    }


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
