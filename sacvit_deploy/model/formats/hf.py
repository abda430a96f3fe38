"""Hugging Face ``save_pretrained`` folders of ``ViTForImageClassification``: config.json + model.safetensors.

This is how DeiT without distillation is published there (``facebook/deit-*-patch16-*``, model_type
``vit``). The folder's ``config.json`` fixes the architecture and, through ``id2label``, the class
names; ``preprocessor_config.json``, when present, the normalisation and resampling. Every field is
checked (the folder is untrusted input) and anything this package's DeiT cannot compute the same way
is refused with the reason: a distillation token (HF's ``deit`` model type), an activation other than
exact GELU, a model without a classification head.

Tensor names are mapped to timm's; HF's separate query/key/value projections are fused into one
``qkv`` (rows q, k, v: the head split of each is the same in both). A single-stage row: the loader
resamples stage 1's position embedding and initialises the reuse block fresh.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from sacvit_deploy.core.config import ModelConfig, PreprocessConfig
from sacvit_deploy.core.errors import CheckpointError, ConfigError
from sacvit_deploy.core.formats import stage2_preset
from sacvit_deploy.core.validate import parse_json
from sacvit_deploy.model import _torch_floor  # noqa: F401  (refuses a torch below the floor)
from sacvit_deploy.model.config import VARIANTS, make_config
from sacvit_deploy.model.formats.base import FormatAdapter, RawCheckpoint

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_MAX_JSON = 16 * 2**20  # id2label of 21k classes is ~1 MB
_REGION_SIZE = {7: 5, 9: 8}  # LF-ViT's window side per stage-1 grid, as for the named variants
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL codes in preprocessor_config.json

# HF name -> timm name. save_pretrained writes the first spelling; transformers 5 modules use the second.
_RENAMES = [
    (r"vit\.embeddings\.cls_token", "cls_token"),
    (r"vit\.embeddings\.position_embeddings", "pos_embed"),
    (r"vit\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"vit\.(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"vit\.(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"vit\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"vit\.layers\.(\d+)\.attention\.o_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"vit\.encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"vit\.encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"vit\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"vit\.layernorm\.(weight|bias)", r"norm.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
]
_QKV = [
    re.compile(r"vit\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)"),
    re.compile(r"vit\.layers\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)"),
]
_PART = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}
_DISTILLED = (
    "a DeiT with a distillation token (Hugging Face's DeiT models always carry one); SAC-ViT has a class "
    "token only: use the ViTForImageClassification checkpoint of the non-distilled DeiT "
    "(e.g. facebook/deit-small-patch16-224) or timm's deit_*_patch16_* weights (--format deit)"
)


def _read_json(path: Path, what: str) -> Dict[str, Any]:
    try:
        if path.stat().st_size > _MAX_JSON:
            raise CheckpointError(
                f"{path}: {what} larger than {_MAX_JSON >> 20} MB; not a save_pretrained file"
            )
        data = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad or too deep JSON
        raise CheckpointError(
            f"{path}: unreadable {what} ({exc}); re-save the model with save_pretrained"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object; re-save the model with save_pretrained")
    return data


class _Fields:
    """Typed reads of an untrusted JSON object; each failure names the file, the field and the fix."""

    def __init__(self, data: Dict[str, Any], path: Path) -> None:
        self.data, self.path = data, path

    def bad(self, key: str, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {key} {why}; re-save the model with save_pretrained")

    def integer(self, key: str, default: Optional[int] = None, low: int = 1, high: int = 2**20) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.bad(key, f"is {value!r}, not an integer in {low}..{high}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.bad(key, f"is {value!r}, not a finite number")
        if not low < value < high:
            raise self.bad(key, f"is {value!r}, outside ({low}, {high})")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.bad(key, f"is {value!r}, not true or false")
        return value

    def text(self, key: str, default: Optional[str] = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self.bad(key, f"is {value!r}, not a string")
        return value

    def square(self, key: str, default: Optional[int] = None) -> int:
        value = self.data.get(key, default)
        if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise self.bad(key, f"is {value!r}, not one side in 1..4096 (square inputs only)")
        return value


def class_names(fields: _Fields, num_labels: int) -> Optional[Tuple[str, ...]]:
    """``id2label`` as a tuple in class order; None for transformers' placeholders LABEL_0, LABEL_1, ..."""
    raw = fields.data.get("id2label")
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) != num_labels:
        n = len(raw) if isinstance(raw, dict) else type(raw).__name__
        raise fields.bad("id2label", f"has {n} entries for {num_labels} classes (the head's rows)")
    index = {str(i): i for i in range(num_labels)}  # "0".."n-1" exactly: not "00", "²" or "١"
    names: Dict[int, str] = {}
    for key, value in raw.items():
        if key not in index or not isinstance(value, str):
            raise fields.bad(
                "id2label", f"entry {key!r}: {value!r} is not 'index': 'name' for an index below {num_labels}"
            )
        if not 1 <= len(value) <= 1000:
            raise fields.bad("id2label", f"entry {key!r} is an empty or over-long name")
        names[index[key]] = value
    ordered = tuple(names[i] for i in range(num_labels))
    if ordered == tuple(f"LABEL_{i}" for i in range(num_labels)):
        return None  # transformers' default names: the export's default names are no worse
    return ordered


