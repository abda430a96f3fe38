"""What every command shares: consoles, the one-line error convention, option types."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
    Type,
    TypeVar,
    Union,
)

import typer
from rich.console import Console, ConsoleRenderable, RenderHook
from rich.segment import Segment
from typing_extensions import Annotated

from sacvit_deploy.backends.factory import auto_order_help as _auto_order_help
from sacvit_deploy.backends.factory import backend_names as _backend_names
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.extras import import_failure
from sacvit_deploy.core.fileinfo import resolved
from sacvit_deploy.core.formats import AUTO, FORMAT_NAMES, INIT_FORMATS, TRAIN_FORMATS
from sacvit_deploy.core.trt_families import TRT_FAMILY_NAMES
from sacvit_deploy.core.validate import MAX_BATCH as MAX_BATCH  # the one limit, shared with the API


class _Console(Console):
    """The one printer. Markup is only ever what our own templates write: a message whose markup
    does not parse (a ``[/]`` in a path interpolated without :func:`safe`) prints as written,
    never as a MarkupError traceback. Control characters are escaped by :class:`_VisibleText`."""

    def render_str(self, text: str, *args: Any, **kwargs: Any) -> Any:
        from rich.errors import MarkupError

        try:
            return super().render_str(text, *args, **kwargs)
        except MarkupError:
            return super().render_str(text, *args, **{**kwargs, "markup": False})


# Results go to stdout, everything else (progress, notes, errors) to stderr, so pipes stay clean.
# Piped output gets a wide fixed width so tables are never squeezed to 80 columns.
# emoji=False: ":smile:" in a file name prints as written.
out = _Console(soft_wrap=True, emoji=False, width=None if sys.stdout.isatty() else 200)
err = _Console(stderr=True, soft_wrap=True, emoji=False, width=None if sys.stderr.isatty() else 200)


class _VisibleText(RenderHook):
    """A net under :func:`safe`: whatever a command prints, a control character inside the text
    (ESC, CR, backspace, bidi overrides) is shown escaped; only Rich's own styling and line breaks
    reach the terminal. (A newline inside a value is a line break here: values go through safe().)"""

    def process_renderables(self, renderables: List[ConsoleRenderable]) -> List[ConsoleRenderable]:
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


_APP: List[typer.Typer] = []  # the root app, registered by cli/__init__.py


def register_app(app: typer.Typer) -> None:
    _APP[:] = [app]


def run_command(argv: List[str]) -> int:
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
    """What every command passes through (so a new one cannot forget it):

    * its path parameters must each be declared as input or output (:class:`PathRole`); the output
      policy (:func:`check_paths`) runs for all of them before the command does any work;
    * the package's log records (and ONNX Runtime's own logger, quietened to errors) print as
      escaped notes through the one printer;
    * user mistakes (SacvitError) become one line on stderr and exit code 1; bugs keep tracebacks.
    """
    roles = path_roles(fn)
    values = value_checks(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _route_logs()
            check_values(fn, values, args, kwargs)
            check_paths(fn, roles, args, kwargs)
            return fn(*args, **kwargs)
        except SacvitError as exc:
            raise fail(safe(exc)) from None
        except ModuleNotFoundError as exc:
            message = import_failure(exc, f"`sacvit-deploy {_command_name(fn)}`", command=_command_name(fn))
            if message is None:
                raise  # a missing core dependency is a broken install: keep the traceback
            raise fail(safe(message)) from None

    return wrapper  # type: ignore[return-value]


# ---- path options: every one declared as input or output, one policy for all -------------------------
class PathRole:
    """Annotated metadata declaring what a command does with a path parameter (typer ignores it):

    ``INPUT`` a file or folder it reads; ``ARTIFACTS`` an artifact folder it reads (no output may go
    into it); ``OUTPUT_FILE`` / ``OUTPUT_FOLDER`` what it writes; ``CACHE_FILE`` a file it reads if
    present and rewrites (checked as an output, but may be itself).
    """

    def __init__(self, kind: str, default: Optional[Callable[[], Optional[Path]]] = None) -> None:
        self.kind = kind
        self.default = default  # the folder used when the option is not given (artifacts)

    def __repr__(self) -> str:
        return f"PathRole({self.kind})"


INPUT = PathRole("input")
ARTIFACTS = PathRole("artifacts")
OUTPUT_FILE = PathRole("output file")
OUTPUT_FOLDER = PathRole("output folder")
CACHE_FILE = PathRole("cache file")


def _default_artifacts() -> Optional[Path]:
    from sacvit_deploy.runtime.loader import default_artifacts

    try:
        return Path(default_artifacts())
    except SacvitError:
        return None


RUN_ARTIFACTS = PathRole("artifacts", default=_default_artifacts)


def _is_path_type(tp: Any) -> bool:
    import typing_extensions as typing  # Annotated-aware hints on Python 3.8 too (typer needs it)

    if tp is Path:
        return True
    return any(_is_path_type(a) for a in typing.get_args(tp) if a is not type(None))


def path_roles(fn: Callable[..., Any]) -> Dict[str, Tuple[PathRole, str]]:
    """parameter -> (role, option as typed) for every path parameter of command ``fn``. A path
    parameter without a role is a bug of the command, raised when it is defined."""
    import inspect

    import typing_extensions as typing  # Annotated-aware hints on Python 3.8 too (typer needs it)

    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation this Python cannot evaluate: tests/test_mechanisms.py checks
        return {}
    roles: Dict[str, Tuple[PathRole, str]] = {}
    for name in inspect.signature(fn).parameters:
        hint = hints.get(name)
        if typing.get_origin(hint) is not Annotated:
            continue
        base, *meta = typing.get_args(hint)
        if not _is_path_type(base):
            continue
        role = next((m for m in meta if isinstance(m, PathRole)), None)
        if role is None:
            raise TypeError(
                f"command {fn.__name__}: parameter {name} is a path; declare it INPUT, ARTIFACTS, "
                "OUTPUT_FILE, OUTPUT_FOLDER or CACHE_FILE (cli/_common.py) in its Annotated[...]"
            )
        roles[name] = (role, _option_name(name, list(meta)))
    return roles


class Maximum:
    """Annotated metadata: the largest value a checked number may take here (train's global batch)."""

    def __init__(self, value: int) -> None:
        self.value = value


def _check_threshold(value: Any, option: str, _meta: List[Any]) -> None:
    from sacvit_deploy.core import validate

    if value is None:
        return
    meaning = validate.threshold_note(validate.threshold(value, option), option)
    if meaning is not None:
        note(f"[yellow]warning:[/] {safe(meaning)}")


def _check_batch(value: Any, option: str, meta: List[Any]) -> None:
    from sacvit_deploy.core import validate

    if value is not None:
        limit = next((m.value for m in meta if isinstance(m, Maximum)), validate.MAX_BATCH)
        validate.batch_size(value, option, limit)


def _check_topk(value: Any, option: str, _meta: List[Any]) -> None:
    from sacvit_deploy.core import validate

    if value is not None:
        validate.topk(value, option)


def _check_workers(value: Any, option: str, _meta: List[Any]) -> None:
    from sacvit_deploy.core import validate

    if value is not None:
        validate.workers(value, option)


# Values every command checks the same way (core.validate, which the Python API calls too), by
# parameter name: a new command with a --threshold or --batch-size gets the check without asking.
VALUE_CHECKS: Dict[str, Callable[[Any, str, List[Any]], None]] = {
    "threshold": _check_threshold,
    "batch_size": _check_batch,
    "calib_batch": _check_batch,
    "max_batch": _check_batch,
    "topk": _check_topk,
    "workers": _check_workers,
}


def _option_name(name: str, meta: List[Any]) -> str:
    from typer.models import ArgumentInfo, ParameterInfo

    info = next((m for m in meta if isinstance(m, ParameterInfo)), None)
    if isinstance(info, ArgumentInfo):
        return name.upper()
    # Annotated style: typer.Option("--out") holds "--out" as its default until typer moves it.
    default = getattr(info, "default", None)
    names = [default] if isinstance(default, str) else []
    decls = [d for d in [*names, *(getattr(info, "param_decls", None) or ())] if d.startswith("--")]
    return decls[0] if decls else "--" + name.replace("_", "-")


def value_checks(fn: Callable[..., Any]) -> Dict[str, Tuple[str, List[Any]]]:
    """parameter -> (option, Annotated metadata) for the parameters :data:`VALUE_CHECKS` covers."""
    import typing_extensions as typing  # Annotated-aware hints on Python 3.8 too (typer needs it)

    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation this Python cannot evaluate: tests/test_mechanisms.py checks
        return {}
    found = {}
    for name in VALUE_CHECKS:
        hint = hints.get(name)
        meta = list(typing.get_args(hint)[1:]) if typing.get_origin(hint) is Annotated else []
        if name in hints:
            found[name] = (_option_name(name, meta), meta)
    return found


def check_values(
    fn: Callable[..., Any], checks: Dict[str, Tuple[str, List[Any]]], args: tuple, kwargs: dict
) -> None:
    if not checks:
        return
    import inspect

    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    bound.apply_defaults()
    for name, (option, meta) in checks.items():
        value = bound.arguments.get(name)
        VALUE_CHECKS[name](value, option, meta)


def _paths(value: Any) -> List[Path]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [Path(v) for v in value if v is not None]
    text = str(value)
    if text.startswith(("http://", "https://", "grpc://")) or text == "-":
        return []
    return [Path(value)]


def check_paths(
    fn: Callable[..., Any], roles: Dict[str, Tuple[PathRole, str]], args: tuple, kwargs: dict
) -> None:
    """The output policy, for every declared output of a command, before it does any work: an output
    is never one of the inputs, never inside an artifact folder it reads (nor one of its files), never
    another output; a file's folder, and the nearest existing folder of an output folder, must be
    a folder it can write in."""
    if not roles:
        return
    import inspect

    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    bound.apply_defaults()
    inputs: List[Path] = []
    artifacts: List[Path] = []
    outputs: List[Tuple[Path, str, PathRole]] = []
    given = {name: _paths(bound.arguments.get(name)) for name in roles}
    if not any(given[name] for name, (role, _) in roles.items() if role.kind not in ("input", "artifacts")):
        return  # nothing written: no default folder to look up
    for name, (role, option) in roles.items():
        value = given[name]
        if not value and role.default is not None:
            default = role.default()
            value = [] if default is None else [default]
        if role.kind in ("input", "artifacts"):
            inputs += value
            if role.kind == "artifacts":
                artifacts += value
        else:
            outputs += [(p, option, role) for p in value]
    seen: Dict[Path, str] = {}
    for path, option, role in outputs:
        target = resolved(path)
        if target in seen:
            raise SacvitError(f"{option} {path}: is also {seen[target]}; give each output its own path")
        seen[target] = f"{option} {path}"
        if role.kind == "output folder":
            check_output_folder(path, option, inputs, artifacts)
        else:
            for folder in artifacts or [None]:
                check_output(path, option, inputs, folder, self_ok=role.kind == "cache file")
            _not_a_file_of_an_input_folder(path, option, target, inputs)


def _not_a_file_of_an_input_folder(path: Path, option: str, target: Path, inputs: List[Path]) -> None:
    """An existing file inside a folder the command reads (calibration images, data) is an input
    too, even when it is not one the command will pick (a PNG that is not decodable)."""
    if not os.path.lexists(target):
        return
    for item in inputs:
        folder = resolved(item)
        if folder in target.parents and folder.is_dir():
            raise SacvitError(
                f"{option} {path}: is one of the inputs (it lies in the input folder {item}); writing "
                "it would destroy it; write elsewhere"
            )


def check_output_folder(
    path: Path, option: str, inputs: Iterable[Path] = (), artifacts: Iterable[Path] = ()
) -> Path:
    """Refuse, before any work, an output folder that is a file, is or lies inside one of the inputs
    (an artifact folder, the data), or whose nearest existing folder cannot be written in."""
    shown = f"{option} {path}"
    try:
        if path.exists() and not path.is_dir():
            raise SacvitError(
                f"{shown}: exists and is not a folder; give a folder (it is created if missing)"
            )
    except PermissionError:
        raise SacvitError(
            f"{shown}: cannot look into its parent folder (permission denied); pick another"
        ) from None
    target = resolved(path)
    for item in inputs:
        source = resolved(item)
        if source.is_file():
            continue  # a file: the output folder cannot lie in it (the walk below names that)
        if target == source or source in target.parents:
            what = "the artifact folder" if Path(item) in list(artifacts) else "the input"
            raise SacvitError(
                f"{shown}: is inside {what} {item}, which it would change; write elsewhere"
                if target != source
                else f"{shown}: is {what} {item}; writing there would replace what it reads; write elsewhere"
            )
    existing = target
    while True:
        try:
            if existing.exists():
                break
        except PermissionError:
            raise SacvitError(
                f"{shown}: cannot look into {existing.parent} (permission denied); pick another folder"
            ) from None
        if existing == existing.parent:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise SacvitError(f"{shown}: {existing} is a file, not a folder; pick another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SacvitError(
            f"{shown}: cannot create or write in {existing}; pick another folder or fix its permissions"
        )
    return path


def _command_name(fn: Callable[..., Any]) -> str:
    return fn.__name__.replace("_", "-")


def note(message: str) -> None:
    """A line on stderr (``message`` may hold markup; interpolate values through :func:`safe`)."""
    err.print(message, highlight=False)


_LOG_STYLES = {"WARNING": "[yellow]warning:[/] ", "ERROR": "[red]error:[/] ", "CRITICAL": "[red]error:[/] "}


def _note_handler() -> Any:  # -> logging.Handler
    """Log records of the package as escaped notes (WARNING and above)."""
    import logging

    class NoteHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            note(_LOG_STYLES.get(record.levelname, "") + safe(record.getMessage()))

    return NoteHandler(logging.WARNING)


_ROUTED: List[Any] = []


def _route_logs() -> None:
    """Once per process: warnings the package logs print through the one printer (escaped), not
    through Python's last-resort handler; ONNX Runtime's own C++ logger, which writes raw colour
    codes to stderr, is turned down to errors (which also reach us as exceptions) as soon as it is
    imported, whichever command imports it."""
    if _ROUTED:
        return
    import logging

    handler = _note_handler()
    logging.getLogger("sacvit_deploy").addHandler(handler)
    _ROUTED.append(handler)
    _after_import("onnxruntime", _quiet_onnxruntime)


def _quiet_onnxruntime(module: Any) -> None:
    setter = getattr(module, "set_default_logger_severity", None)
    if setter is not None:
        setter(3)  # 3 = ERROR: no raw warning lines on the terminal


def _after_import(name: str, hook: Callable[[Any], None]) -> None:
    """Run ``hook(module)`` right after ``name`` is imported (now, if it already is)."""
    import importlib.abc
    import importlib.util

    if name in sys.modules:
        hook(sys.modules[name])
        return

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def run(module: Any) -> None:
                exec_module(module)
                hook(module)

            spec.loader.exec_module = run  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, Finder())


