"""Training a two-stage model end to end on an ImageFolder (``sacvit-deploy train``)."""

from sacvit_deploy.training.data import (
    EvalTransform,
    ImageFolderDataset,
    ImageFolderSplit,
    TrainTransform,
    list_split,
    make_loader,
    scan_image_folder,
)
from sacvit_deploy.training.loop import (
    EvalResult,
    TrainOptions,
    TrainResult,
    distillation_loss,
    evaluate,
    lr_at,
    param_groups,
    train,
)

__all__ = [
    "EvalResult",
    "EvalTransform",
    "ImageFolderDataset",
    "ImageFolderSplit",
    "TrainOptions",
    "TrainResult",
    "TrainTransform",
    "distillation_loss",
    "evaluate",
    "list_split",
    "lr_at",
    "make_loader",
    "param_groups",
    "scan_image_folder",
    "train",
]
