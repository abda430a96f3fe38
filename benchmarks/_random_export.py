"""Export random DeiT-sized weights with baseline.onnx into a temporary folder (for the benchmarks).

Timing does not depend on the weights' values; the exit rate is fixed by choosing the threshold.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.model import SACViT, make_config, tiny_config

QUICK_VARIANT = "tiny"  # --quick: the test suite's tiny config (128 px, width 32, depth 4)


def random_config(variant: str, fmt: str):  # -> ModelConfig
    """``make_config(variant, fmt)``, or the tiny test config for ``tiny`` (what --quick uses)."""
    return tiny_config(fmt) if variant == QUICK_VARIANT else make_config(variant, fmt)


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