def print_warnings_as_lines() -> None:
    """Python warnings (Pillow's about a file's metadata, torch's about a checkpoint) print as one
    escaped line, ``warning: <image>: <message>``, naming the image being decoded when there is one,
    instead of Python's two lines of library path, line number and source. Pillow's are shown once
    for every image they concern, like the "skipped" lines."""
    import warnings

    warnings.filterwarnings("always", module=r"PIL(\.|$)")
    warnings.showwarning = _show_warning


_SHOWN_WARNINGS: Set[Tuple[str, str]] = set()


def _show_warning(
    message: Union[Warning, str],
    category: Type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: Optional[str] = None,
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


def check_batch_size(value: int, option: str) -> int:
    from sacvit_deploy.core import validate

    return validate.batch_size(value, option)


# --backend's choices and help come from the backend table (backends/factory.py's REGISTRY).
if TYPE_CHECKING:  # members made from a table at run time: opaque to a type checker
    BackendName = Any
else:
    BackendName = Enum("BackendName", {n: n for n in _backend_names()}, type=str)


class DeviceName(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


ArtifactsOption = Annotated[
    Optional[Path],
    typer.Option(
        help="Artifact folder (default: engines/ if it holds engines, else export/).", rich_help_panel=RUN
    ),
    RUN_ARTIFACTS,
]
BackendOption = Annotated[BackendName, typer.Option(help=_auto_order_help(), rich_help_panel=RUN)]
DeviceOption = Annotated[
    Optional[DeviceName], typer.Option(help="cpu or cuda (default: the backend's best).", rich_help_panel=RUN)
]
ThreadsOption = Annotated[
    Optional[int],
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
    Optional[str],
    typer.Option(
        "--ov-device",
        help="--backend openvino: OpenVINO device, CPU (default), GPU, NPU or GPU.1 ...",
        rich_help_panel=RUN,
    ),
]
OvHintOption = Annotated[
    Optional[OvHint],
    typer.Option(
        "--ov-hint",
        help="--backend openvino: performance hint; THROUGHPUT splits each batch over parallel requests.",
        rich_help_panel=RUN,
    ),
]


def openvino_options(
    backend: BackendName, ov_device: Optional[str], ov_hint: Optional[OvHint]
) -> Dict[str, Any]:
    """open_pipeline's keyword arguments for --ov-device / --ov-hint (only with --backend openvino)."""
    if (ov_device or ov_hint) and backend != BackendName.openvino:
        raise SacvitError("--ov-device and --ov-hint apply to --backend openvino; add it or drop them")
    opts: Dict[str, Any] = {}
    if ov_device:
        opts["provider"] = ov_device
    if ov_hint:
        opts["hint"] = ov_hint.value
    return opts


def parity_table(title: str, rows: List[Dict[str, Any]], low: str = "[red]FAIL[/]") -> Any:  # -> rich Table
    """The agreement table of every parity check (export verification, check --run, build-engine)."""
    from rich.table import Table

    def pct(v: Optional[float]) -> str:
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


def verification_images(folder: Optional[Path], cfg, limit: int = 16):  # -> torch.Tensor
    """Real images for parity checks: the user's folder, else the samples bundled with the package."""
    import torch

    from sacvit_deploy.runtime.image_folder import load_image_folder

    loaded = load_image_folder(
        folder, cfg.preprocess, limit, on_skip=lambda m: note(f"[yellow]skipped[/] {safe(m)}")
    )
    return torch.from_numpy(loaded.images) if loaded.paths else None


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """A JSON report the user asked for (--json FILE); an unwritable path is a one-line error."""
    import json

    from sacvit_deploy.core.atomic import write_text

    write_text(path, json.dumps(data, indent=2) + "\n")  # a full disk or a read-only folder: one line


def check_output(
    path: Path,
    option: str,
    inputs: Iterable[Path] = (),
    artifacts: Optional[Union[Path, str]] = None,
    self_ok: bool = False,
) -> Path:
    """Refuse, before any work, an output file that would destroy an input or cannot be written.

    ``path`` must not resolve to (or be a hard link of) one of ``inputs``, must not lie in the
    artifact folder being used (its manifest, graphs, engines), must not be a folder, and its folder
    must exist and be writable.
    """
    shown = f"{option} {path}"
    try:
        if path.is_dir():
            raise SacvitError(f"{shown}: is a folder; give a file name, e.g. {path / 'results.out'}")
    except PermissionError:
        raise SacvitError(
            f"{shown}: cannot look into its folder (permission denied); pick another path"
        ) from None
    target = resolved(path)
    if artifacts is not None and not str(artifacts).startswith(("http://", "https://", "grpc://")):
        folder = resolved(Path(artifacts))
        if target == folder or (folder in target.parents and _is_artifact(folder, target)):
            raise SacvitError(
                f"{shown}: is a file of the artifact folder {artifacts}, which it would damage; write elsewhere"
            )
        if folder in target.parents:  # a stranger in the folder: the next export into it refuses it
            raise SacvitError(
                f"{shown}: inside the artifact folder {artifacts}, where a later export or build-engine "
                "would refuse a file it did not write; write it elsewhere (e.g. the current folder)"
            )
    for item in inputs:
        if self_ok and resolved(item) == target:
            continue
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
    if not os.access(path, os.W_OK) or not st.st_mode & 0o222:  # mode bits: root can write anything
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


def read_labels(path: Path, num_classes: int) -> Tuple[str, ...]:
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
    caught: List[int] = []
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
def _choice_enum(name: str, values: Tuple[str, ...]) -> Type[Enum]:
    """A str Enum for typer whose members are ``values`` (member names made identifier-safe)."""
    return Enum(name, {"v_" + v.replace(".", "_").replace("-", "_"): v for v in values}, type=str)


if TYPE_CHECKING:  # members made from the tables at run time: opaque to a type checker
    TrtFamilyChoice = Any
    CheckpointFormatChoice = Any
    TrainFormatChoice = Any
    InitFormatChoice = Any
else:
    TrtFamilyChoice = _choice_enum("TrtFamilyChoice", TRT_FAMILY_NAMES)
    CheckpointFormatChoice = _choice_enum("CheckpointFormatChoice", (AUTO, *FORMAT_NAMES))
    TrainFormatChoice = _choice_enum("TrainFormatChoice", TRAIN_FORMATS)
    InitFormatChoice = _choice_enum("InitFormatChoice", INIT_FORMATS)
