"""Checkpoint loading and saving. Checkpoints are untrusted input.

Formats are rows of ``core.formats.CHECKPOINT_FORMATS``; each row names an adapter module under
``model/formats/`` (detect, config, tensor names). This module reads files safely and dispatches:
the user names a format, or ``auto`` asks each adapter in the table's order. A single-stage row
(``two_stage`` False: timm DeiT, Hugging Face ViT) gets stage 1's position embedding resampled from
the fine grid and a freshly initialised reuse block.

Nothing is ever unpickled beyond tensors and plain containers: safetensors, or
``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allowed (training scripts store
their arguments that way). A pickle that would run code fails with a CheckpointError, unexecuted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from sacvit_deploy.core.errors import CheckpointError, ConfigError
from sacvit_deploy.core.fileinfo import not_a_regular_file
from sacvit_deploy.core.formats import AUTO, CHECKPOINT_FORMATS, CheckpointFormat
from sacvit_deploy.core.validate import parse_json
from sacvit_deploy.core.version import __version__
from sacvit_deploy.model import _torch_floor  # noqa: F401  (refuses a torch below the floor)
from sacvit_deploy.model.config import ModelConfig
from sacvit_deploy.model.formats import FormatAdapter, RawCheckpoint, adapter_for
from sacvit_deploy.model.formats.base import grid_side, guess_variant, kind_of
from sacvit_deploy.model.sacvit import DeiT, SACViT

FORMAT_TAG = "sacvit-deploy"
FORMAT_VERSION = 1
__all__ = [
    "LoadedCheckpoint",
    "RawCheckpoint",
    "guess_variant",
    "load_baseline",
    "load_checkpoint",
    "read_checkpoint",
    "resample_pos_embed",
    "save_checkpoint",
]


@dataclass
class LoadedCheckpoint:
    model: SACViT
    cfg: ModelConfig
    fmt: str
    path: Path
    notes: List[str] = field(default_factory=list)


# ---- reading files safely ---------------------------------------------------------------------------
def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < 100 * 2**20 and head[8:9] == b"{"


@contextlib.contextmanager
def _namespace_allowed() -> Iterator[None]:
    """Allow ``argparse.Namespace`` in ``torch.load(weights_only=True)``: a scoped ``safe_globals``
    (torch 2.5+), else the process-wide ``add_safe_globals`` (torch 2.4)."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals([argparse.Namespace]):
            yield
        return
    serialization.add_safe_globals([argparse.Namespace])
    yield


class _AllowlistUnpickler(pickle.Unpickler):
    """torch 2.3's weights-only allowlist plus ``argparse.Namespace``, for the torch that has no
    ``add_safe_globals`` (its weights-only loader cannot build any other class). Every class or
    function a pickle names passes through ``find_class``, so nothing outside the list is reached."""

    def find_class(self, module: str, name: str) -> Any:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = {**_get_allowed_globals(), "argparse.Namespace": argparse.Namespace}
        found = allowed.get(f"{module}.{name}")
        if found is None:
            raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}")
        return found


def _allowlist_pickle_module() -> Any:
    module = types.ModuleType("sacvit_allowlist_pickle")
    module.Unpickler = _AllowlistUnpickler  # type: ignore[attr-defined]
    module.load = lambda f, **kw: _AllowlistUnpickler(f, **kw).load()  # type: ignore[attr-defined]
    return module


def _torch_load(path: Path) -> Any:
    if hasattr(torch.serialization, "add_safe_globals"):
        with _namespace_allowed():
            return torch.load(path, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_allowlist_pickle_module())


def _torch_load_untrusted(path: Path) -> Any:
    try:
        return _torch_load(path)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        blocked = re.search(
            r"(unsupported GLOBAL [^\s]+|Unsupported global: [^\s]+|Unsupported class [^\s]+)", msg
        )
        with path.open("rb") as f:
            is_pickle = f.read(1) == b"\x80"  # PROTO opcode: a real pickle stream, not random bytes
        if blocked or is_pickle:
            hint = f" ({blocked.group(1)})" if blocked else ""
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects beyond tensors, and unpickling "
                f"them could run code{hint}; re-save it as a plain state_dict (torch.save(model.state_dict())) "
                "or as safetensors"
            ) from None
        raise CheckpointError(_not_a_checkpoint(path, exc)) from None
    except Exception as exc:  # garbage input can fail in any way inside the unpickler or zip reader
        raise CheckpointError(_not_a_checkpoint(path, exc)) from None


