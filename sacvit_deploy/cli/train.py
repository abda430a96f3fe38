"""`sacvit-deploy train`: train a two-stage model end to end on an ImageFolder."""

from __future__ import annotations

import math
import os
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import err, out, printable, safe
from sacvit_deploy.cli._options import InitFormatChoice, Maximum, TrainFormatChoice
from sacvit_deploy.cli._paths import INPUT, OUTPUT_FOLDER
from sacvit_deploy.core.errors import ConfigError, SacvitError
from sacvit_deploy.core.validate import parse_json
from sacvit_deploy.model.config import ModelConfig


def is_main_process() -> bool:
    """Under torchrun only rank 0 prints results (the library keeps the other ranks quiet too)."""
    return os.environ.get("RANK", "0") == "0"


class Recipe(str, Enum):
    ours = "ours"
    deit = "deit"


class AmpDtype(str, Enum):
    fp16 = "fp16"
    bf16 = "bf16"


class DistBackend(str, Enum):
    auto = "auto"
    nccl = "nccl"
    gloo = "gloo"


_MODEL, _SCHEDULE, _DATA, _RUN = "Model", "Optimisation", "Data", "Run"
_RECIPE, _DIST = "Recipe (unset: from --recipe; docs/training.md)", "Distributed (torchrun)"
_FROM_RECIPE = "Default: from --recipe"


def read_config_json(path: Path) -> ModelConfig:
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass a model config JSON (ModelConfig.to_dict())") from None
    except (OSError, ValueError) as exc:  # ValueError: bad or too deep JSON, not UTF-8
        raise ConfigError(f"{path}: not a readable JSON model config ({exc})") from None
    try:
        return ModelConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@handle_errors
