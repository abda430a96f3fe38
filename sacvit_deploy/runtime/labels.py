"""Class names: the model's own, a user's label file, or ImageNet-1k's for 1000-class models."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple, Union

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.package_data import package_path


@lru_cache(maxsize=1)
def imagenet_class_names() -> Tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (from torchvision's list, BSD-3-Clause)."""
    text = package_path("data", "imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    assert len(names) == 1000, "corrupt package data: imagenet_classes.txt"
    return names


def default_class_names(num_classes: int) -> Optional[Tuple[str, ...]]:
    """ImageNet's names for a 1000-class model; None otherwise (predictions show class indices)."""
    return imagenet_class_names() if num_classes == 1000 else None


def read_labels(path: Union[str, Path], num_classes: int) -> Tuple[str, ...]:
    """One class name per line (blank lines ignored); the count must match the model's classes."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise SacvitError(
            f"{path}: cannot read the labels file ({reason}); pass a UTF-8 text file, one name per line"
        ) from None
    if len(names) != num_classes:
        raise SacvitError(
            f"{path}: {len(names)} labels for a model with {num_classes} classes; give one name per class"
        )
    return tuple(names)
