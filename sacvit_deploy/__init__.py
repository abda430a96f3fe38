"""sacvit-deploy: deploy SAC-ViT / LF-ViT / CF-ViT early-exit vision transformers.

The Python API is what the commands call; each name is imported on first use, so ``import
sacvit_deploy`` stays light (no numpy, torch or onnx until a name is used)::

    from sacvit_deploy import Pipeline, calibrate_exit, export_checkpoint

| name | command | returns |
|---|---|---|
| ``export_checkpoint`` | ``export`` | ``ExportRun`` (folder, files, manifest with its verification) |
| ``quantize_export`` | ``quantize`` | ``QuantizeRun`` (int8 folder, agreement report) |
| ``build_engines`` | ``build-engine`` | ``BuildResult`` (engines, parity report) |
| ``calibrate_exit`` | ``calibrate`` | ``ExitCalibrationRun`` (the curve; ``.write()`` stores the choice) |
| ``profile_artifacts`` | ``profile`` | ``ProfileRun`` (the report ``--json`` writes, its lines) |
| ``serve_artifacts`` | ``serve`` | ``Serving``, a context manager (Triton started, stopped on exit) |
| ``train`` | ``train`` | ``TrainResult`` (best and last checkpoints, epochs and steps done) |
| ``Pipeline`` | (``infer`` runs ``predict_files``) | a loaded early-exit pipeline (``predict``, ``run``) |
"""

from __future__ import annotations

import importlib
from typing import Any, List

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.version import __version__

# name -> (module, command): the use cases, one per command that does more than print a table.
USE_CASES = {
    "export_checkpoint": ("sacvit_deploy.export.export_checkpoint", "export"),
    "quantize_export": ("sacvit_deploy.quantize.quantize_export", "quantize"),
    "build_engines": ("sacvit_deploy.engine.build", "build-engine"),
    "calibrate_exit": ("sacvit_deploy.runtime.calibrate_exit", "calibrate"),
    "profile_artifacts": ("sacvit_deploy.runtime.profile_artifacts", "profile"),
    "serve_artifacts": ("sacvit_deploy.triton.serving", "serve"),
    "train": ("sacvit_deploy.training", "train"),  # training.loop.train(TrainOptions(...))
    "Pipeline": ("sacvit_deploy.runtime.api", None),  # infer runs runtime.predict.predict_files
}

__all__ = ["SacvitError", "__version__", *USE_CASES]


def __getattr__(name: str) -> Any:
    if name in USE_CASES:
        return getattr(importlib.import_module(USE_CASES[name][0]), name)
    raise AttributeError(f"module 'sacvit_deploy' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted({*globals(), *USE_CASES})