def _side(fields: _Fields, key: str, high: int) -> int:
    """A square size as save_pretrained writes it: ``256``, ``{"shortest_edge": 256}`` or
    ``{"height": 256, "width": 256}``."""
    value = fields.data.get(key)
    if isinstance(value, dict) and set(value) == {"shortest_edge"}:
        value = value["shortest_edge"]
    elif isinstance(value, dict) and set(value) == {"height", "width"} and value["height"] == value["width"]:
        value = value["height"]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise fields.bad(key, f"is {fields.data.get(key)!r}, not one side in 1..{high} (square sizes only)")
    return value


def preprocess_for(folder: Path, img_size: int) -> Tuple[PreprocessConfig, List[str]]:
    """preprocessor_config.json's normalisation, resampling and resize (DeiT's crop_pct when absent)."""
    default = PreprocessConfig.for_resolution(img_size)
    path = folder / PREPROCESSOR
    if not path.is_file():
        return default, [
            f"no {PREPROCESSOR}: DeiT's preprocessing (resize {default.resize_size}, crop {img_size}, ImageNet mean/std)"
        ]
    fields = _Fields(_read_json(path, PREPROCESSOR), path)
    data, notes = fields.data, []
    mean, std = data.get("image_mean", default.mean), data.get("image_std", default.std)
    for key, value in (("image_mean", mean), ("image_std", std)):
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise fields.bad(key, f"is {value!r}, not 3 numbers (one per RGB channel)")
    resample = data.get("resample", 3)
    if resample not in _RESAMPLE or isinstance(resample, bool):
        raise fields.bad(
            "resample", f"is {resample!r}; supported: {', '.join(f'{k} ({v})' for k, v in _RESAMPLE.items())}"
        )
    # DeiTImageProcessor resizes to `size`, then center-crops `crop_size`; ViTImageProcessor resizes
    # to the model's input and crops nothing (no do_center_crop, no crop_size in its file).
    size = data.get("size")
    crops = "crop_size" in data or (isinstance(size, dict) and "shortest_edge" in size)
    center = fields.flag("do_center_crop", crops)
    if center and "crop_size" in data and _side(fields, "crop_size", 4 * img_size) != img_size:
        raise fields.bad("crop_size", f"is {data['crop_size']!r}, not the model's image_size {img_size}")
    resize = default.resize_size
    if size is not None:
        resize = _side(fields, "size", 4 * img_size)
        if not center and resize != img_size:
            raise fields.bad("size", f"is {size!r} without a center crop, not image_size {img_size}")
        if not center:
            notes.append(
                f"{PREPROCESSOR}: resize to {img_size}x{img_size} without a shortest-edge center crop; using "
                f"resize {img_size} + center crop {img_size} (the same for square images)"
            )
    try:
        pre = PreprocessConfig(
            input_size=img_size,
            resize_size=resize,
            interpolation=_RESAMPLE[resample],
            mean=tuple(mean),
            std=tuple(std),
        )
        pre.validate(lambda msg: ConfigError(msg))
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: {exc}; fix the file or delete it to use DeiT's preprocessing"
        ) from None
    return pre, notes


