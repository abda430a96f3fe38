"""End-to-end training of a two-stage model (SPEC "Training"): loss, schedule, evaluation, checkpoints.

One run writes, in its output folder:

* ``last.pt``: a resumable checkpoint in this project's weights-only torch format (config, weights,
  optimizer, AMP scaler, epoch, step, best metric, RNG state), replaced atomically every epoch;
* ``best.safetensors``: the weights with the best validation accuracy of the combined early-exit
  prediction at the config's exit threshold (``save_checkpoint``, loads with ``load_checkpoint``);
* ``log.jsonl``: one JSON line of metrics per epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.exit_rule import exit_mask
from sacvit_deploy.core.formats import INIT_FORMATS, TRAIN_FORMATS
from sacvit_deploy.model.checkpoint import FORMAT_TAG, load_checkpoint, save_checkpoint
from sacvit_deploy.model.config import FORMAT_PRESETS, ModelConfig, make_config
from sacvit_deploy.model.sacvit import SACViT
from sacvit_deploy.training.data import (
    EvalTransform,
    ImageFolderDataset,
    TrainTransform,
    make_loader,
    scan_image_folder,
)

DEFAULT_VARIANT = "deit_small_224"
# LF-ViT switches token selection on at epoch 230 of 300.
SELECTION_WARMUP_FRACTION = 230 / 300


class TrainError(SacvitError):
    """Training options that cannot work together, or a run that cannot be resumed."""


@dataclass
class TrainOptions:
    """Everything a training run is given (the CLI's options, one to one)."""

    data_dir: Path
    out_dir: Path = Path("runs/sacvit")
    variant: str | None = None  # default DEFAULT_VARIANT; exclusive with model_config
    format: str | None = None  # default "sacvit"; exclusive with model_config
    model_config: ModelConfig | None = None  # a full config instead of variant + format
    init: Path | None = None
    init_format: str = "deit"
    epochs: int = 300
    batch_size: int = 128
    lr: float = 5e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    selection_warmup_epochs: int | None = None  # default: round(0.77 * epochs), like LF-ViT
    threshold: float | None = None  # default: the config's exit threshold
    clip_grad: float | None = None
    drop_path: float = 0.0
    device: str = "auto"
    amp: bool = False
    workers: int = 4
    resume: bool = False
    seed: int = 0
    hflip: bool = True
    rrc_scale: float = 0.08
    max_steps: int | None = None  # per epoch, train and val batches alike: for smoke tests

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_config"] = self.model_config.to_dict() if self.model_config else None
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


@dataclass
class EvalResult:
    """Per-sample stage-1 / stage-2 answers on a split, to score any exit threshold."""

    labels: Tensor
    pred1: Tensor
    pred2: Tensor
    confidence: Tensor

    def metrics(self, threshold: float) -> dict[str, float]:
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


@dataclass
class TrainResult:
    model: SACViT
    cfg: ModelConfig
    out_dir: Path
    epochs_done: int
    steps: int
    best_metric: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.safetensors"

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"


# ---- pieces ----------------------------------------------------------------------------------------
def distillation_loss(logits1: Tensor, logits2: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CE(logits2, y) + KL(softmax(logits2).detach() || softmax(logits1)), 1:1, batchmean."""
    ce = F.cross_entropy(logits2, labels)
    kl = F.kl_div(
        F.log_softmax(logits1.float(), dim=-1),
        F.softmax(logits2.detach().float(), dim=-1),
        reduction="batchmean",
    )
    return ce + kl, ce, kl


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms (every 1-d tensor), cls_token, pos_embed_list.*."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name == "cls_token" or name.startswith("pos_embed_list.")
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Per-step schedule: linear warm-up to ``base_lr``, then cosine down to ``min_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(
    model: SACViT, loader: Any, device: torch.device | str = "cpu", max_batches: int | None = None
) -> EvalResult:
    """Both stages on every sample, as deployed (token selection on)."""
    was_training = model.training
    model.eval()
    labels, pred1, pred2, conf = [], [], [], []
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x = x.to(device, non_blocking=True)
        logits1, logits2 = model.forward_train(x, select_tokens=True)
        p1 = logits1.float().softmax(dim=-1)
        conf.append(p1.amax(dim=-1).cpu())
        pred1.append(p1.argmax(dim=-1).cpu())
        pred2.append(logits2.argmax(dim=-1).cpu())
        labels.append(y)
    model.train(was_training)
    if not labels:
        raise TrainError("the validation split gave no batches; check DATA_DIR/val")
    return EvalResult(torch.cat(labels), torch.cat(pred1), torch.cat(pred2), torch.cat(conf))


def resolve_device(device: str, amp: bool) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise TrainError(f"--device {device!r}: use cpu, cuda, cuda:N or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(
            f"--device {device}: this torch build or machine has no CUDA; pass --device cpu "
            "or install a CUDA build of torch"
        )
    if amp and not device.startswith("cuda"):
        raise TrainError(
            "--amp needs --device cuda (float16 autocast); drop --amp to train in float32 on CPU"
        )
    return torch.device(device)


# ---- model config and init --------------------------------------------------------------------------
def resolve_model_config(
    opts: TrainOptions, class_names: tuple[str, ...], init_cfg: ModelConfig | None
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
def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resumable(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file, then os.replace: a crash never leaves a half-written last.pt."""
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_resumable(path: Path, cfg: ModelConfig) -> dict[str, Any]:
    if not path.is_file():
        raise TrainError(f"{path}: no checkpoint to resume; run without --resume to start this run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise TrainError(f"{path}: unreadable ({first}); delete it or pick another --out") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_TAG or "optimizer" not in ckpt:
        raise TrainError(f"{path}: not a resumable sacvit-deploy training checkpoint; pick another --out")
    saved, wanted = ckpt["config"], cfg.to_dict()
    if saved != wanted:
        diff = [f"{k} {saved.get(k)!r} vs {wanted.get(k)!r}" for k in wanted if saved.get(k) != wanted[k]]
        raise TrainError(
            f"{path}: was trained with another model config ({'; '.join(diff[:3])}: checkpoint vs "
            "requested); resume with the original options or pick another --out"
        )
    return ckpt


# ---- the loop --------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _check_options(opts: TrainOptions) -> int:
    """Validate numeric options; returns the number of selection warm-up epochs."""
    checks = [
        (opts.epochs >= 1, "--epochs must be at least 1"),
        (opts.batch_size >= 1, "--batch-size must be at least 1"),
        (opts.lr > 0, "--lr must be positive"),
        (0 <= opts.min_lr <= opts.lr, "--min-lr must be between 0 and --lr"),
        (opts.weight_decay >= 0, "--weight-decay must not be negative"),
        (opts.warmup_epochs >= 0, "--warmup-epochs must not be negative"),
        (0 < opts.rrc_scale <= 1, "--rrc-scale must be in (0, 1]"),
        (opts.workers >= 0, "--workers must not be negative"),
        (opts.max_steps is None or opts.max_steps >= 1, "--max-steps must be at least 1"),
        (opts.clip_grad is None or opts.clip_grad > 0, "--clip-grad must be positive"),
        (0 <= opts.drop_path < 1, "--drop-path must be in [0, 1)"),
        (opts.threshold is None or opts.threshold >= 0, "--threshold must not be negative"),
        (opts.init_format in INIT_FORMATS, f"--init-format must be one of {', '.join(INIT_FORMATS)}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise TrainError(msg)
    sel = opts.selection_warmup_epochs
    if sel is None:
        sel = round(SELECTION_WARMUP_FRACTION * opts.epochs)
    if not 0 <= sel <= opts.epochs:
        raise TrainError(f"--selection-warmup-epochs {sel} must be between 0 and --epochs ({opts.epochs})")
    return sel


def _fmt_pct(x: float) -> str:
    return "  n/a" if math.isnan(x) else f"{100 * x:5.1f}%"


def train(
    opts: TrainOptions,
    console: Console | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train (or resume) a two-stage model on an ImageFolder; see the module docstring for outputs."""
    console = console or Console(stderr=True, soft_wrap=True)

    def log(msg: str) -> None:
        console.print(msg, highlight=False, markup=False)

    selection_warmup = _check_options(opts)
    device = resolve_device(opts.device, opts.amp)
    train_split, val_split = scan_image_folder(opts.data_dir)
    class_names = train_split.class_names

    init_cfg = None
    if opts.init is not None and opts.init_format == "sacvit" and not opts.model_config:
        init_cfg = load_checkpoint(opts.init, "sacvit").cfg
    cfg = resolve_model_config(opts, class_names, init_cfg)

    out = Path(opts.out_dir)
    last_path, best_path, log_path = out / "last.pt", out / "best.safetensors", out / "log.jsonl"
    if not opts.resume and last_path.exists():
        raise TrainError(
            f"{last_path}: a run is already there; pass --resume to continue it or another --out"
        )
    resumed = load_resumable(last_path, cfg) if opts.resume else None

    torch.manual_seed(opts.seed)
    model = SACViT(cfg, drop_path_rate=opts.drop_path)
    if resumed is None and opts.init is not None:
        load_init_weights(model, opts, log)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, opts.weight_decay), lr=opts.lr, betas=(0.9, 0.999))
    scaler = torch.amp.GradScaler(device.type, enabled=opts.amp)

    train_ds = ImageFolderDataset(
        train_split, TrainTransform(cfg.preprocess, scale=(opts.rrc_scale, 1.0), hflip=opts.hflip), opts.seed
    )
    val_ds = ImageFolderDataset(val_split, EvalTransform(cfg.preprocess))
    pin = device.type == "cuda"
    train_loader = make_loader(train_ds, opts.batch_size, True, opts.workers, pin)
    val_loader = make_loader(val_ds, opts.batch_size, False, opts.workers, pin)
    steps_per_epoch = len(train_loader) if opts.max_steps is None else min(len(train_loader), opts.max_steps)
    total_steps = steps_per_epoch * opts.epochs
    warmup_steps = round(opts.warmup_epochs * steps_per_epoch)

    def lr_for(step: int) -> float:
        return lr_at(step, total_steps, warmup_steps, opts.lr, opts.min_lr)

    start_epoch, step, best = 0, 0, -math.inf
    history: list[dict[str, Any]] = []
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        if resumed["scaler"]:  # empty when the run was started without --amp
            scaler.load_state_dict(resumed["scaler"])
        _set_rng_state(resumed["rng"])
        start_epoch, step, best = resumed["epoch"] + 1, resumed["step"], resumed["best_metric"]
        history = _read_log(log_path, upto_epoch=resumed["epoch"])
        log(f"resuming {last_path} at epoch {start_epoch + 1}/{opts.epochs}, step {step}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")

    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"{cfg.variant} ({cfg.selection} selection, {cfg.attention} attention), {n_params / 1e6:.2f} M params, "
        f"{len(class_names)} classes, {len(train_ds)} train / {len(val_ds)} val images, "
        f"{steps_per_epoch} steps/epoch on {device}; token selection from epoch {selection_warmup + 1}"
    )

    model.train()
    for epoch in range(start_epoch, opts.epochs):
        t0 = time.perf_counter()
        select = epoch >= selection_warmup
        train_ds.set_epoch(epoch)
        train_loader.generator.manual_seed(_epoch_seed(opts.seed, epoch))
        train_loss, step = _train_epoch(
            model,
            train_loader,
            optimizer,
            scaler,
            opts,
            device,
            select=select,
            step=step,
            steps=steps_per_epoch,
            lr_for=lr_for,
            progress=_progress(console),
            label=f"epoch {epoch + 1}/{opts.epochs}",
        )
        lr = lr_for(step - 1)

        result = evaluate(model, val_loader, device, max_batches=opts.max_steps)
        m = result.metrics(cfg.exit_threshold)
        improved = m["acc_early_exit"] > best
        if improved:
            best = m["acc_early_exit"]
            save_checkpoint(
                model,
                best_path,
                metadata={"epoch": str(epoch), "val_acc_early_exit": f"{best:.6f}"},
            )
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
            "time_s": round(time.perf_counter() - t0, 3),
        }
        # Log first: a crash before the checkpoint leaves a line that resuming drops and rewrites.
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        history.append(record)
        save_resumable(
            last_path,
            {
                "format": FORMAT_TAG,
                "config": cfg.to_dict(),
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step": step,
                "best_metric": best,
                "rng": _rng_state(),
                "train_options": opts.to_dict(),
            },
        )
        log(
            f"epoch {epoch + 1}/{opts.epochs}  loss {train_loss:.4f}  val acc stage 1 "
            f"{_fmt_pct(m['acc_stage1'])}  stage 2 {_fmt_pct(m['acc_stage2'])}  early exit "
            f"{_fmt_pct(m['acc_early_exit'])} @ {cfg.exit_threshold:g} (exit rate {_fmt_pct(m['exit_rate'])})"
            f"  {record['time_s']:.1f}s{'  * best' if improved else ''}"
        )
        if on_epoch_end is not None:
            on_epoch_end(record)

    return TrainResult(model.cpu().eval(), cfg, out, opts.epochs, step, best, history)


def _train_epoch(
    model: SACViT,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    opts: TrainOptions,
    device: torch.device,
    select: bool,
    step: int,
    steps: int,
    lr_for: Callable[[int], float],
    progress: Progress,
    label: str,
) -> tuple[float, int]:
    """One epoch of at most ``steps`` optimizer steps; returns the mean loss and the new global step."""
    loss_sum = torch.zeros((), device=device)
    seen = 0
    with progress:
        task = progress.add_task(label, total=steps, loss="")
        for i, (x, y) in enumerate(loader):
            if i >= steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_for(step)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=opts.amp):
                logits1, logits2 = model.forward_train(x, select_tokens=select)
            loss, _, _ = distillation_loss(logits1.float(), logits2.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if opts.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += loss.detach() * y.shape[0]
            seen += y.shape[0]
            fields = {}
            if i % 10 == 0 or i + 1 == steps:  # a sync on CUDA: not every step
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainError(
                        f"the loss became {value} at step {step}; lower --lr or set --clip-grad 1.0"
                    )
                fields["loss"] = f"loss {value:.3f}"
            progress.update(task, completed=i + 1, **fields)
    return float(loss_sum) / max(1, seen), step


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # logs and pipes get the per-epoch lines only
    )


def _read_log(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    """Entries up to the resumed epoch; a later one (a crash between log and checkpoint) is dropped."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("epoch", -1) <= upto_epoch]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows
