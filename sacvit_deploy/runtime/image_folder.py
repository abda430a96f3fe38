"""The one image-folder loader: a folder (or the bundled samples) -> one preprocessed float32 array.

INT8 calibration (``engine/int8_calibrator.py``, ``quantize/artifacts.py``), the parity checks'
real images (:func:`verification_images`) and profile's image pool (``profile_artifacts.image_pool``)
all load through :func:`load_image_folder`; each
caller keeps its own wording for "no such folder" / "nothing loaded" (a different option names it).
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Union

import numpy as np

from sacvit_deploy.runtime.images import collect_images, iter_batches, sample_images


@dataclass
class FolderImages:
    images: np.ndarray  # (N, 3, R, R) float32, N = len(paths); N is 0 when nothing loaded
    paths: List[Path]  # the files that loaded, in order
    found: int  # image files picked before loading (after ``limit``)
    total: int  # image files in the folder (before ``limit``)
    source: str  # the folder, or "bundled sample images"
    skipped: List[str] = field(default_factory=list)  # one line per file that failed to load

    def describe(self) -> str:
        return f"{self.source} ({self.images.shape[0]} images)"


def load_image_folder(
    folder: Optional[Path],
    preprocess_cfg: Any,
    limit: Optional[int] = None,
    spread: bool = False,
    on_skip: Optional[Callable[[str], None]] = None,
    batch_size: int = 16,
) -> FolderImages:
    """Images of ``folder`` (recursive, sorted; the bundled samples when None), preprocessed exactly
    as the runtime does. ``limit``: the first ``limit`` files, or with ``spread`` an even spread over
    the sorted list (ImageFolder layouts are sorted by class). Unreadable files are skipped and
    reported through ``on_skip``; they never stop the loading."""
    paths = collect_images([folder]) if folder is not None else sample_images()
    total = len(paths)
    if limit is not None and len(paths) > limit:
        if spread:
            pick = np.linspace(0, len(paths) - 1, limit).round().astype(int)
            paths = [paths[i] for i in sorted(set(pick.tolist()))]
        else:
            paths = paths[:limit]
    size = preprocess_cfg.input_size
    arrays, used, skipped = [], [], []
    with closing(iter_batches(paths, preprocess_cfg, batch_size=batch_size, workers=2)) as batches:
        for batch in batches:
            for failure in batch.failures:
                skipped.append(str(failure))
                if on_skip is not None:
                    on_skip(str(failure))
            if len(batch.paths):
                arrays.append(np.asarray(batch.images, dtype=np.float32))
                used += batch.paths
    images = np.concatenate(arrays) if arrays else np.zeros((0, 3, size, size), np.float32)
    source = str(folder) if folder is not None else "bundled sample images"
    return FolderImages(images, used, len(paths), total, source, skipped)


def verification_images(
    folder: Optional[Union[str, Path]],
    preprocess: Any,
    limit: int = 16,
    log: Optional[Callable[[str], None]] = None,
) -> Optional[np.ndarray]:
    """Real images for parity checks: the folder's first ``limit``, else the samples bundled with the
    package, preprocessed as the runtime does; None when none loaded. Unreadable files are logged
    (``skipped ...``) and left out."""
    say = log or (lambda _line: None)
    loaded = load_image_folder(
        Path(folder) if folder is not None else None, preprocess, limit, on_skip=lambda m: say(f"skipped {m}")
    )
    return loaded.images if loaded.paths else None
