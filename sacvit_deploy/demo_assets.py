"""The demo model and sample images that ship inside the package (``sacvit_deploy/data/demo``).

A small real SAC-ViT (both stages, cluster attention) trained by ``scripts/train_demo_model.py`` on
scikit-learn's handwritten digits placed on varied 128 px scenes; ``data/demo/REPORT.md`` has its
numbers. Sample files are named ``digit<label>_<easy|hard>_<nn>.png``: the true digit, and whether
the bundled model answers it at stage 1 (easy) or stage 2 (hard) at its exit threshold.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Union

from sacvit_deploy.core.errors import SacvitError

DEMO_DIR = Path(__file__).resolve().parent / "data" / "demo"
_SAMPLE_NAME = re.compile(r"digit(\d)_(easy|hard)_\d+\.png")


def demo_model_path() -> Path:
    """The bundled demo checkpoint (this project's safetensors format, config and threshold inside)."""
    path = DEMO_DIR / "demo.safetensors"
    if not path.is_file():
        raise SacvitError(f"{path}: the bundled demo model is missing; reinstall sacvit-deploy")
    return path


def demo_sample_images() -> List[Path]:
    """The bundled sample images, sorted by name."""
    paths = sorted((DEMO_DIR / "samples").glob("*.png"))
    if not paths:
        raise SacvitError(
            f"{DEMO_DIR / 'samples'}: the bundled demo images are missing; reinstall sacvit-deploy"
        )
    return paths


def sample_label(path: Union[str, Path]) -> Optional[str]:
    """The true class name ("0".."9") in a sample's file name, or None for other files."""
    m = _SAMPLE_NAME.fullmatch(Path(path).name)
    return m.group(1) if m else None
