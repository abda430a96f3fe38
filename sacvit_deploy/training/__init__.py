"""Training a two-stage model end to end on an ImageFolder (``sacvit-deploy train``)."""

from sacvit_deploy.training.data import (
    EvalTransform,
    ImageFolderDataset,
    ImageFolderSplit,
    TrainTransform,
    default_workers,
    list_split,
    make_eval_loader,
    make_loader,
    make_train_loader,
    scan_image_folder,
)
from sacvit_deploy.training.distributed import World, WorldError, world_from_env
from sacvit_deploy.training.loop import (
    EvalResult,
    TrainOptions,
    TrainResult,
    distillation_loss,
    evaluate,
    lr_at,
    per_sample_loss,
    train,
)
from sacvit_deploy.training.recipe import ModelEma, param_groups
from sacvit_deploy.training.sampler import GlobalBatchSampler, eval_shard

__all__ = [
    "EvalResult",
    "EvalTransform",
    "GlobalBatchSampler",
    "ImageFolderDataset",
    "ImageFolderSplit",
    "ModelEma",
    "TrainOptions",
    "TrainResult",
    "TrainTransform",
    "World",
    "WorldError",
    "default_workers",
    "distillation_loss",
    "eval_shard",
    "evaluate",
    "list_split",
    "lr_at",
    "make_eval_loader",
    "make_loader",
    "make_train_loader",
    "param_groups",
    "per_sample_loss",
    "scan_image_folder",
    "train",
    "world_from_env",
]
