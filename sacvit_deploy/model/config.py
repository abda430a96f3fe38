"""Model configuration: one frozen dataclass, named variants and per-format presets.

A *variant* fixes the backbone and resolution (``deit_small_224``: DeiT-S, 224 px input, a 7x7
stage-1 grid). A *format* fixes how stage 2 is built: LF-ViT (window selection, global attention),
CF-ViT (global top-k, global attention) or SAC-ViT (window selection, cluster attention). Everything
the exported graphs and the runtime need travels in :class:`ModelConfig`, preprocessing included.
"""

from __future__ import annotations

from typing import Any, Dict

from sacvit_deploy.core.config import (
    ATTENTIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SELECTIONS,
    ModelConfig,
    PreprocessConfig,
)
from sacvit_deploy.core.errors import ConfigError
from sacvit_deploy.core.formats import CHECKPOINT_FORMATS, stage2_preset
from sacvit_deploy.core.formats import FORMAT_NAMES as FORMATS

__all__ = [
    "ATTENTIONS",
    "FORMATS",
    "FORMAT_PRESETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SELECTIONS",
    "VARIANTS",
    "ModelConfig",
    "PreprocessConfig",
    "make_config",
    "tiny_config",
]

# ---- named variants -------------------------------------------------------------------------------
_BACKBONES = {
    "tiny": {"embed_dim": 192, "num_heads": 3},
    "small": {"embed_dim": 384, "num_heads": 6},
    "base": {"embed_dim": 768, "num_heads": 12},
}
# LF-ViT's window side per stage-1 grid (LF-ViT README: 5 for 7x7, 8 for 9x9) and its thresholds.
_REGION_SIZE = {7: 5, 9: 8}
_LF_THRESHOLD = {7: 0.76, 9: 0.75}

VARIANTS: Dict[str, Dict[str, Any]] = {
    f"deit_{name}_{res}": {"img_size": res, **dims} for name, dims in _BACKBONES.items() for res in (224, 288)
}

# What each checkpoint format implies for stage 2 (the table is core.formats.CHECKPOINT_FORMATS).
FORMAT_PRESETS: Dict[str, Dict[str, Any]] = {name: stage2_preset(name) for name in FORMATS}


def make_config(variant: str = "deit_small_224", fmt: str = "sacvit", **overrides: Any) -> ModelConfig:
    """Build the config of a named variant for a checkpoint format, with optional overrides."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of: {', '.join(sorted(VARIANTS))}")
    if fmt not in CHECKPOINT_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of: {', '.join(CHECKPOINT_FORMATS)}")
    base = dict(VARIANTS[variant])
    s = base["img_size"] // 32
    fields: Dict[str, Any] = {
        "variant": variant,
        "region_size": _REGION_SIZE.get(s, min(5, s)),
        "exit_threshold": _LF_THRESHOLD.get(s, 0.76),
        "preprocess": PreprocessConfig.for_resolution(base["img_size"]),
        **base,
        **stage2_preset(fmt),
    }
    fields.update(overrides)
    if "img_size" in overrides and "preprocess" not in overrides:
        fields["preprocess"] = PreprocessConfig.for_resolution(overrides["img_size"])
    return ModelConfig(**fields)


def tiny_config(fmt: str = "sacvit", **overrides: Any) -> ModelConfig:
    """A few-kB model with every moving part (used by tests and quick experiments).

    128 px input, an 8x8 fine grid, a 4x4 stage-1 grid, a 3x3 window, 4 blocks of width 32.
    """
    fields: Dict[str, Any] = {
        "variant": "tiny_test",
        "img_size": 128,
        "embed_dim": 32,
        "depth": 4,
        "num_heads": 2,
        "num_classes": 10,
        "region_size": 3,
        "score_layers": (1, 2, 3),
        "exit_threshold": 0.5,
        "preprocess": PreprocessConfig(input_size=128, resize_size=146),
        **stage2_preset(fmt),
    }
    fields.update(overrides)
    return ModelConfig(**fields)
