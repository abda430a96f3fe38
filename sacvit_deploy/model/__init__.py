"""The SAC-ViT reference model: config, DeiT layers, the two stages, checkpoints and FLOPs.

The names below are imported on first use, so that ``sacvit_deploy.model.config`` and
``sacvit_deploy.model.flops`` (pure Python: variants, GFLOPs) load without torch; the modules that
need torch (``sacvit``, ``checkpoint``, ``layers``) import it themselves.
"""

from __future__ import annotations

import importlib
from typing import Any, List

# public name -> the submodule that defines it
_LAZY = {
    "load_baseline": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "FORMATS": "config",
    "VARIANTS": "config",
    "ModelConfig": "config",
    "PreprocessConfig": "config",
    "make_config": "config",
    "tiny_config": "config",
    "FlopsReport": "flops",
    "STAGE1_INPUTS": "sacvit",
    "STAGE1_OUTPUTS": "sacvit",
    "STAGE2_INPUTS": "sacvit",
    "STAGE2_OUTPUTS": "sacvit",
    "DeiT": "sacvit",
    "EarlyExitOutput": "sacvit",
    "SACViT": "sacvit",
    "Stage1Output": "sacvit",
    "build_model": "sacvit",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sacvit_deploy.model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sacvit_deploy.model.{module}"), name)


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
