"""What every command shares: consoles, the one-line error convention, option types."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.extras import is_optional, missing_extra_message
from sacvit_deploy.core.formats import AUTO, FORMAT_NAMES, INIT_FORMATS, TRAIN_FORMATS
from sacvit_deploy.core.trt_families import TRT_FAMILY_NAMES

# Results go to stdout, everything else (progress, notes, errors) to stderr, so pipes stay clean.
# Piped output gets a wide fixed width so tables are never squeezed to 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """User mistakes (SacvitError) become one line on stderr and exit code 1; bugs keep tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SacvitError as exc:
            raise fail(_escape(str(exc))) from None
        except ModuleNotFoundError as exc:
            if not is_optional(exc.name):
                raise  # a missing core dependency is a broken install: keep the traceback
            raise fail(
                _escape(missing_extra_message(exc.name or "", f"`sacvit-deploy {_command_name(fn)}`"))
            ) from None

    return wrapper  # type: ignore[return-value]


def _command_name(fn: Callable[..., Any]) -> str:
    return fn.__name__.replace("_", "-")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def note(message: str) -> None:
    err.print(message, highlight=False)


# ---- options shared by the commands that run artifacts (infer, profile, calibrate) --------------------
RUN = "Runtime"


class BackendName(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"
    torch = "torch"


class DeviceName(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


ArtifactsOption = Annotated[
    Path | None,
    typer.Option(
        help="Artifact folder (default: engines/ if it holds engines, else export/).", rich_help_panel=RUN
    ),
]
BackendOption = Annotated[
    BackendName, typer.Option(help="auto: TensorRT, then ONNX Runtime GPU, then CPU.", rich_help_panel=RUN)
]
DeviceOption = Annotated[
    DeviceName | None, typer.Option(help="cpu or cuda (default: the backend's best).", rich_help_panel=RUN)
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        min=1, help="CPU threads (ONNX Runtime intra-op; torch for --backend torch).", rich_help_panel=RUN
    ),
]


def parity_table(title: str, rows: list[dict[str, Any]], low: str = "[red]FAIL[/]") -> Any:  # -> rich Table
    """The agreement table of every parity check (export verification, check --run, build-engine)."""
    from rich.table import Table

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    table = Table(title=title, caption=PARITY_CAPTION)
    columns = [
        "check",
        "images",
        "n",
        "max |Δ|",
        "limit",
        "top-1 agree",
        "exit agree",
        "selection agree",
        "result",
    ]
    for col in columns:
        table.add_column(col, justify="left" if col in ("check", "images", "result") else "right")
    for r in rows:
        limit = r.get("limit")
        table.add_row(
            r["check"],
            r.get("images", ""),
            str(r["samples"]),
            f"{r['max_abs_diff']:.2e}",
            "-" if limit is None else f"{limit:.1e}",
            pct(r["top1_agreement"]),
            pct(r["exit_agreement"]),
            pct(r["selection_agreement"]),
            "[green]pass[/]" if r["passed"] else f"{low} {_escape(r.get('reason', ''))}",
        )
    return table


PARITY_CAPTION = (
    "limit = atol + rtol * max|reference| per tensor; agreement counts samples not within a hair of "
    "their decision (top-2 margin, |confidence - threshold|)"
)


def verification_images(folder: Path | None, cfg, limit: int = 16):  # -> torch.Tensor
    """Real images for parity checks: the user's folder, else the samples bundled with the package."""
    import numpy as np
    import torch

    from sacvit_deploy.runtime.images import (
        ImageLoadError,
        collect_images,
        load_image,
        preprocess,
        sample_images,
    )

    paths = collect_images([folder])[:limit] if folder is not None else sample_images()[:limit]
    arrays = []
    for p in paths:
        try:
            arrays.append(preprocess(load_image(p), cfg.preprocess))
        except ImageLoadError as exc:
            note(f"[yellow]skipped[/] {exc}")
    if not arrays:
        return None
    return torch.from_numpy(np.stack(arrays))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """A JSON report the user asked for (--json FILE); an unwritable path is a one-line error."""
    import json

    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise SacvitError(
            f"{path}: cannot write the JSON report ({exc.strerror or exc}); pick a writable path"
        ) from None


# ---- choices derived from the core tables ------------------------------------------------------------
def _choice_enum(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum for typer whose members are ``values`` (member names made identifier-safe)."""
    return Enum(name, {"v_" + v.replace(".", "_").replace("-", "_"): v for v in values}, type=str)


TrtFamilyChoice = _choice_enum("TrtFamilyChoice", TRT_FAMILY_NAMES)
CheckpointFormatChoice = _choice_enum("CheckpointFormatChoice", (AUTO, *FORMAT_NAMES))
TrainFormatChoice = _choice_enum("TrainFormatChoice", TRAIN_FORMATS)
InitFormatChoice = _choice_enum("InitFormatChoice", INIT_FORMATS)