def _not_a_checkpoint(path: Path, exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0][:120] if text else type(exc).__name__
    return (
        f"{path}: not a PyTorch or safetensors checkpoint ({first}); pass the .pth/.pt/.safetensors file "
        "that holds the model weights"
    )


def _strip_prefix(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    # DistributedDataParallel and torch.compile prefixes.
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def read_checkpoint(path: Union[str, Path]) -> RawCheckpoint:
    """Read tensors and metadata from a safetensors or weights-only torch file."""
    path = Path(path)
    problem = not_a_regular_file(path)
    if problem == "no such file":
        raise CheckpointError(f"{path}: no such file; check the checkpoint path")
    if problem == "is a folder":
        raise CheckpointError(f"{path}: is a folder; pass the checkpoint file inside it")
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}; pass the checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file; the checkpoint is truncated or was never written")

    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors file ({exc}); re-export it") from None
        cfg = None
        if metadata.get("format") == FORMAT_TAG:
            try:
                cfg = ModelConfig.from_dict(parse_json(metadata["config"]))
            except (KeyError, ValueError, ConfigError) as exc:  # ValueError: bad or too deep JSON
                raise CheckpointError(
                    f"{path}: sacvit-deploy checkpoint with an unreadable config ({exc})"
                ) from None
        _check_finite(path, sd)
        return RawCheckpoint(path, _strip_prefix(sd), metadata, cfg)

    with path.open("rb") as f:
        head = f.read(4)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":
        # Neither torch.save's zip archive nor a legacy pickle (nor safetensors, tested above).
        raise CheckpointError(
            f"{path}: not a checkpoint (not a PyTorch or safetensors checkpoint file, which starts with "
            "a zip, pickle or safetensors header); pass the .pth/.pt/.safetensors file that holds the model weights"
        )
    obj = _torch_load_untrusted(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict or a checkpoint dict")
    metadata: Dict[str, Any] = {}
    cfg = None
    if obj.get("format") == FORMAT_TAG:
        try:
            cfg = ModelConfig.from_dict(obj["config"])
        except (KeyError, ConfigError) as exc:
            raise CheckpointError(
                f"{path}: sacvit-deploy checkpoint with an unreadable config ({exc})"
            ) from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj.get(key), dict):
            sd = obj[key]
            metadata = {k: v for k, v in obj.items() if k != key}
            break
    else:
        sd = obj
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: contains no tensors; pass the file that holds the model weights")
    _check_finite(path, tensors)
    return RawCheckpoint(path, _strip_prefix(tensors), metadata, cfg)


# ---- understanding what is inside ------------------------------------------------------------------
def open_checkpoint(
    path: Union[str, Path], fmt: str
) -> Tuple[RawCheckpoint, CheckpointFormat, FormatAdapter]:
    """Read the file (or the folder's weights file) and decide its format: the user's, checked against
    the file, or for ``auto`` the first row whose adapter recognises it."""
    if fmt != AUTO and fmt not in CHECKPOINT_FORMATS:
        raise CheckpointError(
            f"unknown checkpoint format {fmt!r}; use one of: {AUTO}, {', '.join(CHECKPOINT_FORMATS)}"
        )
    path = Path(path)
    names = list(CHECKPOINT_FORMATS) if fmt == AUTO else [fmt]
    for name in names:  # folder layouts (save_pretrained): the adapter names the weights file inside
        weights = adapter_for(name).locate(path)
        if weights is not None:
            path = weights
            break
    raw = read_checkpoint(path)
    if fmt == AUTO:
        for name in CHECKPOINT_FORMATS:
            if adapter_for(name).detect(raw):
                fmt = name
                break
        else:
            if kind_of(raw.state_dict) == "two-stage":
                raise CheckpointError(
                    f"{raw.path}: an LF-ViT/CF-ViT-layout checkpoint, and the two cannot be told apart from "
                    "the keys; pass --format lf-vit or --format cf-vit"
                )
            raise CheckpointError(
                f"{raw.path}: no DeiT / SAC-ViT weights inside (no cls_token/pos_embed keys) and no format "
                f"recognises it ({', '.join(CHECKPOINT_FORMATS)}); is this the right file?"
            )
    adapter = adapter_for(fmt)
    problem = adapter.mismatch(raw)
    if problem is not None:
        raise CheckpointError(f"{raw.path}: {problem}")
    return raw, CHECKPOINT_FORMATS[fmt], adapter


