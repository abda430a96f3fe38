"""What a checkpoint-format adapter provides, and the shape helpers the adapters share.

An adapter is built from its row in ``core.formats.CHECKPOINT_FORMATS`` and answers, for a file
read by ``model.checkpoint.read_checkpoint`` (tensors and plain metadata, never unpickled objects):

* ``locate(path)``: for a folder layout the format owns (a ``save_pretrained`` folder), the weights
  file inside it; None when the path is not such a folder;
* ``detect(raw)``: whether ``--format auto`` should take this file as this format;
* ``mismatch(raw)``: for an explicit ``--format``, why the file is not this format (one line), or None;
* ``config(raw, variant)``: the ModelConfig, validated;
* ``state_dict(raw)``: the tensors under this package's names: SAC-ViT's for a two-stage row, timm
  DeiT's (one ``pos_embed``, no reuse block) for a single-stage row (``row.two_stage`` False), which
  the loader turns into a SAC-ViT (stage-1 position embedding resampled, reuse block fresh).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import Tensor

from sacvit_deploy.core.config import ModelConfig
from sacvit_deploy.core.errors import CheckpointError, ConfigError
from sacvit_deploy.core.formats import CheckpointFormat
from sacvit_deploy.model.config import VARIANTS, make_config

_NAME_BY_DIM = {192: "tiny", 384: "small", 768: "base"}


@dataclass
class RawCheckpoint:
    """Tensors and plain metadata read from a file, before any interpretation."""

    path: Path
    state_dict: Dict[str, Tensor]
    metadata: Dict[str, Any] = field(default_factory=dict)
    config: Optional[ModelConfig] = None  # only for this project's format
    notes: List[str] = field(default_factory=list)  # what an adapter assumed, for the user


def kind_of(sd: Dict[str, Tensor]) -> str:
    if "pos_embed_list.0" in sd or "pos_embed_list.1" in sd:
        return "two-stage"
    if "pos_embed" in sd:
        return "deit"
    return "unknown"


def grid_side(n_tokens: int, extra: int = 1) -> Optional[int]:
    side = round((n_tokens - extra) ** 0.5)
    return side if side * side == n_tokens - extra else None


def _depth(sd: Dict[str, Tensor]) -> int:
    return 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m)


def guess_variant(sd: Dict[str, Tensor]) -> Optional[str]:
    """The named variant whose shapes these tensors have, or None."""
    try:
        dim = sd["cls_token"].shape[-1]
        depth = _depth(sd)
        if "pos_embed_list.0" in sd:
            s = grid_side(sd["pos_embed_list.0"].shape[1])
            img = 32 * s if s else None
        else:
            g = grid_side(sd["pos_embed"].shape[1])
            img = 16 * g if g else None
    except (KeyError, ValueError, IndexError, TypeError):
        return None
    name = f"deit_{_NAME_BY_DIM.get(dim, '?')}_{img}"
    return name if name in VARIANTS and depth == 12 else None


def shape_summary(sd: Dict[str, Tensor]) -> str:
    try:
        return f"embed_dim {sd['cls_token'].shape[-1]}, depth {_depth(sd)}"
    except (KeyError, ValueError):
        return "no DeiT-shaped tensors"


def config_from_shapes(
    raw: RawCheckpoint, fmt: str, variant: Optional[str], sd: Optional[Dict[str, Tensor]] = None
) -> ModelConfig:
    """A named variant's config for a file that carries none: ``variant`` or the one the shapes of
    ``sd`` (the adapter's tensors; default the file's) match."""
    sd = raw.state_dict if sd is None else sd
    name = variant or guess_variant(sd)
    if name is None:
        raise CheckpointError(
            f"{raw.path}: shapes ({shape_summary(sd)}) match no named variant; pass --variant "
            f"({', '.join(sorted(VARIANTS))}) or use a sacvit-format checkpoint that carries its config"
        )
    head = sd.get("head.weight")
    classes = int(head.shape[0]) if isinstance(head, Tensor) and head.dim() == 2 else 1000
    try:
        return make_config(name, fmt, num_classes=classes)
    except ConfigError as exc:
        raise CheckpointError(f"{raw.path}: {exc}") from None


class FormatAdapter:
    """Defaults for a format whose files are a state dict with this package's (timm's) names."""

    config_in_file = False  # the config comes from the file: a disagreeing tensor means a broken file

    def __init__(self, row: CheckpointFormat) -> None:
        self.row = row
        self.name = row.name

    def locate(self, path: Path) -> Optional[Path]:
        return None

    def detect(self, raw: RawCheckpoint) -> bool:
        return False

    def mismatch(self, raw: RawCheckpoint) -> Optional[str]:
        if kind_of(raw.state_dict) == "unknown" and raw.config is None:
            return "no DeiT / SAC-ViT weights inside (no cls_token/pos_embed keys); is this the right file?"
        return None

    def config(self, raw: RawCheckpoint, variant: Optional[str]) -> ModelConfig:
        return config_from_shapes(raw, self.name, variant, self.state_dict(raw))

    def state_dict(self, raw: RawCheckpoint) -> Dict[str, Tensor]:
        return dict(raw.state_dict)
