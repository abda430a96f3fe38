"""The official LF-ViT / CF-ViT ``.pth`` files: ``{"model": state_dict, "flops" | "flop": ...}``.

Both use the same key names, so the row's ``detect_key`` (``flops`` for LF-ViT, ``flop`` for CF-ViT)
is what ``--format auto`` goes by.
"""

from __future__ import annotations

from typing import Optional

from sacvit_deploy.model.formats.base import FormatAdapter, RawCheckpoint, kind_of


class Adapter(FormatAdapter):
    def detect(self, raw: RawCheckpoint) -> bool:
        return (
            raw.config is None
            and kind_of(raw.state_dict) == "two-stage"
            and self.row.detect_key is not None
            and self.row.detect_key in raw.metadata
        )

    def mismatch(self, raw: RawCheckpoint) -> Optional[str]:
        if raw.config is not None:
            return "a sacvit-deploy checkpoint (it carries its config); pass --format sacvit"
        if kind_of(raw.state_dict) == "deit":
            return f"a timm DeiT checkpoint (single pos_embed), not {self.name}; pass --format deit"
        return super().mismatch(raw)
