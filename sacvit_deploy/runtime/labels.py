"""Class names: the model's own, a user's label file, or ImageNet-1k's for 1000-class models."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (from torchvision's list, BSD-3-Clause)."""
    text = (files("sacvit_deploy") / "data" / "imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    assert len(names) == 1000, "corrupt package data: imagenet_classes.txt"
    return names


def default_class_names(num_classes: int) -> tuple[str, ...] | None:
    """ImageNet's names for a 1000-class model; None otherwise (predictions show class indices)."""
    return imagenet_class_names() if num_classes == 1000 else None
