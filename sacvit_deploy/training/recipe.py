"""The training recipe: named presets (ours, DeiT's), weight EMA, layer-wise learning rates.

DeiT's recipe is the one LF-ViT and CF-ViT train with (their ``main_deit.py`` keeps DeiT's defaults).
``--recipe deit`` switches every part of it on; each part is also its own option, and an option given
explicitly wins over the preset. docs/training.md has the table.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

RAND_AUGMENT_DEIT = "rand-m9-mstd0.5-inc1"

# name -> (ours, DeiT / LF-ViT / CF-ViT). "ours" is the light default that fine-tunes small sets.
RECIPE_FIELDS: Dict[str, Tuple[Any, Any]] = {
    "smoothing": (0.0, 0.1),
    "mixup": (0.0, 0.8),
    "cutmix": (0.0, 1.0),
    "rand_augment": (None, RAND_AUGMENT_DEIT),
    "reprob": (0.0, 0.25),
    "drop_path": (0.0, 0.1),
    "ema_decay": (None, 0.99996),
    "repeated_aug": (1, 3),
    "layer_decay": (None, None),
}
RECIPES = ("ours", "deit")


def recipe_value(recipe: str, name: str, given: Any) -> Any:
    """An explicitly given value, else the preset's."""
    if given is not None:
        return given
    return RECIPE_FIELDS[name][RECIPES.index(recipe)]


# ---- weight EMA ------------------------------------------------------------------------------------
class ModelEma:
    """An exponential moving average of a model's weights, ``ema <- decay * ema + (1 - decay) * w``.

    Updated after every optimizer step (buffers too); evaluated and saved like the model itself.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.lerp_(current[name].detach(), 1.0 - self.decay)
            else:
                value.copy_(current[name])

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


# ---- optimizer groups ------------------------------------------------------------------------------
def _no_weight_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name == "cls_token" or name.startswith("pos_embed_list.")


def layer_id(name: str, depth: int) -> int:
    """0: embeddings; 1..depth: the blocks; depth + 1: what follows them (norm, head, reuse block)."""
    if name in ("cls_token",) or name.startswith(("pos_embed_list.", "patch_embed.")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: Optional[float] = None
) -> List[Dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms (every 1-d tensor), cls_token, pos_embed_list.*.

    With ``layer_decay`` (BEiT-style, e.g. 0.65 for fine-tuning) the learning rate of layer ``i`` is
    scaled by ``layer_decay ** (depth + 1 - i)``: the head at full rate, the embeddings the lowest.
    Each group's ``lr_scale`` multiplies the scheduled learning rate.
    """
    if layer_decay is None or layer_decay == 1.0:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if _no_weight_decay(name, p) else decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        ]
    depth = len(model.blocks)  # type: ignore[arg-type]
    groups: Dict[Tuple[int, bool], Dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid, skip = layer_id(name, depth), _no_weight_decay(name, p)
        group = groups.setdefault(
            (lid, skip),
            {
                "params": [],
                "weight_decay": 0.0 if skip else weight_decay,
                "lr_scale": layer_decay ** (depth + 1 - lid),
            },
        )
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


# Trained while the backbone is frozen: the parts a fine-tuning run starts fresh.
FRESH_PREFIXES = ("head.", "reuse_block.")


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or name.startswith(FRESH_PREFIXES))