class Adapter(FormatAdapter):
    config_in_file = True

    def locate(self, path: Path) -> Optional[Path]:
        if not path.is_dir() or not (path / CONFIG).is_file():
            return None
        for name in WEIGHTS:
            if (path / name).is_file():
                return path / name
        if (path / "model.safetensors.index.json").is_file():
            raise CheckpointError(
                f"{path}: sharded weights (model.safetensors.index.json); re-save with "
                "save_pretrained(..., max_shard_size='20GB') so one model.safetensors holds them"
            )
        raise CheckpointError(
            f"{path}: {CONFIG} but no {' or '.join(WEIGHTS)}; pass the folder save_pretrained wrote"
        )

    def detect(self, raw: RawCheckpoint) -> bool:
        return raw.config is None and any(
            k.startswith(("vit.embeddings.", "deit.embeddings.")) for k in raw.state_dict
        )

    def mismatch(self, raw: RawCheckpoint) -> Optional[str]:
        if any(k.startswith("deit.") or "distillation" in k for k in raw.state_dict):
            return _DISTILLED
        if not self.detect(raw):
            return "no Hugging Face ViT tensors (vit.embeddings.*) inside; pass the folder save_pretrained wrote, or --format auto"
        return None

    def config(self, raw: RawCheckpoint, variant: Optional[str]) -> ModelConfig:
        folder = raw.path.parent
        path = folder / CONFIG
        if not path.is_file():
            raise CheckpointError(
                f"{raw.path}: Hugging Face weights without {CONFIG} beside them; pass the folder save_pretrained wrote"
            )
        f = _Fields(_read_json(path, CONFIG), path)
        model_type = f.text("model_type", "")
        if model_type == "deit":
            raise CheckpointError(f"{path}: {_DISTILLED}")
        if model_type != "vit":
            raise CheckpointError(
                f"{path}: model_type {model_type!r}; only ViT image classifiers (model_type 'vit') load here"
            )
        archs = f.data.get("architectures", ["ViTForImageClassification"])
        if not isinstance(archs, list) or "ViTForImageClassification" not in archs:
            raise CheckpointError(
                f"{path}: architectures {archs!r}; only ViTForImageClassification (a ViT with a classification head) loads here"
            )
        act = f.text("hidden_act", "gelu")
        if act != "gelu":
            raise CheckpointError(
                f"{path}: hidden_act {act!r}; this package's blocks compute exact GELU ('gelu') only"
            )
        dim = f.integer("hidden_size", high=8192)
        heads = f.integer("num_attention_heads", high=128)
        depth = f.integer("num_hidden_layers", high=128)
        hidden = f.integer("intermediate_size", high=8 * 8192)
        img, patch = f.square("image_size"), f.square("patch_size")
        chans = f.integer("num_channels", 3, high=16)
        eps = f.number("layer_norm_eps", 1e-12, 0.0, 1.0)
        qkv_bias = f.flag("qkv_bias", True)
        head = raw.state_dict.get("classifier.weight")
        if not isinstance(head, Tensor) or head.dim() != 2:
            raise CheckpointError(
                f"{raw.path}: no classifier.weight; a ViTModel without a classification head cannot be exported"
            )
        num_labels = int(head.shape[0])
        if "num_labels" in f.data and f.integer("num_labels", high=100_000) != num_labels:
            raise f.bad("num_labels", f"is {f.data['num_labels']} but the classifier has {num_labels} rows")
        ratio = hidden / dim
        if int(dim * ratio) != hidden:
            raise f.bad(
                "intermediate_size",
                f"{hidden} is not a whole multiple this package can build for hidden_size {dim}",
            )
        pre, notes = preprocess_for(folder, img)
        raw.notes.extend(notes)
        fields: Dict[str, Any] = {
            "img_size": img,
            "patch_size": patch,
            "in_chans": chans,
            "embed_dim": dim,
            "num_heads": heads,
            "depth": depth,
            "mlp_ratio": ratio,
            "qkv_bias": qkv_bias,
            "norm_eps": eps,
            "num_classes": num_labels,
            "class_names": class_names(f, num_labels),
            "preprocess": pre,
        }
        named = next(
            (
                name
                for name, spec in sorted(VARIANTS.items())
                if (spec["img_size"], spec["embed_dim"], spec["num_heads"], depth, patch, ratio, chans)
                == (img, dim, heads, 12, 16, 4.0, 3)
            ),
            None,
        )
        name = named or f"vit_d{dim}_l{depth}_h{heads}_{img}"
        if variant and variant != name:
            raise CheckpointError(
                f"{path}: the config fixes the architecture ({name}), not {variant}; drop --variant"
            )
        try:
            if named:
                return make_config(named, self.name, **fields)
            s = img // patch // 2
            return ModelConfig(
                variant=name,
                region_size=_REGION_SIZE.get(s, min(5, s)),
                score_layers=tuple(range(depth // 4, depth)),
                **{**stage2_preset(self.name), **fields},
            )
        except ConfigError as exc:
            raise CheckpointError(f"{path}: {exc}") from None

    def state_dict(self, raw: RawCheckpoint) -> Dict[str, Tensor]:
        if (reason := self.mismatch(raw)) is not None:
            raise CheckpointError(f"{raw.path}: {reason}")
        out: Dict[str, Tensor] = {}
        parts: Dict[Tuple[str, str], Dict[int, Tensor]] = {}
        unknown = []
        for key, value in raw.state_dict.items():
            for pattern in _QKV:
                m = pattern.fullmatch(key)
                if m:
                    parts.setdefault((m.group(1), m.group(3)), {})[_PART[m.group(2)]] = value
                    break
            else:
                for pattern, repl in _RENAMES:
                    new, n = re.subn(f"^{pattern}$", repl, key)
                    if n:
                        out[new] = value
                        break
                else:
                    unknown.append(key)
        if unknown:
            raise CheckpointError(
                f"{raw.path}: {len(unknown)} tensors a ViTForImageClassification does not have "
                f"({', '.join(sorted(unknown)[:3])}); pass a ViTForImageClassification save_pretrained folder"
            )
        for (block, kind), qkv in parts.items():
            if set(qkv) != {0, 1, 2}:
                raise CheckpointError(
                    f"{raw.path}: layer {block} has only some of query/key/value {kind}; the file is incomplete"
                )
            out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([qkv[0], qkv[1], qkv[2]], dim=0)
        return out
