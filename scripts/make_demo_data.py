#!/usr/bin/env python3
"""Write the demo data set: scikit-learn's handwritten digits placed on varied 96 px scenes.

    python scripts/make_demo_data.py OUT_DIR [--seed 0]

Each of the 1797 8x8 digits (scikit-learn's copy of the UCI set, shipped inside the package, no
download) is assigned to one split (train 70%, val 10%, test 20%), so the same handwriting never appears
in two splits, and rendered several times (train 16, val 4, test 3) with a random difficulty d in [0, 1]
(d = u^1.5 for a uniform u: more easy images than hard ones, so the model learns to read digits):

* easy (d near 0): a large digit (about 69% of the image height), high contrast, no clutter, slight
  rotation;
* hard (d near 1): a small digit (about 22%: 21 px, 10 px in stage 1's half-resolution input), low
  contrast, stroke-like clutter around it, stronger rotation.

Every render also varies the digit's width (aspect), stroke weight and position (centre within +-12.5%
of the image). Backgrounds are light tinted colours: flat, gradients, soft stripes or soft blobs.
Output: an ImageFolder ``OUT_DIR/{train,val,test}/<digit>/*.png`` plus ``OUT_DIR/meta.csv`` with every
image's parameters. The test split is for the final report only: never for training or for choosing
the exit threshold. Development only: needs scikit-learn (``pip install scikit-learn``); the package
does not. Deterministic: each image's randomness is seeded by (seed, split, digit index, render).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

CANVAS = 96
# The eval preprocessing (resize to 109, center crop 96) keeps the central 84 px: digits stay inside.
MARGIN = 0.08
JITTER = 0.125  # digit centre within +-12.5% of the canvas from its centre
SPLITS = {"train": (0.70, 16), "val": (0.10, 4), "test": (0.20, 3)}  # share of digits, renders each


def load_digits_8x8() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def split_indices(n: int, seed: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng([seed, 12345]).permutation(n)
    n_train = round(SPLITS["train"][0] * n)
    n_val = round(SPLITS["val"][0] * n)
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A paper-like colour: light (luminance 0.55-0.95) with a random tint."""
    return np.clip(rng.uniform(0.55, 0.95) + rng.uniform(-0.12, 0.12, 3), 0, 1).astype(np.float32)