def _mismatch_error(
    raw: RawCheckpoint, model_sd: Dict[str, Tensor], sd: Dict[str, Tensor], cfg: ModelConfig
) -> None:
    missing = sorted(set(model_sd) - set(sd))
    unexpected = sorted(set(sd) - set(model_sd))
    wrong = [k for k in model_sd if k in sd and tuple(sd[k].shape) != tuple(model_sd[k].shape)]
    guess = guess_variant(sd)
    looks = (
        f"; the checkpoint looks like {guess}, pass --variant {guess}"
        if guess and guess != cfg.variant
        else ""
    )
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{raw.path}: shape mismatch for {k}: checkpoint {tuple(sd[k].shape)} vs model "
            f"{tuple(model_sd[k].shape)} ({len(wrong)} tensors differ) for variant {cfg.variant}{looks}"
        )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {len(missing)} keys ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
            )
        if unexpected:
            parts.append(
                f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
            )
        raise CheckpointError(
            f"{raw.path}: {'; '.join(parts)} for a {cfg.variant} SAC-ViT{looks or ''}; check --format and --variant"
        )


def _check_config_against_tensors(
    raw: RawCheckpoint,
    sd: Dict[str, Tensor],
    cfg: ModelConfig,
    skip: Tuple[str, ...] = (),
    from_file: bool = False,
) -> None:
    """Compare ``cfg``'s tensor shapes with the file's BEFORE any model is built: a config that
    claims 62.5M classes or depth 10^6 is one line, not a 16 GB allocation. The cheap fields first,
    then every tensor, against a model built on the meta device (shapes only, no memory)."""
    head, cls = sd.get("head.weight"), sd.get("cls_token")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    facts = [
        (
            "num_classes",
            cfg.num_classes,
            int(head.shape[0]) if isinstance(head, Tensor) and head.dim() == 2 else None,
        ),
        (
            "embed_dim",
            cfg.embed_dim,
            int(cls.shape[-1]) if isinstance(cls, Tensor) and cls.dim() == 3 else None,
        ),
        ("depth", cfg.depth, len(blocks) if blocks else None),
    ]
    for name, claimed, found in facts if from_file else ():  # a --variant mismatch: the message below
        if found is not None and claimed != found:
            raise CheckpointError(
                f"{raw.path}: the config says {name} {claimed} but the tensors have {found}; "
                "the config does not belong to these weights (re-save the checkpoint)"
            )
    with torch.device("meta"):
        expected = {k: v for k, v in SACViT(cfg).state_dict().items() if not k.startswith(skip)}
    given = {k: v for k, v in sd.items() if not k.startswith(skip)}
    if set(expected) != set(given) or any(
        tuple(given[k].shape) != tuple(v.shape) for k, v in expected.items()
    ):
        _mismatch_error(raw, expected, given, cfg)


def _check_finite(path: Path, sd: Dict[str, Tensor]) -> None:
    """A NaN or Inf weight is named here, not found later as a baffling parity failure."""
    for name, t in sd.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            what = " and ".join(w for w, n in ((f"{nan} NaN", nan), (f"{inf} Inf", inf)) if n)
            raise CheckpointError(
                f"{path}: tensor {name} holds {what} values (of {t.numel()}); the checkpoint is corrupt or "
                "training diverged; use an earlier checkpoint"
            )


def _load_into(model: torch.nn.Module, sd: Dict[str, Tensor], raw: RawCheckpoint, cfg: ModelConfig) -> None:
    model_sd = model.state_dict()
    if set(model_sd) != set(sd) or any(tuple(sd[k].shape) != tuple(v.shape) for k, v in model_sd.items()):
        _mismatch_error(raw, model_sd, sd, cfg)
    model.load_state_dict({k: v.to(model_sd[k].dtype) for k, v in sd.items()})


# ---- timm DeiT conversion ---------------------------------------------------------------------------
def resample_pos_embed(pos_embed: Tensor, new_grid: int, num_prefix: int = 1) -> Tensor:
    """Resample a (1, prefix + G*G, D) position embedding to new_grid x new_grid (bicubic, like timm)."""
    prefix, grid_tokens = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old = grid_side(grid_tokens.shape[1], extra=0)
    if old is None:
        raise CheckpointError(
            f"position embedding with {grid_tokens.shape[1]} grid tokens is not a square grid"
        )
    if old == new_grid:
        return pos_embed.clone()
    d = grid_tokens.shape[-1]
    g = grid_tokens.reshape(1, old, old, d).permute(0, 3, 1, 2).float()
    g = F.interpolate(
        g, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=new_grid < old
    )
    g = g.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, d).to(pos_embed.dtype)
    return torch.cat([prefix, g], dim=1)


