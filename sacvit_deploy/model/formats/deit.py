"""timm / facebookresearch DeiT weights (one ``pos_embed`` for the 14x14 grid): a single-stage row."""

from __future__ import annotations

from typing import Dict, Optional

from torch import Tensor

from sacvit_deploy.core.errors import CheckpointError
from sacvit_deploy.model.formats.base import FormatAdapter, RawCheckpoint, kind_of


class Adapter(FormatAdapter):
    def detect(self, raw: RawCheckpoint) -> bool:
        return raw.config is None and kind_of(raw.state_dict) == "deit"

    def mismatch(self, raw: RawCheckpoint) -> Optional[str]:
        if kind_of(raw.state_dict) == "two-stage" and raw.config is None:
            return "a two-stage checkpoint (pos_embed_list.*), not timm DeiT; pass --format lf-vit or cf-vit"
        return super().mismatch(raw)

    def state_dict(self, raw: RawCheckpoint) -> Dict[str, Tensor]:
        sd = dict(raw.state_dict)
        if "dist_token" in sd or "head_dist.weight" in sd:
            raise CheckpointError(
                f"{raw.path}: a distilled DeiT (dist_token, head_dist); use the non-distilled "
                "deit_*_patch16_* weights"
            )
        return sd
