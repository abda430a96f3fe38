"""Regenerate sacvit_deploy/data/samples/ from scikit-image's bundled, public-domain / CC0 photos.

    pip install scikit-image    # dev only: the package never imports it
    python scripts/make_sample_images.py

Each image is resized (Lanczos) so that its shorter side is 256 px, the size DeiT-224's
preprocessing resizes to. Colour photos become JPEG (quality 90); the grayscale ones stay
grayscale, two of them as PNG so that both decoders are exercised. Origins and licenses, as stated
in scikit-image's docstrings, are in SOURCES.md beside the images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

SHORT_SIDE = 256
OUT = Path(__file__).resolve().parent.parent / "sacvit_deploy" / "data" / "samples"

# scikit-image loader name -> output file name
SAMPLES = {
    "astronaut": "astronaut.jpg",
    "chelsea": "chelsea.jpg",
    "coffee": "coffee.jpg",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "coins": "coins.jpg",  # grayscale JPEG
    "camera": "camera.png",  # grayscale PNG
    "horse": "horse.png",  # black silhouette on white (a bool mask in scikit-image)
}


def to_pil(array: np.ndarray) -> Image.Image:
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array)


def resize_short_side(img: Image.Image, short: int) -> Image.Image:
    w, h = img.size
    scale = short / min(w, h)
    size = (short, round(h * scale)) if w <= h else (round(w * scale), short)
    return img.resize(size, Image.Resampling.LANCZOS)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    total = 0
    for loader, filename in SAMPLES.items():
        img = resize_short_side(to_pil(getattr(skimage.data, loader)()), SHORT_SIDE)
        path = OUT / filename
        if path.suffix == ".jpg":
            img.save(path, "JPEG", quality=90, optimize=True)
        else:
            img.save(path, "PNG", optimize=True)
        size = path.stat().st_size
        total += size
        print(f"{path.name:24s} {img.mode:3s} {img.size[0]}x{img.size[1]}  {size / 1024:6.1f} KiB")
    print(f"total {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
