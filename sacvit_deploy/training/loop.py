"""End-to-end training of a two-stage model (SPEC "Training"): loss, schedule, evaluation, checkpoints.

One process, or several started by ``torchrun`` (DistributedDataParallel, see ``distributed.py``).
One run writes, in its output folder (process 0 alone writes):

* ``last.pt``: a resumable checkpoint in this project's weights-only torch format (config, weights,
  optimizer, AMP scaler, EMA, epoch, step, best metrics), replaced atomically every epoch; it resumes
  on any number of processes;
* ``best.safetensors``: the weights with the best validation accuracy of the combined early-exit
  prediction at the config's exit threshold (``save_checkpoint``, loads with ``load_checkpoint``);
* ``best_ema.safetensors`` (with an EMA): the same for the EMA weights, evaluated every epoch;
* ``log.jsonl``: one JSON line of metrics per epoch, reduced over every process.

``--batch-size`` is the global batch of one optimizer step (all processes, all accumulation steps):
the same number means the same training, whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sacvit_deploy.core import atomic
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.exit_rule import exit_mask
from sacvit_deploy.core.fileinfo import is_within, resolved
from sacvit_deploy.core.formats import INIT_FORMATS, TRAIN_FORMATS
from sacvit_deploy.core.lock import folder_lock
from sacvit_deploy.core.validate import parse_json
from sacvit_deploy.model.checkpoint import FORMAT_TAG, load_checkpoint, save_checkpoint
from sacvit_deploy.model.config import FORMAT_PRESETS, ModelConfig, make_config
from sacvit_deploy.model.sacvit import SACViT
from sacvit_deploy.training import distributed as dist_
from sacvit_deploy.training.augment import MixupCutmix, RandAugment, RandomErasing
from sacvit_deploy.training.data import (
    EvalTransform,
    ImageFolderDataset,
    TrainTransform,
    default_workers,
    make_eval_loader,
    make_train_loader,
    scan_image_folder,
)
from sacvit_deploy.training.distributed import World, resolve_device
from sacvit_deploy.training.recipe import (
    RECIPES,
    ModelEma,
    param_groups,
    recipe_value,
    set_backbone_frozen,
)
from sacvit_deploy.training.sampler import GlobalBatchSampler

_log = logging.getLogger(__name__)

DEFAULT_VARIANT = "deit_small_224"
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# LF-ViT switches token selection on at epoch 230 of 300.
SELECTION_WARMUP_FRACTION = 230 / 300
_MIX_STREAM = 0x313


class TrainError(SacvitError):
    """Training options that cannot work together, or a run that cannot be resumed."""


@dataclass
class TrainOptions:
    """Everything a training run is given (the CLI's options, one to one).

    Recipe fields left at None take the ``recipe`` preset's value (recipe.RECIPE_FIELDS).
    """

    data_dir: Path
    out_dir: Path = Path("runs/sacvit")
    variant: Optional[str] = None  # default DEFAULT_VARIANT; exclusive with model_config
    format: Optional[str] = None  # default "sacvit"; exclusive with model_config
    model_config: Optional[ModelConfig] = None  # a full config instead of variant + format
    init: Optional[Path] = None
    init_format: str = "deit"
    num_classes: Optional[int] = None  # a check: must equal the number of class folders
    freeze_epochs: int = 0  # train only the head and reuse block for this many epochs
    epochs: int = 300
    batch_size: int = 128  # global: all processes and accumulation steps together
    accum_steps: int = 1
    lr: float = 5e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    selection_warmup_epochs: Optional[int] = None  # default: round(0.77 * epochs), like LF-ViT
    threshold: Optional[float] = None  # default: the config's exit threshold
    clip_grad: Optional[float] = None
    recipe: str = "ours"
    drop_path: Optional[float] = None
    smoothing: Optional[float] = None
    mixup: Optional[float] = None
    cutmix: Optional[float] = None
    rand_augment: Optional[str] = None  # e.g. rand-m9-mstd0.5-inc1; "none" switches it off
    reprob: Optional[float] = None
    repeated_aug: Optional[int] = None
    ema_decay: Optional[float] = None  # 0 switches the EMA off
    layer_decay: Optional[float] = None
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "fp16"
    dist_backend: str = "auto"
    dist_timeout_s: float = 1800.0
    workers: Optional[int] = None  # default: from the CPUs this process may use
    resume: bool = False
    seed: int = 0
    hflip: bool = True
    rrc_scale: float = 0.08
    max_steps: Optional[int] = None  # per epoch, optimizer steps and val batches: for smoke tests

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_config"] = self.model_config.to_dict() if self.model_config else None
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


@dataclass(frozen=True)
class Recipe:
    """The recipe values a run uses, after presets and explicit options."""

    drop_path: float
    smoothing: float
    mixup: float
    cutmix: float
    rand_augment: Optional[str]
    reprob: float
    repeated_aug: int
    ema_decay: Optional[float]
    layer_decay: Optional[float]

    @classmethod
    def of(cls, opts: TrainOptions) -> Recipe:
        if opts.recipe not in RECIPES:
            raise TrainError(f"--recipe {opts.recipe!r}: choose one of {', '.join(RECIPES)}")
        v = {
            f.name: recipe_value(opts.recipe, f.name, getattr(opts, f.name)) for f in dataclasses.fields(cls)
        }
        if v["rand_augment"] in ("none", ""):
            v["rand_augment"] = None
        if v["ema_decay"] == 0:
            v["ema_decay"] = None
        return cls(**v)

    def summary(self) -> str:
        parts = [
            f"drop path {self.drop_path:g}",
            f"smoothing {self.smoothing:g}",
            f"mixup {self.mixup:g}",
            f"cutmix {self.cutmix:g}",
            f"RandAugment {self.rand_augment or 'off'}",
            f"erasing {self.reprob:g}",
            f"repeated aug x{self.repeated_aug}",
            f"EMA {self.ema_decay:g}" if self.ema_decay else "EMA off",
            f"layer decay {self.layer_decay:g}" if self.layer_decay else "plain weight decay",
        ]
        return ", ".join(parts)


@dataclass
class EvalResult:
    """Per-sample stage-1 / stage-2 answers on a split, to score any exit threshold."""

    labels: Tensor
    pred1: Tensor
    pred2: Tensor
    confidence: Tensor

    def metrics(self, threshold: float) -> Dict[str, float]:
        exited = exit_mask(self.confidence, threshold)
        ok1, ok2 = self.pred1 == self.labels, self.pred2 == self.labels
        combined = torch.where(exited, ok1, ok2)

        def mean(x: Tensor) -> float:
            return float(x.float().mean()) if x.numel() else math.nan

        return {
            "acc_stage1": mean(ok1),
            "acc_stage2": mean(ok2),
            "acc_early_exit": mean(combined),
            "exit_rate": mean(exited),
            "acc_stage1_on_exited": mean(ok1[exited]),
            "acc_stage2_on_rest": mean(ok2[~exited]),
            "threshold": float(threshold),
            "samples": int(self.labels.numel()),
        }

    @staticmethod
    def concat(parts: List[EvalResult]) -> EvalResult:
        return EvalResult(
            *(torch.cat([getattr(p, k) for p in parts]) for k in ("labels", "pred1", "pred2", "confidence"))
        )


@dataclass
class TrainResult:
    model: SACViT
    cfg: ModelConfig
    out_dir: Path
    epochs_done: int
    steps: int
    best_metric: float
    history: List[Dict[str, Any]] = field(default_factory=list)
    ema_model: Optional[SACViT] = None
    world_size: int = 1

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.safetensors"

    @property
    def best_ema_path(self) -> Path:
        return self.out_dir / "best_ema.safetensors"

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"


# ---- pieces ----------------------------------------------------------------------------------------
def per_sample_loss(logits1: Tensor, logits2: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Per sample: CE(logits2, targets) + KL(softmax(logits2).detach() || softmax(logits1)).

    ``targets`` are class indices (B,) or soft targets (B, C) (label smoothing, Mixup / CutMix).
    """
    logp2 = F.log_softmax(logits2, dim=-1)
    if targets.ndim == 1:
        ce = -logp2.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    else:
        ce = -(targets * logp2).sum(dim=-1)
    kl = F.kl_div(
        F.log_softmax(logits1.float(), dim=-1), F.softmax(logits2.detach().float(), dim=-1), reduction="none"
    ).sum(dim=-1)
    return ce + kl, ce, kl


def distillation_loss(logits1: Tensor, logits2: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """CE(logits2, y) + KL(softmax(logits2).detach() || softmax(logits1)), 1:1, batchmean."""
    loss, ce, kl = per_sample_loss(logits1, logits2, labels)
    return loss.mean(), ce.mean(), kl.mean()


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Per-step schedule: linear warm-up to ``base_lr``, then cosine down to ``min_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def _predict(
    model: SACViT, loader: Any, device: Union[torch.device, str], max_batches: Optional[int]
) -> EvalResult:
    was_training = model.training
    model.eval()
    # Start from empty tensors: a process with an empty shard still has something to gather.
    labels, pred1, pred2 = ([torch.zeros(0, dtype=torch.long)] for _ in range(3))
    conf = [torch.zeros(0)]
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x = x.to(device, non_blocking=True)
        logits1, logits2 = model.forward_train(x, select_tokens=True)
        p1 = logits1.float().softmax(dim=-1)
        conf.append(p1.amax(dim=-1).cpu())
        pred1.append(p1.argmax(dim=-1).cpu())
        pred2.append(logits2.argmax(dim=-1).cpu())
        labels.append(torch.as_tensor(y, dtype=torch.long))
    model.train(was_training)
    return EvalResult(torch.cat(labels), torch.cat(pred1), torch.cat(pred2), torch.cat(conf))


def evaluate(
    model: SACViT,
    loader: Any,
    device: Union[torch.device, str] = "cpu",
    max_batches: Optional[int] = None,
    world: Optional[World] = None,
) -> EvalResult:
    """Both stages on every sample, as deployed (token selection on); shards gathered in rank order."""
    result = _predict(model, loader, device, max_batches)
    if world is not None and world.distributed:
        result = EvalResult.concat(dist_.all_gather_objects(result, world))
    if not result.labels.numel():
        raise TrainError("the validation split gave no batches; check DATA_DIR/val")
    return result


# ---- model config and init --------------------------------------------------------------------------
def resolve_model_config(
    opts: TrainOptions, class_names: Tuple[str, ...], init_cfg: Optional[ModelConfig]
) -> ModelConfig:
    """The config to train: from --config-json, a sacvit --init, or variant + format; data's classes."""
    fmt = opts.format or "sacvit"
    if fmt not in TRAIN_FORMATS:
        raise TrainError(f"--format {fmt!r}: choose one of {', '.join(TRAIN_FORMATS)}")
    if opts.model_config is not None:
        if opts.variant or opts.format:
            raise TrainError("a model config file fixes the variant and format; drop --variant/--format")
        cfg = opts.model_config
    elif init_cfg is not None and opts.variant is None:
        # A sacvit-format init carries its own architecture; --format may still switch stage 2.
        preset = {k: v for k, v in FORMAT_PRESETS[fmt].items() if k != "exit_threshold"}
        cfg = init_cfg.replace(**preset) if opts.format else init_cfg
    else:
        cfg = make_config(opts.variant or DEFAULT_VARIANT, fmt)
    threshold = cfg.exit_threshold if opts.threshold is None else float(opts.threshold)
    return cfg.replace(num_classes=len(class_names), class_names=class_names, exit_threshold=threshold)


def load_init_weights(model: SACViT, opts: TrainOptions, log: Callable[[str], None]) -> None:
    """Copy --init weights into ``model``; a head for a different class count stays freshly initialised."""
    assert opts.init is not None
    variant = None if opts.init_format == "sacvit" else model.cfg.variant
    loaded = load_checkpoint(opts.init, opts.init_format, variant)
    for line in loaded.notes:
        log(f"--init {opts.init}: {line}")
    src, dst = loaded.model.state_dict(), model.state_dict()
    head_keys = ("head.weight", "head.bias")
    if src["head.weight"].shape != dst["head.weight"].shape:
        log(
            f"--init {opts.init}: its head has {src['head.weight'].shape[0]} classes, the data "
            f"{model.cfg.num_classes}: head re-initialised"
        )
        src = {k: v for k, v in src.items() if k not in head_keys}
        src.update({k: dst[k] for k in head_keys})
    wrong = [k for k in dst if k in src and src[k].shape != dst[k].shape]
    if wrong or set(src) != set(dst):
        k = wrong[0] if wrong else sorted(set(src) ^ set(dst))[0]
        shapes = f"{tuple(src[k].shape)} vs {tuple(dst[k].shape)}" if wrong else "present in one only"
        raise TrainError(
            f"--init {opts.init}: its weights do not fit the {model.cfg.variant} model ({k}: {shapes}); "
            "pass the --variant the checkpoint was trained with"
        )
    model.load_state_dict(src)


# ---- resumable checkpoint ---------------------------------------------------------------------------
def save_resumable(path: Path, payload: Dict[str, Any]) -> None:
    """Serialised in memory, then core.atomic's writer: a crash never leaves a half-written last.pt,
    a full disk is one line and leaves the previous last.pt as it was."""
    import io

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic.write_bytes(path, buffer.getvalue())


# What a resumable checkpoint holds, by key: (accepted types, what it is).
_RESUMABLE_FIELDS: Dict[str, Tuple[Tuple[type, ...], str]] = {
    "config": ((dict,), "the model config"),
    "model": ((dict,), "the weights"),
    "optimizer": ((dict,), "the optimizer state"),
    "scaler": ((dict,), "the AMP scaler state"),
    "epoch": ((int,), "the epoch"),
    "step": ((int,), "the step"),
    "best_metric": ((float, int), "the best metric"),
}


def _resumable_problem(ckpt: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a loaded last.pt's fields (a damaged or hand-edited file), or None."""
    for key, (types, what) in _RESUMABLE_FIELDS.items():
        if key not in ckpt:
            return f"{what} ({key!r}) is missing"
        value = ckpt[key]
        if not isinstance(value, types) or isinstance(value, bool):
            return f"{key!r} ({what}) is a {type(value).__name__}, not a {types[0].__name__}"
    if ckpt["epoch"] < 0 or ckpt["step"] < 0:
        return f"epoch {ckpt['epoch']}, step {ckpt['step']}: negative"
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in ckpt["model"].items()):
        return "the weights are not a mapping of names to tensors"
    if not isinstance(ckpt["optimizer"].get("state"), dict) or not isinstance(
        ckpt["optimizer"].get("param_groups"), list
    ):
        return "the optimizer state lacks 'state' or 'param_groups'"
    if ckpt.get("ema") is not None and not isinstance(ckpt["ema"], dict):
        return f"'ema' is a {type(ckpt['ema']).__name__}, not a state dict"
    if not isinstance(ckpt.get("train_options", {}), dict):
        return "'train_options' is not a mapping"
    return None


def load_resumable(path: Path, cfg: ModelConfig) -> Dict[str, Any]:
    if not path.is_file():
        raise TrainError(f"{path}: no checkpoint to resume; run without --resume to start this run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise TrainError(f"{path}: unreadable ({first}); delete it or pick another --out") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_TAG or "optimizer" not in ckpt:
        raise TrainError(f"{path}: not a resumable sacvit-deploy training checkpoint; pick another --out")
    problem = _resumable_problem(ckpt)
    if problem is not None:
        raise TrainError(f"{path}: damaged: {problem}; delete it (the run restarts) or pick another --out")
    saved, wanted = ckpt["config"], cfg.to_dict()
    if saved != wanted:
        diff = [f"{k} {saved.get(k)!r} vs {wanted.get(k)!r}" for k in wanted if saved.get(k) != wanted[k]]
        raise TrainError(
            f"{path}: was trained with another model config ({'; '.join(diff[:3])}: checkpoint vs "
            "requested); resume with the original options or pick another --out"
        )
    return ckpt


def restore_state(path: Path, what: str, load: Callable[[], Any]) -> None:
    """``load()`` puts part of a last.pt into the model, optimizer or EMA; a part that does not fit
    (wrong names, shapes or dtypes) is one TrainError naming the file and the part."""
    try:
        load()
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise TrainError(
            f"{path}: damaged: {what} does not fit this model ({first}); delete it or pick another --out"
        ) from None


# ---- the loop --------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


RUN_FILES = ("last.pt", "best.safetensors", "best_ema.safetensors", "log.jsonl")


def check_run_folder(opts: TrainOptions) -> None:
    """Refuse, before any work, a run folder that is not a folder, lies in the training data, cannot
    be written, holds another run's files, or would overwrite the --init checkpoint."""
    out, data = Path(opts.out_dir), Path(opts.data_dir)
    where = f"--out {out}"
    if out.exists() and not out.is_dir():
        raise TrainError(f"{where}: is a file; --out takes the run folder ({', '.join(RUN_FILES)} go there)")
    target = resolved(out)
    if is_within(out, data):
        raise TrainError(
            f"{where}: is inside the training data {data}; the run's files would mix with the images "
            "(a folder under train/ would become a class); pick a folder outside it"
        )
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise TrainError(f"{where}: cannot write in {existing}; pick another folder or fix its permissions")
    if opts.resume:
        return
    if opts.init is not None:
        init = resolved(Path(opts.init))
        for name in RUN_FILES:
            if init == target / name:
                raise TrainError(
                    f"--init {opts.init}: is the run's own {name}, which this run overwrites; "
                    "copy it elsewhere or pick another --out"
                )
    if (target / "last.pt").exists():
        raise TrainError(
            f"{out / 'last.pt'}: a run is already there; pass --resume to continue it or another --out"
        )
    earlier = [name for name in RUN_FILES if (target / name).exists()]
    if earlier:
        raise TrainError(
            f"{where}: already holds {', '.join(earlier)} from an earlier run; this run would overwrite "
            "them: pick another --out or move them away"
        )


def _check_options(opts: TrainOptions, recipe: Recipe) -> int:
    """Validate numeric options; returns the number of selection warm-up epochs."""
    checks = [
        (opts.epochs >= 1, "--epochs must be at least 1"),
        (opts.batch_size >= 1, "--batch-size must be at least 1"),
        (opts.accum_steps >= 1, "--accum-steps must be at least 1"),
        (opts.lr > 0, "--lr must be positive"),
        (0 <= opts.min_lr <= opts.lr, "--min-lr must be between 0 and --lr"),
        (opts.weight_decay >= 0, "--weight-decay must not be negative"),
        (opts.warmup_epochs >= 0, "--warmup-epochs must not be negative"),
        (0 < opts.rrc_scale <= 1, "--rrc-scale must be in (0, 1]"),
        (opts.workers is None or opts.workers >= 0, "--workers must not be negative"),
        (opts.max_steps is None or opts.max_steps >= 1, "--max-steps must be at least 1"),
        (opts.clip_grad is None or opts.clip_grad > 0, "--clip-grad must be positive"),
        (0 <= recipe.drop_path < 1, "--drop-path must be in [0, 1)"),
        (0 <= recipe.smoothing < 1, "--smoothing must be in [0, 1)"),
        (recipe.mixup >= 0 and recipe.cutmix >= 0, "--mixup and --cutmix (Beta alphas) must not be negative"),
        (0 <= recipe.reprob <= 1, "--reprob must be in [0, 1]"),
        (recipe.repeated_aug >= 1, "--repeated-aug must be at least 1 (1 = off)"),
        (recipe.ema_decay is None or 0 < recipe.ema_decay < 1, "--ema-decay must be in (0, 1); 0 = off"),
        (recipe.layer_decay is None or 0 < recipe.layer_decay <= 1, "--layer-decay must be in (0, 1]"),
        (opts.threshold is None or opts.threshold >= 0, "--threshold must not be negative"),
        (opts.init_format in INIT_FORMATS, f"--init-format must be one of {', '.join(INIT_FORMATS)}"),
        (opts.amp_dtype in AMP_DTYPES, f"--amp-dtype must be one of {', '.join(AMP_DTYPES)}"),
        (opts.num_classes is None or opts.num_classes >= 1, "--num-classes must be at least 1"),
        (0 <= opts.freeze_epochs <= opts.epochs, "--freeze-epochs must be between 0 and --epochs"),
        (opts.freeze_epochs == 0 or opts.init is not None, "--freeze-epochs needs --init weights to freeze"),
    ]
    for ok, msg in checks:
        if not ok:
            raise TrainError(msg)
    if recipe.rand_augment:
        try:
            RandAugment.from_string(recipe.rand_augment)
        except ValueError as exc:
            raise TrainError(f"--rand-augment {exc}") from None
    sel = opts.selection_warmup_epochs
    if sel is None:
        sel = round(SELECTION_WARMUP_FRACTION * opts.epochs)
    if not 0 <= sel <= opts.epochs:
        raise TrainError(f"--selection-warmup-epochs {sel} must be between 0 and --epochs ({opts.epochs})")
    return sel


def _fmt_pct(x: float) -> str:
    return "  n/a" if math.isnan(x) else f"{100 * x:5.1f}%"


class _TrainForward(nn.Module):
    """forward() = forward_train(), so DistributedDataParallel sees (and syncs) the training pass."""

    def __init__(self, model: SACViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, select_tokens: bool) -> Tuple[Tensor, Tensor]:
        return self.model.forward_train(x, select_tokens=select_tokens)


class EpochProgress(Protocol):
    """What the training loop reports each step to (the CLI passes a Rich progress bar)."""

    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> Any: ...
    def add_task(self, description: str, total: int, **fields: Any) -> Any: ...
    def update(self, task: Any, **fields: Any) -> None: ...


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: int, **fields: Any) -> int:
        return 0

    def update(self, task: Any, **fields: Any) -> None:
        return None


def train(
    opts: TrainOptions,
    log: Optional[Callable[[str], None]] = None,
    progress: Optional[Callable[[], EpochProgress]] = None,
    on_epoch_end: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> TrainResult:
    """Train (or resume) a two-stage model on an ImageFolder; see the module docstring for outputs.

    ``log`` receives one line per event (default: this module's logger at INFO); ``progress``
    makes a per-epoch progress reporter (default: none). Under torchrun every process calls this;
    process 0 logs and writes, the others stay quiet.
    """
    recipe = Recipe.of(opts)
    selection_warmup = _check_options(opts, recipe)
    world = dist_.world_from_env()
    per_step = world.size * opts.accum_steps
    if opts.batch_size % per_step:
        fit = max(per_step, round(opts.batch_size / per_step) * per_step)
        raise TrainError(
            f"--batch-size {opts.batch_size} is the global batch and must be a multiple of {world.size} "
            f"process(es) x --accum-steps {opts.accum_steps}; e.g. --batch-size {fit}"
        )
    device = resolve_device(opts.device, opts.amp_dtype if opts.amp else None, world)
    world = dist_.init_world(device, world, opts.dist_backend, opts.dist_timeout_s)
    if not world.is_main:
        log, progress = (lambda _msg: None), None
    try:
        with contextlib.ExitStack() as lock:  # the run folder's lock, taken by _train, held to the end
            return _train(
                opts, recipe, selection_warmup, world, device, log or _log.info, progress, on_epoch_end, lock
            )
    finally:
        dist_.shutdown(world)


def _train(
    opts: TrainOptions,
    recipe: Recipe,
    selection_warmup: int,
    world: World,
    device: torch.device,
    log: Callable[[str], None],
    make_progress: Optional[Callable[[], EpochProgress]],
    on_epoch_end: Optional[Callable[[Dict[str, Any]], None]],
    lock: contextlib.ExitStack,
) -> TrainResult:
    error = None
    try:
        train_split, val_split = scan_image_folder(opts.data_dir)
    except SacvitError as exc:
        error, train_split, val_split = str(exc), None, None
    dist_.agree(error, world, TrainError)
    assert train_split is not None and val_split is not None
    class_names = train_split.class_names
    seen = dist_.all_gather_objects((class_names, len(train_split.samples), len(val_split.samples)), world)
    for rank, (names, n_train, n_val) in enumerate(seen):
        if (names, n_train, n_val) != seen[0]:
            raise TrainError(
                f"{opts.data_dir}: rank {rank} sees {len(names)} classes, {n_train} train / {n_val} val "
                f"images, rank 0 {len(seen[0][0])}, {seen[0][1]} / {seen[0][2]}; every machine needs the same data"
            )
    if len(class_names) < 2:
        raise TrainError(
            f"{opts.data_dir}/train: has one class folder ({class_names[0] if class_names else ''}); a "
            "classifier needs two or more (it would reach 100% by always answering the one class)"
        )
    if opts.num_classes is not None and opts.num_classes != len(class_names):
        shown = ", ".join(class_names[:5]) + (", ..." if len(class_names) > 5 else "")
        raise TrainError(
            f"--num-classes {opts.num_classes}, but {opts.data_dir}/train has {len(class_names)} class "
            f"folders ({shown}); the class names come from the folders: drop --num-classes or fix the data"
        )

    init_cfg = None
    if opts.init is not None and opts.init_format == "sacvit" and not opts.model_config:
        init_cfg = load_checkpoint(opts.init, "sacvit").cfg
    cfg = resolve_model_config(opts, class_names, init_cfg)

    out = Path(opts.out_dir)
    last_path, best_path, log_path = out / "last.pt", out / "best.safetensors", out / "log.jsonl"
    best_ema_path = out / "best_ema.safetensors"
    resumed, error = None, None
    if world.is_main:  # only process 0 reads and writes the run folder; it need not be shared
        try:
            check_run_folder(opts)
            with atomic.write_errors(out):
                out.mkdir(parents=True, exist_ok=True)
            # One run per folder: a second one (or a second --resume) is refused while this one lives.
            lock.enter_context(folder_lock(out, "training run", note=log))
            check_run_folder(opts)  # again, under the lock: a run that started meanwhile is seen
            if opts.resume and not last_path.exists() and log_path.is_file():
                log(
                    f"{last_path}: missing: the run stopped before its first epoch was saved; "
                    "starting it from the beginning"
                )
            elif opts.resume:
                resumed = load_resumable(last_path, cfg)
        except SacvitError as exc:
            error = str(exc)
    dist_.agree(error, world, TrainError)
    resumed = dist_.broadcast_object(resumed, world)

    torch.manual_seed(opts.seed)
    model = SACViT(cfg, drop_path_rate=recipe.drop_path)
    if resumed is None and opts.init is not None:
        load_init_weights(model, opts, log)
    model.to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, opts.weight_decay, recipe.layer_decay), lr=opts.lr, betas=(0.9, 0.999)
    )
    amp_dtype = AMP_DTYPES[opts.amp_dtype]
    scaler = torch.amp.GradScaler(device.type, enabled=opts.amp and amp_dtype == torch.float16)
    ema = ModelEma(model, recipe.ema_decay) if recipe.ema_decay else None

    pp = cfg.preprocess
    fill = tuple(round(255 * m) for m in pp.mean)
    transform = TrainTransform(
        pp,
        scale=(opts.rrc_scale, 1.0),
        hflip=opts.hflip,
        rand_augment=RandAugment.from_string(recipe.rand_augment, fill) if recipe.rand_augment else None,
        erasing=RandomErasing(recipe.reprob) if recipe.reprob > 0 else None,
    )
    mixer = MixupCutmix(len(class_names), recipe.mixup, recipe.cutmix, prob=1.0, smoothing=recipe.smoothing)
    train_ds = ImageFolderDataset(train_split, transform, opts.seed)
    val_ds = ImageFolderDataset(val_split, EvalTransform(pp))
    workers = default_workers(world.local_size) if opts.workers is None else opts.workers
    pin = device.type == "cuda"
    sampler = GlobalBatchSampler(
        len(train_ds),
        opts.batch_size,
        world.size,
        world.rank,
        opts.seed,
        opts.accum_steps,
        recipe.repeated_aug,
    )
    micro_batch = opts.batch_size // (world.size * opts.accum_steps)
    train_loader = make_train_loader(train_ds, sampler, workers, pin)
    val_loader = make_eval_loader(val_ds, max(1, micro_batch), workers, world.size, world.rank, pin)
    steps_per_epoch = sampler.steps if opts.max_steps is None else min(sampler.steps, opts.max_steps)
    total_steps = steps_per_epoch * opts.epochs
    warmup_steps = round(opts.warmup_epochs * steps_per_epoch)

    def lr_for(step: int) -> float:
        return lr_at(step, total_steps, warmup_steps, opts.lr, opts.min_lr)

    start_epoch, step, best, best_ema = 0, 0, -math.inf, -math.inf
    history: List[Dict[str, Any]] = []
    if resumed is not None:
        restore_state(last_path, "the weights", lambda: _load_weights(model, resumed["model"]))
        restore_state(
            last_path, "the optimizer state", lambda: _load_optimizer(optimizer, resumed["optimizer"])
        )
        if resumed["scaler"] and scaler.is_enabled():  # empty when the run was started without fp16 AMP
            restore_state(
                last_path, "the AMP scaler state", lambda: scaler.load_state_dict(resumed["scaler"])
            )
        if ema is not None:
            if resumed.get("ema") is None:
                log(
                    f"{last_path}: has no EMA (the run started without one); the EMA starts from these weights"
                )
                ema = ModelEma(model, ema.decay)
            else:
                restore_state(last_path, "the EMA", lambda: ema.load_state_dict(resumed["ema"]))
        start_epoch, step, best = resumed["epoch"] + 1, resumed["step"], resumed["best_metric"]
        best_ema = resumed.get("best_ema_metric", -math.inf)
        saved_opts = resumed.get("train_options", {})
        was = saved_opts.get("world_size", 1)
        if world.is_main:
            history = _read_log(log_path, upto_epoch=resumed["epoch"], log=log)
        log(
            f"resuming {last_path} at epoch {start_epoch + 1}/{opts.epochs}, step {step} "
            f"(written by {was} process(es), continuing on {world.size})"
        )
        if saved_opts.get("batch_size", opts.batch_size) != opts.batch_size:
            log(
                f"warning: --batch-size {opts.batch_size} differs from the checkpoint's "
                f"{saved_opts['batch_size']}: the data order and the learning-rate schedule change"
            )
    elif world.is_main:
        atomic.write_text(log_path, "")

    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"{cfg.variant} ({cfg.selection} selection, {cfg.attention} attention), {n_params / 1e6:.2f} M params, "
        f"{len(class_names)} classes, {len(train_ds)} train / {len(val_ds)} val images, "
        f"{steps_per_epoch} steps/epoch on {device}; token selection from epoch {selection_warmup + 1}"
    )
    log(
        f"{world.size} process(es){f' ({world.backend})' if world.distributed else ''}, global batch "
        f"{opts.batch_size} = {world.size} x {opts.accum_steps} accumulation x {micro_batch}, "
        f"{workers} loader worker(s) per process; recipe {opts.recipe}: {recipe.summary()}"
    )
    if selection_warmup >= opts.epochs:
        log(
            f"warning: token selection would start at epoch {selection_warmup + 1}, after the last epoch "
            f"({opts.epochs}): stage 2 never trains on the selected tokens it runs on once exported; pass "
            f"--selection-warmup-epochs {max(0, opts.epochs - 1)} or more --epochs"
        )

    frozen: Optional[bool] = None
    net: nn.Module = _TrainForward(model)
    model.train()
    for epoch in range(start_epoch, opts.epochs):
        t0 = time.perf_counter()
        select = epoch >= selection_warmup
        want_frozen = epoch < opts.freeze_epochs
        if want_frozen != frozen:
            # DDP registers the parameters that need gradients when it is built: rebuild on a change.
            set_backbone_frozen(model, want_frozen)
            net = _TrainForward(model)
            if world.distributed:
                net = nn.parallel.DistributedDataParallel(
                    net, device_ids=[device] if device.type == "cuda" else None
                )
            if want_frozen:
                log(
                    f"epoch {epoch + 1}: backbone frozen (head and reuse block train) until epoch {opts.freeze_epochs}"
                )
            frozen = want_frozen
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(opts.seed, epoch, world.rank))  # drop path: resumable per epoch
        train_loss, step = _train_epoch(
            net,
            model,
            ema,
            train_loader,
            sampler,
            optimizer,
            scaler,
            mixer if (recipe.mixup or recipe.cutmix or recipe.smoothing) else None,
            opts,
            world,
            device,
            amp_dtype,
            select=select,
            step=step,
            steps=steps_per_epoch,
            lr_for=lr_for,
            progress=make_progress() if make_progress is not None else _NoProgress(),
            label=f"epoch {epoch + 1}/{opts.epochs}",
            epoch=epoch,
        )
        lr = lr_for(step - 1)

        m = evaluate(model, val_loader, device, opts.max_steps, world).metrics(cfg.exit_threshold)
        improved = m["acc_early_exit"] > best
        if improved:
            best = m["acc_early_exit"]
        record = {
            "epoch": epoch,
            "step": step,
            "lr": lr,
            "token_selection": select,
            "train_loss": train_loss,
            "val_acc_stage1": m["acc_stage1"],
            "val_acc_stage2": m["acc_stage2"],
            "val_acc_early_exit": m["acc_early_exit"],
            "val_exit_rate": m["exit_rate"],
            "threshold": cfg.exit_threshold,
            "best": improved,
            "world_size": world.size,
        }
        ema_improved = False
        if ema is not None:
            me = evaluate(ema.module, val_loader, device, opts.max_steps, world).metrics(cfg.exit_threshold)
            ema_improved = me["acc_early_exit"] > best_ema
            best_ema = max(best_ema, me["acc_early_exit"])
            record.update(
                ema_val_acc_stage1=me["acc_stage1"],
                ema_val_acc_stage2=me["acc_stage2"],
                ema_val_acc_early_exit=me["acc_early_exit"],
                ema_best=ema_improved,
            )
        record["time_s"] = round(time.perf_counter() - t0, 3)
        if world.is_main:
            if improved:
                save_checkpoint(
                    model, best_path, metadata={"epoch": str(epoch), "val_acc_early_exit": f"{best:.6f}"}
                )
            if ema_improved:
                save_checkpoint(
                    ema.module,
                    best_ema_path,
                    metadata={
                        "epoch": str(epoch),
                        "val_acc_early_exit": f"{best_ema:.6f}",
                        "ema_decay": str(ema.decay),
                    },
                )
            # Log first: a crash before the checkpoint leaves a line that resuming drops and rewrites.
            atomic.append_line(log_path, json.dumps(record))
            save_resumable(
                last_path,
                {
                    "format": FORMAT_TAG,
                    "config": cfg.to_dict(),
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "epoch": epoch,
                    "step": step,
                    "best_metric": best,
                    "best_ema_metric": best_ema,
                    "train_options": {**opts.to_dict(), "world_size": world.size},
                },
            )
        history.append(record)
        ema_note = f"  EMA {_fmt_pct(record['ema_val_acc_early_exit'])}" if ema is not None else ""
        log(
            f"epoch {epoch + 1}/{opts.epochs}  loss {train_loss:.4f}  val acc stage 1 "
            f"{_fmt_pct(m['acc_stage1'])}  stage 2 {_fmt_pct(m['acc_stage2'])}  early exit "
            f"{_fmt_pct(m['acc_early_exit'])} @ {cfg.exit_threshold:g} (exit rate {_fmt_pct(m['exit_rate'])})"
            f"{ema_note}  {record['time_s']:.1f}s{'  * best' if improved else ''}"
        )
        if on_epoch_end is not None:
            on_epoch_end(record)

    set_backbone_frozen(model, False)
    return TrainResult(
        model.cpu().eval(),
        cfg,
        out,
        opts.epochs,
        step,
        best,
        history,
        ema.module.cpu().eval() if ema is not None else None,
        world.size,
    )


