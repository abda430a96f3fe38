"""A stand-in for ``sacvit_deploy.runtime.images`` (same API) for branches that do not have it yet.

``ensure_image_module(monkeypatch, tmp_path)`` leaves the real module alone when it imports, else puts
this one in ``sys.modules``. Its sample images are generated gradients and shapes, written to
``tmp_path``. The preprocessing follows the DeiT recipe (resize, center crop, normalise) closely
enough for tests; it is not the reference implementation.
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sacvit_deploy.errors import SacvitError

EXTENSIONS = {".png", ".jpg", ".jpeg"}


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


def make_module(samples: Path) -> types.ModuleType:
    mod = types.ModuleType("sacvit_deploy.runtime.images")

    class ImageLoadError(SacvitError):
        def __init__(self, path: Path, reason: str) -> None:
            super().__init__(f"{path}: {reason}")
            self.path, self.reason = path, reason

    @dataclass
    class Batch:
        images: np.ndarray
        paths: list[Path]
        failures: list[Any]
        index: int

    def load_image(path: Path) -> Image.Image:
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except Exception as exc:
            raise ImageLoadError(Path(path), f"not an image ({type(exc).__name__})") from None

    def preprocess(img: Image.Image, cfg: Any) -> np.ndarray:
        w, h = img.size
        scale = cfg.resize_size / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = (w - cfg.input_size) // 2, (h - cfg.input_size) // 2
        img = img.crop((left, top, left + cfg.input_size, top + cfg.input_size))
        a = np.asarray(img, dtype=np.float32) / 255.0
        a = (a - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def collect_images(inputs: list[Any]) -> list[Path]:
        found = []
        for item in inputs:
            p = Path(item)
            if p.is_dir():
                found += sorted(q for q in p.rglob("*") if q.suffix.lower() in EXTENSIONS)
            elif p.exists():
                found.append(p)
            else:
                raise SacvitError(f"{p}: no such file or folder")
        if not found:
            raise SacvitError(f"no images found in {', '.join(str(i) for i in inputs)}")
        return found

    def sample_images() -> list[Path]:
        if not samples.exists():
            make_images(samples)
        return sorted(samples.glob("*.png"))

    def iter_batches(paths: list[Any], cfg: Any, batch_size: int, workers: int = 2, prefetch: int = 2):
        paths = [Path(p) for p in paths]
        for index, start in enumerate(range(0, len(paths), batch_size)):
            chunk = paths[start : start + batch_size]
            good, arrays, failures = [], [], []
            for p in chunk:
                try:
                    arrays.append(preprocess(load_image(p), cfg))
                    good.append(p)
                except ImageLoadError as exc:
                    failures.append(exc)
            size = cfg.input_size
            images = np.stack(arrays) if arrays else np.empty((0, 3, size, size), np.float32)
            yield Batch(images, good, failures, index)

    mod.ImageLoadError, mod.Batch = ImageLoadError, Batch
    mod.load_image, mod.preprocess, mod.collect_images = load_image, preprocess, collect_images
    mod.sample_images, mod.iter_batches = sample_images, iter_batches
    return mod


def ensure_image_module(monkeypatch: Any, tmp_path: Path) -> None:
    try:
        importlib.import_module("sacvit_deploy.runtime.images")
    except ImportError:
        monkeypatch.setitem(sys.modules, "sacvit_deploy.runtime.images", make_module(tmp_path / "samples"))
        import sacvit_deploy.runtime as runtime_package

        monkeypatch.setattr(
            runtime_package, "images", sys.modules["sacvit_deploy.runtime.images"], raising=False
        )