def train(
    data_dir: Annotated[
        Path,
        typer.Argument(help="ImageFolder: DATA_DIR/train/<class>/* and DATA_DIR/val/<class>/*."),
        INPUT,
    ],
    variant: Annotated[
        Optional[str],
        typer.Option(help="Named variant (see `variants`). Default: deit_small_224.", rich_help_panel=_MODEL),
    ] = None,
    fmt: Annotated[
        Optional[TrainFormatChoice],
        typer.Option(
            "--format", help="Stage-2 rules to train with. Default: sacvit.", rich_help_panel=_MODEL
        ),
    ] = None,
    config_json: Annotated[
        Optional[Path],
        typer.Option(
            "--config-json",
            help="A full model config (JSON of ModelConfig.to_dict()) instead of --variant/--format.",
            rich_help_panel=_MODEL,
        ),
        INPUT,
    ] = None,
    init: Annotated[
        Optional[Path],
        typer.Option(help="Initial weights, e.g. timm DeiT (--init-format deit).", rich_help_panel=_MODEL),
        INPUT,
    ] = None,
    init_format: Annotated[
        InitFormatChoice, typer.Option(help="Format of the --init checkpoint.", rich_help_panel=_MODEL)
    ] = InitFormatChoice("deit"),
    threshold: Annotated[
        Optional[float],
        typer.Option(
            help="Exit threshold saved with the model and used for validation. Default: the variant's.",
            rich_help_panel=_MODEL,
        ),
    ] = None,
    num_classes: Annotated[
        Optional[int],
        typer.Option(
            help="Classes of the new head, checked against the ImageFolder's class folders (their names "
            "go into the checkpoint and the exported manifest). Default: the number of folders.",
            rich_help_panel=_MODEL,
        ),
    ] = None,
    freeze_epochs: Annotated[
        int,
        typer.Option(
            help="Fine-tuning: train only the new head and the reuse block for this many first epochs.",
            rich_help_panel=_MODEL,
        ),
    ] = 0,
    recipe: Annotated[
        Recipe,
        typer.Option(
            help="Presets for the options below: ours (light, for fine-tuning) or deit (DeiT / LF-ViT / "
            "CF-ViT: smoothing 0.1, Mixup 0.8, CutMix 1.0, rand-m9-mstd0.5-inc1, erasing 0.25, drop path "
            "0.1, EMA 0.99996, repeated aug x3).",
            rich_help_panel=_RECIPE,
        ),
    ] = Recipe.ours,
    drop_path: Annotated[
        Optional[float], typer.Option(help=f"Stochastic depth rate. {_FROM_RECIPE}.", rich_help_panel=_RECIPE)
    ] = None,
    smoothing: Annotated[
        Optional[float], typer.Option(help=f"Label smoothing. {_FROM_RECIPE}.", rich_help_panel=_RECIPE)
    ] = None,
    mixup: Annotated[
        Optional[float],
        typer.Option(help=f"Mixup Beta alpha, 0 = off. {_FROM_RECIPE}.", rich_help_panel=_RECIPE),
    ] = None,
    cutmix: Annotated[
        Optional[float],
        typer.Option(help=f"CutMix Beta alpha, 0 = off. {_FROM_RECIPE}.", rich_help_panel=_RECIPE),
    ] = None,
    rand_augment: Annotated[
        Optional[str],
        typer.Option(
            help=f"RandAugment in timm's notation (rand-m9-mstd0.5-inc1) or none. {_FROM_RECIPE}.",
            rich_help_panel=_RECIPE,
        ),
    ] = None,
    reprob: Annotated[
        Optional[float],
        typer.Option(help=f"Random erasing probability. {_FROM_RECIPE}.", rich_help_panel=_RECIPE),
    ] = None,
    repeated_aug: Annotated[
        Optional[int],
        typer.Option(
            help=f"Repeated augmentation: copies of each drawn image per epoch, 1 = off. {_FROM_RECIPE}.",
            rich_help_panel=_RECIPE,
        ),
    ] = None,
    ema_decay: Annotated[
        Optional[float],
        typer.Option(
            help=f"EMA of the weights (evaluated, saved as best_ema.safetensors), 0 = off. {_FROM_RECIPE}.",
            rich_help_panel=_RECIPE,
        ),
    ] = None,
    layer_decay: Annotated[
        Optional[float],
        typer.Option(
            help="Layer-wise learning-rate decay (e.g. 0.65 to fine-tune); unset = one rate for all layers.",
            rich_help_panel=_RECIPE,
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs.", rich_help_panel=_SCHEDULE)] = 300,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Global batch per optimizer step: all processes and accumulation steps together "
            "(DeiT's --batch-size 128 on 8 GPUs is --batch-size 1024 here).",
            rich_help_panel=_SCHEDULE,
        ),
        Maximum(1 << 20),  # a global batch over many GPUs, not one device's
    ] = 128,
    accum_steps: Annotated[
        int,
        typer.Option(
            help="Gradient accumulation: micro-batches per optimizer step.", rich_help_panel=_SCHEDULE
        ),
    ] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).", rich_help_panel=_SCHEDULE)] = 5e-4,
    min_lr: Annotated[
        float, typer.Option(help="Final learning rate of the cosine schedule.", rich_help_panel=_SCHEDULE)
    ] = 1e-5,
    weight_decay: Annotated[
        float,
        typer.Option(
            help="AdamW weight decay (not on biases, norms, cls_token, position embeddings).",
            rich_help_panel=_SCHEDULE,
        ),
    ] = 0.05,
    warmup_epochs: Annotated[
        float, typer.Option(help="Linear learning-rate warm-up, in epochs.", rich_help_panel=_SCHEDULE)
    ] = 5.0,
    selection_warmup_epochs: Annotated[
        Optional[int],
        typer.Option(
            help="Epochs in which stage 2 sees all fine tokens before token selection is switched on. "
            "Default: 77% of --epochs, like LF-ViT's 230 of 300.",
            rich_help_panel=_SCHEDULE,
        ),
    ] = None,
    clip_grad: Annotated[
        Optional[float],
        typer.Option(help="Clip the gradient norm to this value. Default: off.", rich_help_panel=_SCHEDULE),
    ] = None,
    hflip: Annotated[
        bool, typer.Option("--hflip/--no-hflip", help="Random horizontal flips.", rich_help_panel=_DATA)
    ] = True,
    rrc_scale: Annotated[
        float,
        typer.Option(help="Smallest area fraction of RandomResizedCrop.", rich_help_panel=_DATA),
    ] = 0.08,
    workers: Annotated[
        Optional[int],
        typer.Option(
            help="Data loader processes per training process. Default: from the CPUs this process may "
            "use (shared by the processes on the machine), at most 8.",
            rich_help_panel=_DATA,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.", rich_help_panel=_RUN)] = "auto",
    amp: Annotated[
        bool,
        typer.Option("--amp", help="Mixed precision (autocast; see --amp-dtype).", rich_help_panel=_RUN),
    ] = False,
    amp_dtype: Annotated[
        AmpDtype,
        typer.Option(
            help="fp16 (with a GradScaler; CUDA only) or bf16 (no scaler; CUDA with bf16, or CPU).",
            rich_help_panel=_RUN,
        ),
    ] = AmpDtype.fp16,
    dist_backend: Annotated[
        DistBackend,
        typer.Option(
            help="Process-group backend under torchrun: auto = nccl on CUDA, gloo on CPU.",
            rich_help_panel=_DIST,
        ),
    ] = DistBackend.auto,
    dist_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for the other processes (rendezvous, collectives).", rich_help_panel=_DIST
        ),
    ] = 1800.0,
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output folder: last.pt, best.safetensors, best_ema.safetensors, log.jsonl (rank 0 writes).",
            rich_help_panel=_RUN,
        ),
        OUTPUT_FOLDER,
    ] = Path("runs/sacvit"),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from last.pt.", rich_help_panel=_RUN)
    ] = False,
    seed: Annotated[
        int, typer.Option(help="Seed of init, shuffling and augmentation.", rich_help_panel=_RUN)
    ] = 0,
    max_steps: Annotated[
        Optional[int],
        typer.Option(
            help="At most this many train and val batches per epoch (smoke tests).", rich_help_panel=_RUN
        ),
    ] = None,
) -> None:
    """Train SAC-ViT end to end: stage 2 learns the labels, stage 1 learns from stage 2 (KL).

    On several GPUs or machines, start it with torchrun, e.g.
    torchrun --nproc-per-node 8 --no-python sacvit-deploy train DATA --device cuda ...
    """
    from sacvit_deploy.training import TrainOptions  # torch: imported by the command, not by --help
    from sacvit_deploy.training import train as run_training

    opts = TrainOptions(
        data_dir=data_dir,
        out_dir=out_dir,
        variant=variant,
        format=fmt.value if fmt else None,
        model_config=read_config_json(config_json) if config_json else None,
        init=init,
        init_format=init_format.value,
        num_classes=num_classes,
        freeze_epochs=freeze_epochs,
        epochs=epochs,
        batch_size=batch_size,
        accum_steps=accum_steps,
        lr=lr,
        min_lr=min_lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        selection_warmup_epochs=selection_warmup_epochs,
        threshold=threshold,
        clip_grad=clip_grad,
        recipe=recipe.value,
        drop_path=drop_path,
        smoothing=smoothing,
        mixup=mixup,
        cutmix=cutmix,
        rand_augment=rand_augment,
        reprob=reprob,
        repeated_aug=repeated_aug,
        ema_decay=ema_decay,
        layer_decay=layer_decay,
        device=device,
        amp=amp,
        amp_dtype=amp_dtype.value,
        dist_backend=dist_backend.value,
        dist_timeout_s=dist_timeout,
        workers=workers,
        resume=resume,
        seed=seed,
        hflip=hflip,
        rrc_scale=rrc_scale,
        max_steps=max_steps,
    )
    try:
        result = run_training(opts, log=_line, progress=_epoch_progress)
    except SacvitError:
        if is_main_process():
            raise
        raise typer.Exit(1) from None  # every rank raises the same error; rank 0 prints it once
    if not is_main_process():
        return
    if math.isfinite(result.best_metric):
        out.print(
            f"best val accuracy (early exit at threshold {result.cfg.exit_threshold:g}): "
            f"{100 * result.best_metric:.2f}% -> {safe(result.best_path)}",
            highlight=False,
        )
    if result.ema_model is not None and result.best_ema_path.is_file():
        out.print(f"best EMA weights: {safe(result.best_ema_path)}", highlight=False)
    out.print(
        f"resumable checkpoint: {safe(result.last_path)} (epoch {result.epochs_done}, step {result.steps})"
    )


def _line(message: str) -> None:
    err.print(printable(message), highlight=False, markup=False)  # it quotes paths and class names


def _epoch_progress():  # -> rich.progress.Progress
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # logs and pipes get the per-epoch lines only
    )