def _train_epoch(
    net: nn.Module,
    model: SACViT,
    ema: Optional[ModelEma],
    loader: Any,
    sampler: GlobalBatchSampler,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    mixer: Optional[MixupCutmix],
    opts: TrainOptions,
    world: World,
    device: torch.device,
    amp_dtype: torch.dtype,
    select: bool,
    step: int,
    steps: int,
    lr_for: Callable[[int], float],
    progress: EpochProgress,
    label: str,
    epoch: int,
) -> Tuple[float, int]:
    """One epoch of at most ``steps`` optimizer steps; returns the mean loss (all processes) and the step.

    Each process's loss is a sum over its samples times world / global batch: DDP's gradient average
    then gives the mean over the global batch, as one process would compute it, even for a short
    last batch or a zero-weight filler.
    """
    accum = opts.accum_steps
    weights = [s.weighted for s in sampler.shards()]
    scale = world.size / opts.batch_size
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    seen = torch.zeros((), device=device, dtype=torch.float64)
    optimizer.zero_grad(set_to_none=True)
    with progress:
        task = progress.add_task(label, total=steps, loss="")
        for j, (x, y) in enumerate(loader):
            i, micro = divmod(j, accum)
            if i >= steps:
                break
            if micro == 0:
                for group in optimizer.param_groups:
                    group["lr"] = lr_for(step) * group.get("lr_scale", 1.0)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            targets: Tensor = y
            if mixer is not None:
                x, targets = mixer(x, y, np.random.default_rng([opts.seed, epoch, j, _MIX_STREAM]))
            weight = (torch.arange(y.shape[0], device=device) < weights[j]).to(torch.float32)
            last_micro = micro == accum - 1
            sync = contextlib.nullcontext() if last_micro or not world.distributed else net.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=opts.amp):
                    logits1, logits2 = net(x, select)
                per_sample, _, _ = per_sample_loss(logits1.float(), logits2.float(), targets)
                loss = (per_sample * weight).sum() * scale
                scaler.scale(loss).backward()
            loss_sum += (per_sample.detach() * weight).sum().double()
            seen += weight.sum().double()
            if not last_micro:
                continue
            if opts.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            step += 1
            fields = {}
            if i % 10 == 0 or i + 1 == steps:  # a sync (and, distributed, a collective): not every step
                value = float(dist_.all_reduce_sum(loss.detach().float().clone(), world))
                if not math.isfinite(value):
                    raise TrainError(
                        f"the loss became {value} at step {step}; lower --lr or set --clip-grad 1.0"
                    )
                fields["loss"] = f"loss {value * accum / world.size:.3f}"  # this micro-batch step, per sample
            progress.update(task, completed=i + 1, **fields)
    totals = dist_.all_reduce_sum(torch.stack([loss_sum, seen]), world)
    return float(totals[0]) / max(1.0, float(totals[1])), step


