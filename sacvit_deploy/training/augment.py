"""The DeiT training augmentations, written for this project (PIL, numpy and torch only).

* :class:`RandAugment`: timm's ``rand-m9-mstd0.5-inc1`` policy as DeiT / LF-ViT / CF-ViT use it: two
  operations per image drawn with replacement from 15 (the "increasing" variants, where a larger
  magnitude always means a stronger change), each applied with probability 0.5, with a magnitude of
  9 (of 10) plus Gaussian noise of std 0.5, clipped to [0, 10]; geometric operations fill with the
  dataset's mean colour and pick bilinear or bicubic at random.
* :class:`RandomErasing`: one box of 2%-33% of the image, aspect ratio 0.3-3.3, filled with per-pixel
  N(0, 1) noise in normalised space (timm's ``pixel`` mode), with probability ``prob``.
* :class:`MixupCutmix`: one Beta(alpha, alpha) mixing factor per batch; Mixup or CutMix (switch
  probability 0.5 when both are on); each sample is mixed with the one at the mirrored position of
  its batch; targets are label-smoothed one-hot vectors mixed the same way.

Every random choice comes from a numpy Generator the caller seeds (``(seed, epoch, sample)`` per
image, ``(seed, epoch, batch)`` per batch), never from a global RNG, so augmentation is the same
whatever the number of processes and loader workers, and after a resume. Why not kornia: see
docs/training.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch import Tensor

MAX_MAGNITUDE = 10.0
_GEOMETRIC_RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(img: Image.Image, matrix: Tuple[float, ...], fill: Tuple[int, ...], rng: np.random.Generator):
    resample = _GEOMETRIC_RESAMPLE[int(rng.integers(2))]
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def _enhance(cls):
    def op(img: Image.Image, m: float, fill, rng: np.random.Generator) -> Image.Image:
        return cls(img).enhance(1.0 + _signed(0.9 * m / MAX_MAGNITUDE, rng))

    return op


def _rotate(img, m, fill, rng):
    resample = _GEOMETRIC_RESAMPLE[int(rng.integers(2))]
    return img.rotate(_signed(30.0 * m / MAX_MAGNITUDE, rng), resample=resample, fillcolor=fill)


def _shear_x(img, m, fill, rng):
    return _affine(img, (1, _signed(0.3 * m / MAX_MAGNITUDE, rng), 0, 0, 1, 0), fill, rng)


def _shear_y(img, m, fill, rng):
    return _affine(img, (1, 0, 0, _signed(0.3 * m / MAX_MAGNITUDE, rng), 1, 0), fill, rng)


def _translate_x(img, m, fill, rng):
    dx = _signed(0.45 * m / MAX_MAGNITUDE, rng) * img.size[0]
    return _affine(img, (1, 0, dx, 0, 1, 0), fill, rng)


def _translate_y(img, m, fill, rng):
    dy = _signed(0.45 * m / MAX_MAGNITUDE, rng) * img.size[1]
    return _affine(img, (1, 0, 0, 0, 1, dy), fill, rng)


def _posterize(img, m, fill, rng):
    # Increasing: magnitude 0 keeps 4 bits, 10 would keep none; at least 1 bit stays.
    return ImageOps.posterize(img, max(1, 4 - int(4 * m / MAX_MAGNITUDE)))


def _solarize(img, m, fill, rng):
    return ImageOps.solarize(img, 256 - int(256 * m / MAX_MAGNITUDE))


def _solarize_add(img, m, fill, rng):
    add = int(110 * m / MAX_MAGNITUDE)
    x = np.asarray(img, dtype=np.int16)
    x = np.where(x < 128, np.minimum(x + add, 255), x)
    return Image.fromarray(x.astype(np.uint8), img.mode)


OPS = {
    "AutoContrast": lambda img, m, fill, rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, fill, rng: ImageOps.equalize(img),
    "Invert": lambda img, m, fill, rng: ImageOps.invert(img),
    "Rotate": _rotate,
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _enhance(ImageEnhance.Color),
    "ContrastIncreasing": _enhance(ImageEnhance.Contrast),
    "BrightnessIncreasing": _enhance(ImageEnhance.Brightness),
    "SharpnessIncreasing": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateXRel": _translate_x,
    "TranslateYRel": _translate_y,
}


@dataclass(frozen=True)
class RandAugment:
    """``num_ops`` operations per image, each with probability ``prob`` (see the module docstring)."""

    magnitude: float = 9.0
    magnitude_std: float = 0.5
    num_ops: int = 2
    prob: float = 0.5
    fill: Tuple[int, int, int] = (124, 116, 104)  # DeiT: the ImageNet mean in 0-255

    @classmethod
    def from_string(cls, spec: str, fill: Optional[Tuple[int, int, int]] = None) -> RandAugment:
        """timm's notation: ``rand-m9-mstd0.5-inc1`` (``-nN`` sets the number of operations)."""
        parts = spec.split("-")
        if parts[0] != "rand" or len(parts) < 2:
            raise ValueError(f"{spec!r}: expected a RandAugment string like rand-m9-mstd0.5-inc1")
        fields: Dict[str, float] = {}
        for part in parts[1:]:
            match = re.fullmatch(r"(mstd|inc|m|n|p)([0-9.]+)", part)
            if not match:
                raise ValueError(f"{spec!r}: unknown part {part!r} (known: mM, nN, mstdS, pP, inc1)")
            fields[match.group(1)] = float(match.group(2))
        if fields.get("inc", 1) != 1:
            raise ValueError(f"{spec!r}: only the increasing operations (inc1) are implemented")
        kwargs = {
            "magnitude": fields.get("m", 9.0),
            "magnitude_std": fields.get("mstd", 0.5),
            "num_ops": int(fields.get("n", 2)),
            "prob": fields.get("p", 0.5),
        }
        if not 0 <= kwargs["magnitude"] <= MAX_MAGNITUDE or kwargs["num_ops"] < 1:
            raise ValueError(f"{spec!r}: magnitude must be in [0, 10] and the number of operations >= 1")
        return cls(**kwargs, **({"fill": fill} if fill else {}))

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        names = list(OPS)
        for i in rng.integers(0, len(names), size=self.num_ops):
            if rng.random() >= self.prob:
                continue
            m = self.magnitude
            if self.magnitude_std > 0:
                m = float(np.clip(rng.normal(m, self.magnitude_std), 0.0, MAX_MAGNITUDE))
            img = OPS[names[int(i)]](img, m, self.fill, rng)
        return img


