"""What every command shares: consoles, the one-line error convention, option types."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, ConsoleRenderable, RenderHook
from rich.segment import Segment

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.extras import is_optional, missing_extra_message
from sacvit_deploy.core.fileinfo import resolved
from sacvit_deploy.core.formats import AUTO, FORMAT_NAMES, INIT_FORMATS, TRAIN_FORMATS
from sacvit_deploy.core.trt_families import TRT_FAMILY_NAMES

# Results go to stdout, everything else (progress, notes, errors) to stderr, so pipes stay clean.
# Piped output gets a wide fixed width so tables are never squeezed to 80 columns.
# emoji=False: ":smile:" in a file name prints as written.
out = Console(soft_wrap=True, emoji=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, emoji=False, width=None if sys.stderr.isatty() else 200)


class _VisibleText(RenderHook):
    """A net under :func:`safe`: whatever a command prints, a control character inside the text
    (ESC, CR, backspace, bidi overrides) is shown escaped; only Rich's own styling and line breaks
    reach the terminal. (A newline inside a value is a line break here: values go through safe().)"""

    def process_renderables(self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        return [_Visible(r) for r in renderables]


class _Visible:
    def __init__(self, renderable: ConsoleRenderable) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: Any) -> Iterator[Segment]:
        for seg in console.render(self.renderable, options):
            if seg.control or seg.text.isprintable():
                yield seg
            else:
                text = "\n".join(printable(line) for line in seg.text.split("\n"))
                yield Segment(text, seg.style)


for _console in (out, err):
    _console.push_render_hook(_VisibleText())

F = TypeVar("F", bound=Callable[..., Any])


def printable(value: object) -> str:
    """``value`` as one line of visible text: control and format characters (ESC, newlines, CR,
    backspace, bidi overrides, zero-width and C1 controls) become escapes such as ``\\x1b``, ``\\n``,
    ``\\u202e``, so a file or class name cannot move the cursor, clear the screen or forge a row."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if ch in named:
        return named[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe(value: object) -> str:
    """The one way a user- or artifact-supplied string (a path, a class name, an error message) goes
    into console output: :func:`printable`, and Rich markup neutralised, so ``[red]`` in a file name
    and ``'sacvit-deploy[triton]'`` in a message print as written."""
    from rich.markup import escape

    return escape(printable(value))


_APP: list[typer.Typer] = []  # the root app, registered by cli/__init__.py


def register_app(app: typer.Typer) -> None:
    _APP[:] = [app]


def run_command(argv: list[str]) -> int:
    """Run one ``sacvit-deploy`` command line in this process (the demo's steps) and return its exit
    code: the line the user sees is the line that runs, parsed by the real CLI, and commands never
    import each other."""
    try:
        _APP[0](args=argv, prog_name="sacvit-deploy")  # standalone: always ends in SystemExit
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` (``message`` may hold markup; interpolate values through :func:`safe`)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """User mistakes (SacvitError) become one line on stderr and exit code 1; bugs keep tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SacvitError as exc:
            raise fail(safe(exc)) from None
        except ModuleNotFoundError as exc:
            if not is_optional(exc.name):
                raise  # a missing core dependency is a broken install: keep the traceback
            raise fail(
                safe(missing_extra_message(exc.name or "", f"`sacvit-deploy {_command_name(fn)}`"))
            ) from None

    return wrapper  # type: ignore[return-value]


def _command_name(fn: Callable[..., Any]) -> str:
    return fn.__name__.replace("_", "-")


def note(message: str) -> None:
    """A line on stderr (``message`` may hold markup; interpolate values through :func:`safe`)."""
    err.print(message, highlight=False)


def print_warnings_as_lines() -> None:
    """Python warnings (Pillow's about a file's metadata, torch's about a checkpoint) print as one
    escaped line, ``warning: <image>: <message>``, naming the image being decoded when there is one,
    instead of Python's two lines of library path, line number and source. Pillow's are shown once
    for every image they concern, like the "skipped" lines."""
    import warnings

    warnings.filterwarnings("always", module=r"PIL(\.|$)")
    warnings.showwarning = _show_warning


_SHOWN_WARNINGS: set[tuple[str, str]] = set()


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    from sacvit_deploy.runtime.images import decoding

    path = decoding()
    text = str(message).strip()
    key = (str(path), text)
    if key in _SHOWN_WARNINGS:  # the header peek and the decode of one file both warn
        return
    _SHOWN_WARNINGS.add(key)
    where = f"{safe(path)}: " if path is not None else ""
    note(f"[yellow]warning:[/] {where}{safe(text)}")


# ---- options shared by the commands that run artifacts (infer, profile, calibrate) --------------------
RUN = "Runtime"
# The largest batch a command accepts: 1024 images of 224 px are 0.6 GB of float32 input (profile keeps
# a pool that size, infer decodes up to 3 batches ahead); beyond it a typo allocates tens of GB.
MAX_BATCH = 1024


def check_batch_size(value: int, option: str) -> int:
    if not 1 <= value <= MAX_BATCH:
        raise SacvitError(
            f"{option} {value}: give a batch size from 1 to {MAX_BATCH} (larger batches do not run faster here)"
        )
    return value


class BackendName(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"
    openvino = "openvino"
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
    BackendName,
    typer.Option(
        help="auto: TensorRT, then ONNX Runtime GPU, then OpenVINO (CPU, when installed), then ONNX Runtime CPU.",
        rich_help_panel=RUN,
    ),
]
DeviceOption = Annotated[
    DeviceName | None, typer.Option(help="cpu or cuda (default: the backend's best).", rich_help_panel=RUN)
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="CPU threads (ONNX Runtime intra-op; OpenVINO inference threads; torch for --backend torch).",
        rich_help_panel=RUN,
    ),
]


class OvHint(str, Enum):
    LATENCY = "LATENCY"
    THROUGHPUT = "THROUGHPUT"


OvDeviceOption = Annotated[
    str | None,
    typer.Option(
        "--ov-device",
        help="--backend openvino: OpenVINO device, CPU (default), GPU, NPU or GPU.1 ...",
        rich_help_panel=RUN,
    ),
]
OvHintOption = Annotated[
    OvHint | None,
    typer.Option(
        "--ov-hint",
        help="--backend openvino: performance hint; THROUGHPUT splits each batch over parallel requests.",
        rich_help_panel=RUN,
    ),
]


def openvino_options(backend: BackendName, ov_device: str | None, ov_hint: OvHint | None) -> dict[str, Any]:
    """open_pipeline's keyword arguments for --ov-device / --ov-hint (only with --backend openvino)."""
    if (ov_device or ov_hint) and backend != BackendName.openvino:
        raise SacvitError("--ov-device and --ov-hint apply to --backend openvino; add it or drop them")
    opts: dict[str, Any] = {}
    if ov_device:
        opts["provider"] = ov_device
    if ov_hint:
        opts["hint"] = ov_hint.value
    return opts


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
            "[green]pass[/]" if r["passed"] else f"{low} {safe(r.get('reason', ''))}",
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
            note(f"[yellow]skipped[/] {safe(exc)}")
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


def check_output(
    path: Path,
    option: str,
    inputs: Iterable[Path] = (),
    artifacts: Path | str | None = None,
) -> Path:
    """Refuse, before any work, an output file that would destroy an input or cannot be written.

    ``path`` must not resolve to (or be a hard link of) one of ``inputs``, must not lie in the
    artifact folder being used (its manifest, graphs, engines), must not be a folder, and its folder
    must exist and be writable.
    """
    shown = f"{option} {path}"
    if path.is_dir():
        raise SacvitError(f"{shown}: is a folder; give a file name, e.g. {path / 'results.out'}")
    target = resolved(path)
    if artifacts is not None and not str(artifacts).startswith(("http://", "https://", "grpc://")):
        folder = resolved(Path(artifacts))
        if target == folder or (folder in target.parents and _is_artifact(folder, target)):
            raise SacvitError(
                f"{shown}: is a file of the artifact folder {artifacts}, which it would damage; write elsewhere"
            )
    for item in inputs:
        if _same_file(path, target, Path(item)):
            raise SacvitError(f"{shown}: is one of the inputs ({item}); writing it would destroy it")
    parent = target.parent
    if not parent.is_dir():
        raise SacvitError(
            f"{shown}: the folder {parent} does not exist; create it first or pick another path"
        )
    if path.exists():
        if not os.access(path, os.W_OK):
            raise SacvitError(f"{shown}: not writable; pick another path or fix its permissions")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise SacvitError(
            f"{shown}: cannot create files in {parent}; pick another path or fix its permissions"
        )
    return path


def check_manifest_writable(path: Path) -> None:
    """``calibrate --write`` changes a manifest in place: refuse, before any work, one that is
    read-only (or not ours to rewrite), rather than replacing it with a file of another mode/owner."""
    if not path.is_file():
        return  # the artifact folder's own check names the problem
    st = path.stat()
    if not os.access(path, os.W_OK):
        raise SacvitError(
            f"{path}: read-only; make it writable (chmod u+w) to store the threshold, or drop --write"
        )
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid() and os.geteuid() != 0:
        raise SacvitError(
            f"{path}: owned by another user; rewriting it would change its owner; ask its owner to run --write"
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise SacvitError(f"{path.parent}: not writable (the manifest is replaced atomically); drop --write")


def _is_artifact(folder: Path, target: Path) -> bool:
    """A file the artifact folder holds or may hold: its manifest, anything the manifest lists, a
    name of this tool's artifact scheme (graphs, engines, weights, caches), anything in a subfolder."""
    from sacvit_deploy.core.manifest import MANIFEST_NAME, Manifest
    from sacvit_deploy.core.publish import ARTIFACT_NAME

    if target.parent != folder:
        return True
    if target.name == MANIFEST_NAME or ARTIFACT_NAME.match(target.name):
        return True
    try:
        return target.name in Manifest.load(folder).owned_files()
    except SacvitError:
        return False


def _same_file(path: Path, target: Path, other: Path) -> bool:
    if resolved(other) == target:
        return True
    try:
        return os.path.samefile(path, other)  # hard links too
    except OSError:
        return False


def read_labels(path: Path, num_classes: int) -> tuple[str, ...]:
    """One class name per line (blank lines ignored); the count must match the model's classes."""
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise SacvitError(
            f"{path}: cannot read the labels file ({reason}); pass a UTF-8 text file, one name per line"
        ) from None
    if len(names) != num_classes:
        raise SacvitError(
            f"{path}: {len(names)} labels for a model with {num_classes} classes; give one name per class"
        )
    return tuple(names)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends (so a row is never half written), then raise
    KeyboardInterrupt. Only in the main thread; elsewhere the block runs as is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)

    for sig in handlers:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


# ---- choices derived from the core tables ------------------------------------------------------------
def _choice_enum(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum for typer whose members are ``values`` (member names made identifier-safe)."""
    return Enum(name, {"v_" + v.replace(".", "_").replace("-", "_"): v for v in values}, type=str)


TrtFamilyChoice = _choice_enum("TrtFamilyChoice", TRT_FAMILY_NAMES)
CheckpointFormatChoice = _choice_enum("CheckpointFormatChoice", (AUTO, *FORMAT_NAMES))
TrainFormatChoice = _choice_enum("TrainFormatChoice", TRAIN_FORMATS)
InitFormatChoice = _choice_enum("InitFormatChoice", INIT_FORMATS)
