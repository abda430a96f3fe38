"""The SAC-ViT reference model: config, DeiT layers, the two stages, checkpoints and FLOPs."""

from sacvit_deploy.model import _torch_floor  # noqa: F401  (first: refuses a torch below the floor)
from sacvit_deploy.model.checkpoint import load_baseline, load_checkpoint, save_checkpoint
from sacvit_deploy.model.config import (
    FORMATS,
    VARIANTS,
    ModelConfig,
    PreprocessConfig,
    make_config,
    tiny_config,
)
from sacvit_deploy.model.flops import FlopsReport
from sacvit_deploy.model.sacvit import (
    STAGE1_INPUTS,
    STAGE1_OUTPUTS,
    STAGE2_INPUTS,
    STAGE2_OUTPUTS,
    DeiT,
    EarlyExitOutput,
    SACViT,
    Stage1Output,
    build_model,
)

__all__ = [
    "FORMATS",
    "STAGE1_INPUTS",
    "STAGE1_OUTPUTS",
    "STAGE2_INPUTS",
    "STAGE2_OUTPUTS",
    "VARIANTS",
    "DeiT",
    "EarlyExitOutput",
    "FlopsReport",
    "ModelConfig",
    "PreprocessConfig",
    "SACViT",
    "Stage1Output",
    "build_model",
    "load_baseline",
    "load_checkpoint",
    "make_config",
    "save_checkpoint",
    "tiny_config",
]
