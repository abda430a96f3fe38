"""What every command passes through: :func:`handle_errors` (path roles, value checks, log
routing, one-line errors), running a command line in-process, deferred interrupts."""

from __future__ import annotations

import contextlib
import functools
from typing import (
    Any,
    Callable,
    Iterator,
    List,
    TypeVar,
)

import typer

from sacvit_deploy.cli._console import _route_logs, fail, safe
from sacvit_deploy.cli._options import check_values, value_checks
from sacvit_deploy.cli._paths import check_paths, path_roles
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.extras import import_failure

F = TypeVar("F", bound=Callable[..., Any])

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


def _command_name(fn: Callable[..., Any]) -> str:
    return fn.__name__.replace("_", "-")


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
