"""This project's format: the config travels with the weights (safetensors metadata or ``last.pt``)."""

from __future__ import annotations

from typing import Optional

from sacvit_deploy.core.config import ModelConfig
from sacvit_deploy.core.errors import CheckpointError
from sacvit_deploy.model.formats.base import FormatAdapter, RawCheckpoint, kind_of


class Adapter(FormatAdapter):
    config_in_file = True

    def detect(self, raw: RawCheckpoint) -> bool:
        return raw.config is not None

    def mismatch(self, raw: RawCheckpoint) -> Optional[str]:
        if raw.config is None:
            other = "deit" if kind_of(raw.state_dict) == "deit" else "lf-vit or --format cf-vit"
            return f"not a sacvit-deploy checkpoint (no config inside); pass --format {other}"
        return None

    def config(self, raw: RawCheckpoint, variant: Optional[str]) -> ModelConfig:
        cfg = raw.config
        assert cfg is not None  # mismatch() refused the file otherwise
        if variant and variant != cfg.variant:
            raise CheckpointError(
                f"{raw.path}: carries variant {cfg.variant}, not {variant}; drop --variant for sacvit checkpoints"
            )
        return cfg