def _load_weights(model: SACViT, weights: Dict[str, Tensor]) -> None:
    own = model.state_dict()
    for name, value in weights.items():
        if name in own and own[name].is_floating_point() and not value.is_floating_point():
            raise TypeError(f"{name} is {value.dtype}, not a floating-point tensor")
    model.load_state_dict(weights)


def _load_optimizer(optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:  # load_state_dict does not look at the moments' shapes
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, Tensor) and value.dim() and value.shape != p.shape:
                    raise ValueError(f"{key} has shape {tuple(value.shape)}, its parameter {tuple(p.shape)}")


def _read_log(
    path: Path, upto_epoch: int, log: Optional[Callable[[str], None]] = None
) -> List[Dict[str, Any]]:
    """Entries up to the resumed epoch, rewritten atomically. What a crash leaves is repaired with a
    line: a torn or unreadable line is dropped, and so is a later epoch (a crash between the log and
    the checkpoint); missing epochs (a log older than the checkpoint) are said, not invented."""
    if not path.is_file():
        return []
    rows: List[Dict[str, Any]] = []
    dropped = 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except ValueError:
            dropped += 1
            continue
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("epoch"), int)
            or isinstance(row["epoch"], bool)
        ):
            dropped += 1
            continue
        if row["epoch"] <= upto_epoch:
            rows.append(row)
    if dropped and log is not None:
        log(f"{path}: dropped {dropped} torn or unreadable line(s) (a crash mid-write)")
    epochs = sorted({r["epoch"] for r in rows})
    if epochs != list(range(upto_epoch + 1)) and log is not None:
        log(
            f"{path}: holds epochs {_ranges(epochs)} of 1-{upto_epoch + 1}; the missing lines are not recreated"
        )
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _ranges(epochs: List[int]) -> str:
    return ", ".join(str(e + 1) for e in epochs) if epochs else "none"
