"""ImageFolder data and DeiT-style transforms for training, with PIL, numpy and torch only.

Layout: ``DATA_DIR/train/<class>/*`` and ``DATA_DIR/val/<class>/*``; class names are the sorted
folder names of ``train``. Augmentation randomness is drawn from a generator seeded by
``(seed, epoch, sample index)``, so an epoch's batches are the same whatever the number of loader
workers and whether the run was resumed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.model.config import PreprocessConfig
from sacvit_deploy.runtime.images import IMAGE_EXTENSIONS, load_image, preprocess
from sacvit_deploy.training.augment import RandAugment, RandomErasing
from sacvit_deploy.training.sampler import GlobalBatchSampler, eval_shard

SPLITS = ("train", "val")
_LAYOUT = "DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/<image>"


class ImageDecodeError(SacvitError):
    """An image of the data folder that does not decode. Raised in a DataLoader worker too, where torch
    re-raises it in the main process as ``ImageDecodeError("Caught ... Original Traceback ...: message")``:
    the constructor keeps only the message, so the CLI still prints one line."""

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


class DataError(SacvitError):
    """A training data folder that does not have the expected layout."""


# ---- the folder ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageFolderSplit:
    """The images of one split: (path, class index) pairs, sorted by class then file name."""

    root: Path
    class_names: Tuple[str, ...]
    samples: Tuple[Tuple[Path, int], ...]


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _class_folders(split_dir: Path) -> List[Path]:
    return sorted((p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=str)


def scan_image_folder(data_dir: Union[str, Path]) -> Tuple[ImageFolderSplit, ImageFolderSplit]:
    """Check the layout and list the images of the train and val splits."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such folder; pass a data folder laid out as {_LAYOUT}")
    for split in SPLITS:
        if not (data_dir / split).is_dir():
            raise DataError(f"{data_dir}: has no '{split}' folder; expected the layout {_LAYOUT}")

    train_dir = data_dir / "train"
    folders = _class_folders(train_dir)
    if not folders:
        loose = any(_is_image(p) for p in train_dir.iterdir())
        why = "images lie directly in it" if loose else "it has no class folders"
        raise DataError(f"{train_dir}: {why}; put each class's images in its own folder, {_LAYOUT}")
    class_names = tuple(p.name for p in folders)

    val_dir = data_dir / "val"
    val_names = tuple(p.name for p in _class_folders(val_dir))
    if val_names != class_names:
        missing = sorted(set(class_names) - set(val_names))
        extra = sorted(set(val_names) - set(class_names))
        parts = [f"missing {_short(missing)}"] if missing else []
        parts += [f"extra {_short(extra)}"] if extra else []
        raise DataError(
            f"{val_dir}: its class folders differ from {train_dir}'s ({'; '.join(parts)}); "
            "both splits need the same class folders"
        )

    train_split = list_split(train_dir, class_names, every_class=True)
    val_split = list_split(val_dir, class_names)
    return train_split, val_split


def list_split(
    split_dir: Union[str, Path], class_names: Tuple[str, ...], every_class: bool = False
) -> ImageFolderSplit:
    """The images of ``split_dir/<class>/*`` for the given classes (a missing class folder has none)."""
    split_dir = Path(split_dir)
    samples: List[Tuple[Path, int]] = []
    for label, name in enumerate(class_names):
        folder = split_dir / name
        files = (
            sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)
            if folder.is_dir()
            else []
        )
        if not files and every_class:
            raise DataError(
                f"{folder}: no images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "every class needs training images"
            )
        samples.extend((p, label) for p in files)
    if not samples:
        raise DataError(f"{split_dir}: no images in its class folders; expected the layout {_LAYOUT}")
    return ImageFolderSplit(split_dir, class_names, tuple(samples))


def _short(names: List[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ---- transforms -------------------------------------------------------------------------------------
def to_normalized_tensor(img: Image.Image, mean: Tuple[float, ...], std: Tuple[float, ...]) -> Tensor:
    """RGB PIL image -> (3, H, W) float tensor, scaled to [0, 1], then normalised."""
    # numpy, not torch: per-image torch ops are slow when torch's threads compete for the cores.
    x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class EvalTransform:
    """DeiT evaluation: shorter side to ``resize_size`` (bicubic), center crop, normalise."""

    def __init__(self, pp: PreprocessConfig) -> None:
        self.pp = pp

    def __call__(self, img: Image.Image) -> Tensor:
        # The same preprocessing as export verification and inference, so validation numbers match.
        return torch.from_numpy(preprocess(img, self.pp))


class TrainTransform:
    """DeiT training: RandomResizedCrop (bicubic), horizontal flip, [RandAugment], normalise, [erasing]."""

    def __init__(
        self,
        pp: PreprocessConfig,
        scale: Tuple[float, float] = (0.08, 1.0),
        ratio: Tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        rand_augment: Optional[RandAugment] = None,
        erasing: Optional[RandomErasing] = None,
    ) -> None:
        self.pp, self.scale, self.ratio, self.hflip = pp, scale, ratio, hflip
        self.rand_augment, self.erasing = rand_augment, erasing

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> Tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params: (left, top, w, h)."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
        # Fallback: the largest center crop with the aspect ratio clamped into range.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Tensor:
        left, top, w, h = self.crop_box(*img.size, rng)
        size = self.pp.input_size
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rng)
        x = to_normalized_tensor(img, self.pp.mean, self.pp.std)
        return self.erasing(x, rng) if self.erasing is not None else x


# ---- datasets and loaders ---------------------------------------------------------------------------
class ImageFolderDataset(Dataset):
    """One split; ``set_epoch`` re-seeds the augmentation of every sample for that epoch."""

    def __init__(
        self, split: ImageFolderSplit, transform: Union[TrainTransform, EvalTransform], seed: int = 0
    ) -> None:
        self.split, self.transform, self.seed, self.epoch = split, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split.samples)

    def __getitem__(self, draw: int) -> Tuple[Tensor, int]:
        # A draw >= len is a repeated-augmentation copy (GlobalBatchSampler): same image, own seed.
        copy, index = divmod(draw, len(self.split.samples))
        path, label = self.split.samples[index]
        try:
            img = load_image(path)
        except SacvitError as exc:
            raise ImageDecodeError(str(exc)) from None
        if isinstance(self.transform, TrainTransform):
            key = [self.seed, self.epoch, index] + ([copy] if copy else [])
            return self.transform(img, np.random.default_rng(key)), label
        return self.transform(img), label


def make_loader(
    dataset: ImageFolderDataset, batch_size: int, train: bool, workers: int, pin_memory: bool = False
) -> DataLoader:
    """Train: shuffled (re-seeded per epoch via ``loader.generator``), last partial batch dropped."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator() if train else None,
        persistent_workers=False,  # new workers per epoch see the dataset's current epoch
    )


def make_train_loader(
    dataset: ImageFolderDataset, sampler: GlobalBatchSampler, workers: int, pin_memory: bool = False
) -> DataLoader:
    """This process's micro-batches of the epoch (``sampler.set_epoch`` and ``dataset.set_epoch`` first)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,  # new workers per epoch see the dataset's current epoch
    )


def make_eval_loader(
    dataset: ImageFolderDataset,
    batch_size: int,
    workers: int,
    world: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """This process's contiguous block of the split (rank order = the split's order), in order."""
    shard = Subset(dataset, list(eval_shard(len(dataset), world, rank)))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory)


def default_workers(processes_on_this_machine: int = 1) -> int:
    """Loader processes per training process: the CPUs this process may use, shared, minus the trainer."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, processes_on_this_machine) - 1))
