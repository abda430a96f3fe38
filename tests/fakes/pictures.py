"""Generated test pictures: gradients and shapes, deterministic (not real photos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_images(folder: Path, count: int = 6, size: tuple[int, int] = (160, 140)) -> list[Path]:
    """Small RGB pictures with gradients and shapes (deterministic)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    w, h = size
    for i in range(count):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack(
            [(x * (i + 1) * 3) % 256, (y * (7 - i) * 2) % 256, ((x + y) * (i + 2)) % 256], axis=-1
        ).astype(np.uint8)
        img = Image.fromarray(base)
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse((x0, y0, x0 + 40, y0 + 30), fill=color)
        path = folder / f"img{i}.png"
        img.save(path)
        paths.append(path)
    return paths


COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def write_colour_folder(root: Path, n_train: int = 8, n_val: int = 3, seed: int = 0) -> Path:
    """A tiny ImageFolder for training: noisy solid colours, one class per colour, 64-96 px images,
    ``root/train/<colour>/i.png`` and ``root/val/<colour>/i.png``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(64, 97, size=2)
                pixels = np.asarray(colour)[None, None] + rng.normal(0, 25, (h, w, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def write_labelled_photos(root: Path, classes: tuple[str, ...], per_class: int) -> Path:
    """A labelled ImageFolder of the photos bundled with the package: ``root/<class>/<photo>.png``, class
    ``i`` holding the first ``per_class`` photos rotated by ``90 * i`` degrees, and in the second class
    one file that is not an image (``broken.jpg``)."""
    from sacvit_deploy.runtime.images import sample_images

    for i, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for p in sample_images()[:per_class]:
            Image.open(p).convert("RGB").rotate(90 * i).save(root / cls / f"{p.stem}.png")
    (root / classes[1] / "broken.jpg").write_bytes(b"not a jpeg")
    return root