@dataclass(frozen=True)
class RandomErasing:
    """One N(0, 1)-noise box on a normalised (C, H, W) tensor with probability ``prob``."""

    prob: float = 0.25
    area: Tuple[float, float] = (0.02, 1 / 3)
    aspect: Tuple[float, float] = (0.3, 1 / 0.3)

    def __call__(self, x: Tensor, rng: np.random.Generator) -> Tensor:
        if rng.random() >= self.prob:
            return x
        c, h, w = x.shape
        log_aspect = (math.log(self.aspect[0]), math.log(self.aspect[1]))
        for _ in range(10):
            target = rng.uniform(*self.area) * h * w
            aspect = math.exp(rng.uniform(*log_aspect))
            eh, ew = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < eh < h and 0 < ew < w:
                top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
                x = x.clone()
                x[:, top : top + eh, left : left + ew] = torch.from_numpy(
                    rng.standard_normal((c, eh, ew), dtype=np.float32)
                )
                return x
        return x


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """(B,) class indices -> (B, C) targets: 1 - smoothing + smoothing/C on the label, smoothing/C elsewhere."""
    off = smoothing / num_classes
    t = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return t.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)


@dataclass(frozen=True)
class MixupCutmix:
    """Batch-level Mixup / CutMix with label smoothing (DeiT: alpha 0.8 / 1.0, prob 1, switch 0.5)."""

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.1

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(self, x: Tensor, labels: Tensor, rng: np.random.Generator) -> Tuple[Tensor, Tensor]:
        target = smooth_one_hot(labels, self.num_classes, self.smoothing)
        if not self.active or rng.random() >= self.prob:
            return x, target
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        partner = x.flip(0)
        if use_cutmix:
            h, w = x.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the share the box actually left
        else:
            x = x * lam + partner * (1.0 - lam)
        return x, target * lam + target.flip(0) * (1.0 - lam)
