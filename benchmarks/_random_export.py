"""Random DeiT-sized weights for the benchmarks: the model, its export (with baseline.onnx) into a
temporary folder, and the threshold sending an exact number of samples to stage 2.

Timing does not depend on the weights' values; the exit rate is fixed by choosing the threshold.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.model import SACViT, make_config, tiny_config
from sacvit_deploy.runtime.profiling import threshold_for_exit_rate

QUICK_VARIANT = "tiny"  # --quick: the test suite's tiny config (128 px, width 32, depth 4)
LOGIT_STD = 4.0  # stage 1's logit standard deviation on a trained DeiT-S


def random_config(variant: str, fmt: str):  # -> ModelConfig
    """``make_config(variant, fmt)``, or the tiny test config for ``tiny`` (what --quick uses)."""
    return tiny_config(fmt) if variant == QUICK_VARIANT else make_config(variant, fmt)


def random_model(variant: str, fmt: str, logit_std: float = LOGIT_STD) -> SACViT:
    """Random weights (seed 0), the head scaled so stage 1's logits have std ``logit_std`` on random
    images (an unscaled random head gives near-uniform softmaxes, unlike a trained model)."""
    torch.manual_seed(0)
    model = SACViT(random_config(variant, fmt)).eval()
    size = model.cfg.img_size
    x = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        std = float(model.forward_stage1(x).logits.std())
        model.head.weight.mul_(logit_std / std)
        model.head.bias.zero_()
    return model


def split_threshold(conf: np.ndarray, n_hard: int) -> float:
    """A threshold sending exactly the ``n_hard`` least confident samples to stage 2 (the runtime's
    :func:`threshold_for_exit_rate`: midway between two float32 confidences, never on one)."""
    n = int(np.asarray(conf).size)
    split = threshold_for_exit_rate(conf, (n - n_hard) / n)
    if split.n - split.n_exit != n_hard:
        raise SystemExit(f"tied stage-1 confidences: cannot send exactly {n_hard} of {n} samples to stage 2")
    return split.threshold


def export_random_weights(variant: str, fmt: str) -> tuple[tempfile.TemporaryDirectory, Path]:
    """-> (the temporary directory to clean up, the export folder inside it)."""
    tmp = tempfile.TemporaryDirectory()
    folder = Path(tmp.name) / "export"
    torch.manual_seed(0)
    model = SACViT(random_config(variant, fmt)).eval()
    t = time.perf_counter()
    export_artifacts(model, folder, ExportOptions(baseline=True), fmt)
    print(f"exported random-weight {variant} ({fmt}) with baseline.onnx in {time.perf_counter() - t:.1f} s")
    return tmp, folder
