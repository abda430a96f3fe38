"""Inputs read for the CLI (temporary home during the split)."""

from __future__ import annotations

from pathlib import Path
from typing import (
    Optional,
    Tuple,
)

from sacvit_deploy.cli._console import note, safe
from sacvit_deploy.core.errors import SacvitError


def verification_images(folder: Optional[Path], cfg, limit: int = 16):  # -> torch.Tensor
    """Real images for parity checks: the user's folder, else the samples bundled with the package."""
    import torch

    from sacvit_deploy.runtime.image_folder import load_image_folder

    loaded = load_image_folder(
        folder, cfg.preprocess, limit, on_skip=lambda m: note(f"[yellow]skipped[/] {safe(m)}")
    )
    return torch.from_numpy(loaded.images) if loaded.paths else None


def read_labels(path: Path, num_classes: int) -> Tuple[str, ...]:
    """One class name per line (blank lines ignored); the count must match the model's classes."""
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
