"""sacvit-deploy: deploy SAC-ViT / LF-ViT / CF-ViT early-exit vision transformers.

``from sacvit_deploy import Pipeline`` is the short path to :class:`sacvit_deploy.runtime.api.Pipeline`;
it is imported on first use, so ``import sacvit_deploy`` stays light (no torch, no onnx).
"""

from __future__ import annotations

from typing import Any

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.version import __version__

__all__ = ["Pipeline", "SacvitError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Pipeline":
        from sacvit_deploy.runtime.api import Pipeline

        return Pipeline
    raise AttributeError(f"module 'sacvit_deploy' has no attribute {name!r}")
