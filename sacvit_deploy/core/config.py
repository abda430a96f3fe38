"""The model configuration that travels in every manifest: one frozen dataclass and its preprocessing.

Pure data (no torch): the artifact contract in :mod:`sacvit_deploy.core.manifest` carries it, and
:mod:`sacvit_deploy.model.config` builds named variants of it for each checkpoint format.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from sacvit_deploy.core.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SELECTIONS = ("window", "topk")
ATTENTIONS = ("global", "cluster")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
CROPS = ("center",)
# Sanity bounds: far beyond any real ViT, close enough that a forged config cannot make export or
# a runtime allocate gigabytes before a shape check (62.5M classes would be a 16 GB head).
LIMITS = {
    "img_size": 4096,
    "patch_size": 64,
    "in_chans": 16,
    "num_classes": 100_000,
    "embed_dim": 8192,
    "depth": 128,
    "num_heads": 128,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """DeiT evaluation preprocessing: resize the shorter side, center crop, normalise."""

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bicubic"
    crop: str = "center"
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    def validate(self, bad: Any) -> None:
        _check_types(self, bad, "preprocess.")
        if not 1 <= self.input_size <= LIMITS["img_size"]:
            raise bad(f"preprocess.input_size {self.input_size} must be in 1..{LIMITS['img_size']}")
        if not self.input_size <= self.resize_size <= 4 * self.input_size:
            raise bad(
                f"preprocess.resize_size {self.resize_size} must be in {self.input_size}..{4 * self.input_size} "
                "(the crop is taken from the resized image)"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise bad(
                f"preprocess.interpolation {self.interpolation!r}: use one of {', '.join(INTERPOLATIONS)}"
            )
        if self.crop not in CROPS:
            raise bad(f"preprocess.crop {self.crop!r}: use one of {', '.join(CROPS)}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise bad(f"preprocess.{name} {list(values)} must be 3 finite numbers (one per RGB channel)")
        if not all(v > 0 for v in self.std):
            raise bad(f"preprocess.std {list(self.std)} must be positive (it divides the pixels)")

    @classmethod
    def for_resolution(cls, input_size: int) -> PreprocessConfig:
        # DeiT's crop_pct of 0.875: 224 -> 256, 288 -> 329.
        return cls(input_size=input_size, resize_size=int(input_size / 0.875))


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a SAC-ViT model (and its single-stage DeiT baseline)."""

    variant: str = "deit_small_224"
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    # Stage-2 construction (see SPEC "Token clustering" and "Stage 2").
    selection: str = "window"
    attention: str = "cluster"
    region_size: int = 5
    target_ratio: float = 0.88
    score_layers: Tuple[int, ...] = (3, 4, 5, 6, 7, 8, 9, 10, 11)
    ema_decay: float = 0.99
    exit_threshold: float = 0.76
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    class_names: Optional[Tuple[str, ...]] = None

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def fine_grid(self) -> int:
        """Side of the full-resolution patch grid (14 for 224 px)."""
        return self.img_size // self.patch_size

    @property
    def coarse_grid(self) -> int:
        """S: side of the stage-1 patch grid (7 for 224 px)."""
        return self.fine_grid // 2

    @property
    def stage1_size(self) -> int:
        """Stage-1 input resolution in pixels (112 for 224 px)."""
        return self.coarse_grid * self.patch_size

    @property
    def num_coarse(self) -> int:
        return self.coarse_grid**2

    @property
    def num_fine(self) -> int:
        return self.fine_grid**2

    @property
    def num_targets(self) -> int:
        """k: coarse target tokens (22 for LF-ViT 7x7, 25 for CF-ViT 7x7)."""
        pool = self.region_size**2 if self.selection == "window" else self.num_coarse
        return math.ceil(self.target_ratio * pool - 1e-9)

    @property
    def num_fine_targets(self) -> int:
        return 4 * self.num_targets

    @property
    def num_nontargets(self) -> int:
        return self.num_coarse - self.num_targets

    @property
    def stage1_tokens(self) -> int:
        return 1 + self.num_coarse

    @property
    def stage2_tokens(self) -> int:
        """Stage-2 sequence length: cls + 4k fine targets + non-targets (116 for LF-ViT 7x7)."""
        return 1 + self.num_fine_targets + self.num_nontargets

    @property
    def baseline_tokens(self) -> int:
        return 1 + self.num_fine

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    # ---- validation and (de)serialisation -------------------------------------------------------
    def validate(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"invalid model config ({_show(self.variant)}): {msg}")

        _check_types(self, bad)
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if not 1 <= value <= limit:
                raise bad(f"{name} {value} must be in 1..{limit}")
        if not 0.0 < self.mlp_ratio <= 64 or not 0.0 < self.norm_eps < 1.0:
            raise bad(f"mlp_ratio {self.mlp_ratio} / norm_eps {self.norm_eps} out of range")
        if not (math.isfinite(self.exit_threshold) and self.exit_threshold >= 0.0):
            raise bad(f"exit_threshold {self.exit_threshold} must be a finite number >= 0")
        self.preprocess.validate(bad)

        if self.img_size % (2 * self.patch_size):
            raise bad(f"img_size {self.img_size} must be a multiple of 2*patch_size ({2 * self.patch_size})")
        if self.embed_dim % self.num_heads:
            raise bad(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.selection not in SELECTIONS:
            raise bad(f"selection {self.selection!r} is not one of {', '.join(SELECTIONS)}")
        if self.attention not in ATTENTIONS:
            raise bad(f"attention {self.attention!r} is not one of {', '.join(ATTENTIONS)}")
        if self.selection == "window" and not 1 <= self.region_size <= self.coarse_grid:
            raise bad(f"region_size {self.region_size} must be in 1..{self.coarse_grid} (the stage-1 grid)")
        if not 0.0 < self.target_ratio <= 1.0:
            raise bad(f"target_ratio {self.target_ratio} must be in (0, 1]")
        if not self.score_layers or any(not 0 <= i < self.depth for i in self.score_layers):
            raise bad(
                f"score_layers {self.score_layers} must be non-empty block indices below depth {self.depth}"
            )
        if list(self.score_layers) != sorted(set(self.score_layers)):
            raise bad(f"score_layers {self.score_layers} must be strictly increasing")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad(f"ema_decay {self.ema_decay} must be in [0, 1)")
        if self.num_classes < 1:
            raise bad("num_classes must be at least 1")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise bad(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.preprocess.input_size != self.img_size:
            raise bad(f"preprocess.input_size {self.preprocess.input_size} != img_size {self.img_size}")

    def replace(self, **changes: Any) -> ModelConfig:
        if "img_size" in changes and "preprocess" not in changes:
            changes["preprocess"] = PreprocessConfig.for_resolution(changes["img_size"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["score_layers"] = list(self.score_layers)
        d["preprocess"]["mean"] = list(self.preprocess.mean)
        d["preprocess"]["std"] = list(self.preprocess.std)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError("model config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"model config has unknown fields {unknown}; it was written by a newer sacvit-deploy"
            )
        d = dict(data)
        try:
            if "preprocess" in d:
                pp = dict(d["preprocess"])
                pp["mean"] = tuple(pp.get("mean", IMAGENET_MEAN))
                pp["std"] = tuple(pp.get("std", IMAGENET_STD))
                d["preprocess"] = PreprocessConfig(**pp)
            if "score_layers" in d:
                d["score_layers"] = tuple(d["score_layers"])
            if d.get("class_names") is not None:
                d["class_names"] = tuple(d["class_names"])
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"malformed model config: {exc}") from None


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text.encode("unicode_escape").decode("ascii")[:80]


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_types(obj: Any, bad: Any, prefix: str = "") -> None:
    """Every scalar field has its declared type (JSON gives "10", 10.0 or true just as easily)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind = str(f.type).split(" ")[0]
        if kind not in _TYPES:
            continue
        ok = isinstance(value, _TYPES[kind]) and (kind == "bool" or not isinstance(value, bool))
        if kind == "float" and ok and not math.isfinite(value):
            raise bad(f"{prefix}{f.name} {value!r} must be a finite number")
        if not ok:
            raise bad(f"{prefix}{f.name} {_show(value)} must be of type {kind}")
    if hasattr(obj, "score_layers") and not all(
        isinstance(i, int) and not isinstance(i, bool) for i in obj.score_layers
    ):
        raise bad(f"score_layers {obj.score_layers} must be block indices (integers)")
    names = getattr(obj, "class_names", None)
    if names is not None and not all(isinstance(n, str) for n in names):
        raise bad("class_names must be strings")
