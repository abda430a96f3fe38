"""`sacvit-deploy train`: train a two-stage model end to end on an ImageFolder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from sacvit_deploy.cli._common import InitFormatChoice, TrainFormatChoice, err, handle_errors, out
from sacvit_deploy.core.errors import ConfigError
from sacvit_deploy.model.config import ModelConfig
from sacvit_deploy.training import TrainOptions
from sacvit_deploy.training import train as run_training

_MODEL, _SCHEDULE, _DATA, _RUN = "Model", "Optimisation", "Data", "Run"


def read_config_json(path: Path) -> ModelConfig:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass a model config JSON (ModelConfig.to_dict())") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON model config ({exc})") from None
    try:
        return ModelConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@handle_errors
def train(
    data_dir: Annotated[
        Path, typer.Argument(help="ImageFolder: DATA_DIR/train/<class>/* and DATA_DIR/val/<class>/*.")
    ],
    variant: Annotated[
        str | None,
        typer.Option(help="Named variant (see `variants`). Default: deit_small_224.", rich_help_panel=_MODEL),
    ] = None,
    fmt: Annotated[
        TrainFormatChoice | None,
        typer.Option(
            "--format", help="Stage-2 rules to train with. Default: sacvit.", rich_help_panel=_MODEL
        ),
    ] = None,
    config_json: Annotated[
        Path | None,
        typer.Option(
            "--config-json",
            help="A full model config (JSON of ModelConfig.to_dict()) instead of --variant/--format.",
            rich_help_panel=_MODEL,
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="Initial weights, e.g. timm DeiT (--init-format deit).", rich_help_panel=_MODEL),
    ] = None,
    init_format: Annotated[
        InitFormatChoice, typer.Option(help="Format of the --init checkpoint.", rich_help_panel=_MODEL)
    ] = InitFormatChoice("deit"),
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Exit threshold saved with the model and used for validation. Default: the variant's.",
            rich_help_panel=_MODEL,
        ),
    ] = None,
    drop_path: Annotated[float, typer.Option(help="Stochastic depth rate.", rich_help_panel=_MODEL)] = 0.0,
    epochs: Annotated[int, typer.Option(help="Epochs.", rich_help_panel=_SCHEDULE)] = 300,
    batch_size: Annotated[int, typer.Option(help="Batch size.", rich_help_panel=_SCHEDULE)] = 128,
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
        int | None,
        typer.Option(
            help="Epochs in which stage 2 sees all fine tokens before token selection is switched on. "
            "Default: 77% of --epochs, like LF-ViT's 230 of 300.",
            rich_help_panel=_SCHEDULE,
        ),
    ] = None,
    clip_grad: Annotated[
        float | None,
        typer.Option(help="Clip the gradient norm to this value. Default: off.", rich_help_panel=_SCHEDULE),
    ] = None,
    hflip: Annotated[
        bool, typer.Option("--hflip/--no-hflip", help="Random horizontal flips.", rich_help_panel=_DATA)
    ] = True,
    rrc_scale: Annotated[
        float,
        typer.Option(help="Smallest area fraction of RandomResizedCrop.", rich_help_panel=_DATA),
    ] = 0.08,
    workers: Annotated[int, typer.Option(help="Data loader processes.", rich_help_panel=_DATA)] = 4,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.", rich_help_panel=_RUN)] = "auto",
    amp: Annotated[
        bool, typer.Option("--amp", help="float16 autocast + GradScaler (CUDA only).", rich_help_panel=_RUN)
    ] = False,
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out", help="Output folder: last.pt, best.safetensors, log.jsonl.", rich_help_panel=_RUN
        ),
    ] = Path("runs/sacvit"),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from last.pt.", rich_help_panel=_RUN)
    ] = False,
    seed: Annotated[
        int, typer.Option(help="Seed of init, shuffling and augmentation.", rich_help_panel=_RUN)
    ] = 0,
    max_steps: Annotated[
        int | None,
        typer.Option(
            help="At most this many train and val batches per epoch (smoke tests).", rich_help_panel=_RUN
        ),
    ] = None,
) -> None:
    """Train SAC-ViT end to end: stage 2 learns the labels, stage 1 learns from stage 2 (KL)."""
    opts = TrainOptions(
        data_dir=data_dir,
        out_dir=out_dir,
        variant=variant,
        format=fmt.value if fmt else None,
        model_config=read_config_json(config_json) if config_json else None,
        init=init,
        init_format=init_format.value,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        min_lr=min_lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        selection_warmup_epochs=selection_warmup_epochs,
        threshold=threshold,
        clip_grad=clip_grad,
        drop_path=drop_path,
        device=device,
        amp=amp,
        workers=workers,
        resume=resume,
        seed=seed,
        hflip=hflip,
        rrc_scale=rrc_scale,
        max_steps=max_steps,
    )
    result = run_training(opts, console=err)
    if math.isfinite(result.best_metric):
        out.print(
            f"best val accuracy (early exit at threshold {result.cfg.exit_threshold:g}): "
            f"{100 * result.best_metric:.2f}% -> {result.best_path}",
            highlight=False,
        )
    out.print(f"resumable checkpoint: {result.last_path} (epoch {result.epochs_done}, step {result.steps})")
