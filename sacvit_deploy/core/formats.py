"""The one table of checkpoint formats: what each implies for stage 2, and where each may be used.

Every list of format names (the CLI's choices, the checkpoint loader, training's ``--format`` and
``--init-format``, ``variants``) is derived from :data:`CHECKPOINT_FORMATS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    description: str
    selection: str  # token selection: "window" (LF-ViT) or "topk" (CF-ViT)
    attention: str  # stage-2 attention: "global" or "cluster"
    target_ratio: float
    exit_threshold: float | None = None  # None: the variant's default (LF-ViT's 0.76 / 0.75)
    detect_key: str | None = None  # top-level key of the official .pth that `--format auto` looks for
    two_stage: bool = True  # False: a single-stage DeiT (stage-1 pos-embed resampled, reuse block fresh)
    trainable: bool = True  # `train --format` may produce it


# CF-ViT has no published default threshold; 0.5 is the operating point its authors report
# (1.88 GFLOPs, 79.8% for DeiT-S 7x7).
CHECKPOINT_FORMATS: dict[str, CheckpointFormat] = {
    f.name: f
    for f in (
        CheckpointFormat("sacvit", "this project's safetensors (config inside)", "window", "cluster", 0.88),
        CheckpointFormat("lf-vit", "official LF-ViT .pth", "window", "global", 0.88, detect_key="flops"),
        CheckpointFormat(
            "cf-vit", "official CF-ViT .pth", "topk", "global", 0.5, exit_threshold=0.5, detect_key="flop"
        ),
        # A timm DeiT checkpoint gets a fresh reuse block; SAC-ViT's stage 2 applies until trained.
        CheckpointFormat(
            "deit", "timm DeiT weights", "window", "cluster", 0.88, two_stage=False, trainable=False
        ),
    )
}
FORMAT_NAMES: tuple[str, ...] = tuple(CHECKPOINT_FORMATS)
TRAIN_FORMATS: tuple[str, ...] = tuple(f.name for f in CHECKPOINT_FORMATS.values() if f.trainable)
INIT_FORMATS: tuple[str, ...] = FORMAT_NAMES  # any format can initialise training
AUTO = "auto"


def stage2_preset(fmt: str) -> dict[str, Any]:
    """The ModelConfig fields a format fixes (selection, attention, target ratio, maybe the threshold)."""
    f = CHECKPOINT_FORMATS[fmt]
    preset: dict[str, Any] = {
        "selection": f.selection,
        "attention": f.attention,
        "target_ratio": f.target_ratio,
    }
    if f.exit_threshold is not None:
        preset["exit_threshold"] = f.exit_threshold
    return preset