def background(rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: flat, gradient, soft stripes or soft blobs."""
    n = CANVAS
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    c1 = _colour(rng)
    c2 = np.clip(c1 + rng.uniform(-0.15, 0.15, 3), 0, 1).astype(np.float32)  # gentle: the digit stands out
    kind = rng.integers(4)
    if kind == 0:
        t = np.zeros((n, n), np.float32)
    elif kind == 1:
        a = rng.uniform(0, 2 * math.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy) / math.sqrt(2) + 0.5
    elif kind == 2:
        a, f = rng.uniform(0, 2 * math.pi), rng.uniform(1.0, 3.0)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * f * (np.cos(a) * xx + np.sin(a) * yy) + rng.uniform(0, 6.3))
    else:
        t = np.zeros((n, n), np.float32)
        for _ in range(rng.integers(2, 6)):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.35)
            t = np.maximum(t, np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
    t = t.clip(0, 1)[..., None]
    return (c1 * (1 - t) + c2 * t).astype(np.float32)


def digit_mask(
    digit: np.ndarray, size: int, angle: float, aspect: float = 1.0, weight: float = 0.15
) -> np.ndarray:
    """The 8x8 digit upscaled to ``size`` px high (bicubic), ``aspect`` times as wide, rotated.

    ``weight`` is the level below which the blurred upscale counts as paper: lower gives bolder
    strokes. Returns a float32 alpha in [0, 1].
    """
    img = Image.fromarray((digit * 255).astype(np.uint8), "L")
    img = img.resize((max(4, round(size * aspect)), size), Image.Resampling.BICUBIC)
    img = img.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    m = np.asarray(img, np.float32) / 255.0
    return np.clip((m - weight) / 0.7, 0, 1)  # crisper strokes than the raw bicubic blur


def clutter_mask(rng: np.random.Generator, count: int, width: int) -> np.ndarray:
    """Stroke-like distractors: short lines and arcs as wide as the digit's strokes."""
    img = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(count):
        x, y = rng.uniform(0, CANVAS, 2)
        length = rng.uniform(0.05, 0.23) * CANVAS
        if rng.random() < 0.5:
            a = rng.uniform(0, 2 * math.pi)
            draw.line([(x, y), (x + length * math.cos(a), y + length * math.sin(a))], fill=255, width=width)
        else:
            start = rng.uniform(0, 360)
            box = [x - length / 2, y - length / 2, x + length / 2, y + length / 2]
            draw.arc(box, start, start + rng.uniform(60, 150), fill=255, width=width)
    return np.asarray(img, np.float32) / 255.0


def render(digit: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, dict[str, float]]:
    d = float(rng.uniform(0, 1) ** 1.5)  # more easy than hard: easy ones teach the model to read digits
    # Digit height as a share of the canvas: about 0.69 (easy) down to 0.22 (hard).
    rel = math.exp(math.log(0.69) + d * math.log(0.22 / 0.69) + rng.normal(0, 0.08))
    size = int(np.clip(round(rel * CANVAS), 0.19 * CANVAS, 0.75 * CANVAS))
    angle = float(rng.uniform(-1, 1) * (5 + 15 * d))
    contrast = float((0.8 - 0.6 * d) * rng.uniform(0.9, 1.1))
    n_clutter = int(rng.poisson(5 * d * d))

    bg = background(rng)
    aspect = float(math.exp(rng.normal(0, 0.12)))
    weight = float(rng.uniform(0.05, 0.3))
    mask = digit_mask(digit, size, angle, aspect, weight)
    h, w = mask.shape
    # Centre within +-JITTER px of the image centre, and inside the margins.
    margin, jitter = round(MARGIN * CANVAS), JITTER * CANVAS
    top, left = (
        int(
            np.clip(
                round((CANVAS - n) / 2 + rng.uniform(-jitter, jitter)),
                margin,
                max(margin, CANVAS - margin - n),
            )
        )
        for n in (h, w)
    )
    alpha = np.zeros((CANVAS, CANVAS), np.float32)
    alpha[top : top + h, left : left + w] = mask[: CANVAS - top, : CANVAS - left]

    # Ink: darker than the background under the digit by `contrast` (mostly in brightness).
    under = bg[top : top + h, left : left + w].reshape(-1, 3).mean(axis=0)
    direction = 0.8 * np.ones(3, np.float32) + 0.4 * rng.uniform(-1, 1, 3).astype(np.float32)
    ink = np.clip(under - contrast * direction, 0, 1)

    if n_clutter:
        stroke = max(1, round(size / 8))
        alpha_clutter = clutter_mask(rng, n_clutter, stroke)
        clutter_ink = np.clip(ink + rng.uniform(-0.1, 0.1, 3), 0, 1).astype(np.float32)
        bg = bg * (1 - alpha_clutter[..., None]) + clutter_ink * alpha_clutter[..., None]
    out = bg * (1 - alpha[..., None]) + ink * alpha[..., None]
    img = Image.fromarray((out.clip(0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    meta = {
        "difficulty": round(d, 4),
        "size_px": size,
        "angle": round(angle, 2),
        "aspect": round(aspect, 3),
        "stroke_level": round(weight, 3),
        "contrast": round(contrast, 4),
        "clutter": n_clutter,
    }
    return img, meta


def make_demo_data(out_dir: Union[str, Path], seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    images, labels = load_digits_8x8()
    rows = []
    for split_id, (split, idx) in enumerate(split_indices(len(labels), seed).items()):
        renders = SPLITS[split][1]
        for label in range(10):
            (out_dir / split / str(label)).mkdir(parents=True, exist_ok=True)
        for i in idx:
            for k in range(renders):
                rng = np.random.default_rng([seed, split_id, int(i), k])
                img, meta = render(images[i], rng)
                rel = Path(split) / str(labels[i]) / f"d{i:04d}_{k}.png"
                img.save(out_dir / rel, compress_level=1)
                rows.append(
                    {"split": split, "path": str(rel), "label": int(labels[i]), "source": int(i), **meta}
                )
    with (out_dir / "meta.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_demo_data(args.out_dir, args.seed)
    counts = {s: sum(1 for _ in (args.out_dir / s).rglob("*.png")) for s in SPLITS}
    print(f"{args.out_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))


if __name__ == "__main__":
    main()
