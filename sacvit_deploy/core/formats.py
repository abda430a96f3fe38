"""The one table of checkpoint formats: what each implies for stage 2, where each may be used, and
which adapter module reads it.

Every list of format names (the CLI's choices, the checkpoint loader, ``--format auto``, training's
``--format`` and ``--init-format``, ``variants``, the manifest's ``source_format``) is derived from
:data:`CHECKPOINT_FORMATS`. A new format is one row here plus one adapter module (torch code, under
``sacvit_deploy/model/formats/``; see ``model/formats/base.py`` for what an adapter provides). The
row names the module, so this layer imports nothing from ``model/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    description: str
    selection: str  # token selection: "window" (LF-ViT) or "topk" (CF-ViT)
    attention: str  # stage-2 attention: "global" or "cluster"
    target_ratio: float
    adapter: str  # module under sacvit_deploy.model.formats (or a dotted module path) that reads the files
    exit_threshold: Optional[float] = None  # None: the variant's default (LF-ViT's 0.76 / 0.75)
    detect_key: Optional[str] = None  # top-level key of the official .pth that `--format auto` looks for
    # False: a single-stage DeiT/ViT: its adapter gives timm DeiT tensor names (one ``pos_embed``);
    # the loader resamples stage 1's position embedding and initialises the reuse block fresh.
    two_stage: bool = True
    trainable: bool = True  # `train --format` may produce it
    variants_table: bool = True  # `sacvit-deploy variants` lists its stage-2 rules (own rules only)


# CF-ViT has no published default threshold; 0.5 is the operating point its authors report
# (1.88 GFLOPs, 79.8% for DeiT-S 7x7). The order is the order `--format auto` asks the adapters in.
CHECKPOINT_FORMATS: Dict[str, CheckpointFormat] = {
    f.name: f
    for f in (
        CheckpointFormat(
            "sacvit", "this project's safetensors (config inside)", "window", "cluster", 0.88, "sacvit"
        ),
        CheckpointFormat(
            "lf-vit", "official LF-ViT .pth", "window", "global", 0.88, "official", detect_key="flops"
        ),
        CheckpointFormat(
            "cf-vit",
            "official CF-ViT .pth",
            "topk",
            "global",
            0.5,
            "official",
            exit_threshold=0.5,
            detect_key="flop",
        ),
        # Single-stage weights get a fresh reuse block; SAC-ViT's stage 2 applies until trained.
        CheckpointFormat(
            "deit",
            "timm DeiT weights",
            "window",
            "cluster",
            0.88,
            "deit",
            two_stage=False,
            trainable=False,
            variants_table=False,
        ),
        CheckpointFormat(
            "hf",
            "Hugging Face save_pretrained folder of ViTForImageClassification (config.json + model.safetensors)",
            "window",
            "cluster",
            0.88,
            "hf",
            two_stage=False,
            trainable=False,
            variants_table=False,
        ),
    )
}
AUTO = "auto"
FORMAT_NAMES: Tuple[str, ...] = ()
TRAIN_FORMATS: Tuple[str, ...] = ()
INIT_FORMATS: Tuple[str, ...] = ()


def _derive() -> None:
    global FORMAT_NAMES, TRAIN_FORMATS, INIT_FORMATS
    FORMAT_NAMES = tuple(CHECKPOINT_FORMATS)
    TRAIN_FORMATS = tuple(f.name for f in CHECKPOINT_FORMATS.values() if f.trainable)
    INIT_FORMATS = FORMAT_NAMES  # any format can initialise training


_derive()


def register_format(row: CheckpointFormat) -> None:
    """Add a row (a plugin's format). Call it before importing the CLI: the choice lists are read once."""
    if row.name in CHECKPOINT_FORMATS or row.name == AUTO:
        raise ValueError(f"checkpoint format {row.name!r} exists already")
    CHECKPOINT_FORMATS[row.name] = row
    _derive()


def stage2_preset(fmt: str) -> Dict[str, Any]:
    """The ModelConfig fields a format fixes (selection, attention, target ratio, maybe the threshold)."""
    f = CHECKPOINT_FORMATS[fmt]
    preset: Dict[str, Any] = {
        "selection": f.selection,
        "attention": f.attention,
        "target_ratio": f.target_ratio,
    }
    if f.exit_threshold is not None:
        preset["exit_threshold"] = f.exit_threshold
    return preset
