"""The one printer: consoles (results on stdout, the rest on stderr), escaping, notes, errors,
and the routing of log records and Python warnings into it."""

from __future__ import annotations

import sys
from typing import (
    Any,
    Callable,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
    Type,
    Union,
)

import typer
from rich.console import Console, ConsoleRenderable, RenderHook
from rich.segment import Segment


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


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` (``message`` may hold markup; interpolate values through :func:`safe`)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(code)


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