def single_stage_to_sacvit(sd: Dict[str, Tensor], model: SACViT) -> Dict[str, Tensor]:
    """A single-stage DeiT state dict (timm names) -> SAC-ViT's (fresh reuse block from ``model``)."""
    sd = dict(sd)
    pos = sd.pop("pos_embed")
    cfg = model.cfg
    sd["pos_embed_list.1"] = resample_pos_embed(pos, cfg.fine_grid)
    sd["pos_embed_list.0"] = resample_pos_embed(pos, cfg.coarse_grid)
    for k, v in model.state_dict().items():
        if k.startswith("reuse_block."):
            sd[k] = v.clone()
    return sd


# ---- public API -------------------------------------------------------------------------------------
def load_checkpoint(
    path: Union[str, Path], fmt: str = "auto", variant: Optional[str] = None
) -> LoadedCheckpoint:
    """Load any supported checkpoint (a file, or a folder a format owns) into a SACViT in eval mode."""
    return _load_sacvit(*open_checkpoint(path, fmt), variant)


def _load_sacvit(
    raw: RawCheckpoint, row: CheckpointFormat, adapter: FormatAdapter, variant: Optional[str]
) -> LoadedCheckpoint:
    cfg = adapter.config(raw, variant)
    sd = adapter.state_dict(raw)
    notes = list(raw.notes)
    if row.two_stage:
        _check_config_against_tensors(raw, sd, cfg, from_file=adapter.config_in_file)
        model = SACViT(cfg)
    else:
        skip = ("pos_embed", "reuse_block.")
        _check_config_against_tensors(raw, sd, cfg, skip=skip, from_file=adapter.config_in_file)
        model = SACViT(cfg)
        torch.manual_seed(0)  # the fresh reuse block is reproducible
        sd = single_stage_to_sacvit(sd, model)
        notes.append(
            f"{row.description}: stage-1 position embedding resampled, reuse block freshly initialised"
        )
    _load_into(model, sd, raw, cfg)
    return LoadedCheckpoint(model.eval(), cfg, row.name, raw.path, notes)


def load_baseline(path: Union[str, Path], fmt: str = "auto", variant: Optional[str] = None) -> DeiT:
    """The single-stage DeiT from a single-stage file, or from a two-stage checkpoint's shared weights."""
    raw, row, adapter = open_checkpoint(path, fmt)
    if row.two_stage:  # the file read once: its SAC-ViT's shared weights
        return DeiT.from_sacvit(_load_sacvit(raw, row, adapter, variant).model)
    cfg = adapter.config(raw, variant)
    sd = adapter.state_dict(raw)
    _check_config_against_tensors(
        raw, sd, cfg, skip=("pos_embed", "reuse_block."), from_file=adapter.config_in_file
    )
    model = DeiT(cfg)
    sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], cfg.fine_grid)
    _load_into(model, sd, raw, cfg)
    return model.eval()


def save_checkpoint(model: SACViT, path: Union[str, Path], metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write this project's format: safetensors with the config in its metadata."""
    from safetensors.torch import save

    from sacvit_deploy.core import atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT_TAG,
        "format_version": str(FORMAT_VERSION),
        "sacvit_deploy_version": __version__,
        "config": json.dumps(model.cfg.to_dict()),
        **(metadata or {}),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Serialised in memory, then core.atomic's one writer (a full disk is one line, nothing left);
    # the file gets the permissions of any other file (safetensors' own writer gives 0600).
    return atomic.write_bytes(path, _sorted_header(save(tensors, metadata=meta)))


def _sorted_header(blob: bytes) -> bytes:
    """The same bytes for the same weights: safetensors writes its metadata in a hash map's order,
    which changes from one call to the next; the header is rewritten with sorted keys, padded with
    spaces to its old length (as the format pads it), so the tensor offsets stay valid."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    if len(text) > n:  # cannot happen for the same content; keep the original rather than shift data
        return blob
    return blob[:8] + text.ljust(n, b" ") + blob[8 + n :]
