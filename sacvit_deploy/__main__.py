"""``python -m sacvit_deploy`` and the ``sacvit-deploy`` console script.

Kept free of heavy imports, so that Ctrl-C (or SIGTERM) at any moment after this module starts ends
the program with "interrupted" and exit code 130, never a traceback or a crash:

- While a module is being imported (the command line itself: typer, torch; or what a command
  imports when it needs it: onnx, onnxruntime, the exporter), a signal is held and acted on once the
  import is done. A KeyboardInterrupt raised inside an import can abort the process (pybind11 turns
  it into ``std::terminate``), come out as another error (numpy's C code reports "import numpy
  failed", and the command would say "onnxruntime is not installed"; a class body turns it into a
  RuntimeError), or leave CPython believing the program died of an unhandled Ctrl-C, which turns
  exit code 130 into death by SIGINT under ``python -m``.
- Once the command has finished, further signals are ignored: the interpreter resets its handlers
  while it shuts down, and a Ctrl-C there would replace the command's exit code with SIGINT.
- An interrupted run ends with ``os._exit(130)`` after flushing the streams and running the atexit
  hooks, so the exit code is 130 whatever state the interpreter was left in.

A signal that arrives before this module runs (while Python itself starts) is Python's to handle.
The import hook is installed by :func:`main` only: importing ``sacvit_deploy`` as a library changes
nothing.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import os
import signal
import sys
import threading
from typing import Any, List, Optional, Set

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED = 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _ImportsHoldSignals:
    """``builtins.__import__`` for the command-line process: the outermost import that loads
    something new, in the main thread, runs with SIGINT and SIGTERM held; a signal that came in
    meanwhile is raised as KeyboardInterrupt when the import is done. Imports of modules already
    loaded (a function's ``from rich.markup import escape``) take the plain path."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.depth = 0

    def __call__(
        self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        if self.depth or self._loaded(name, fromlist, level) or not _in_main_thread():
            return self.real(name, globals, locals, fromlist, level)
        previous = [signal.getsignal(sig) for sig in _SIGNALS]
        if None in previous:  # a handler installed outside Python: leave it alone
            return self.real(name, globals, locals, fromlist, level)
        held: List[int] = []

        def hold(signum: int, frame: object) -> None:
            held.append(signum)

        for sig in _SIGNALS:
            signal.signal(sig, hold)
        self.depth += 1
        try:
            return self.real(name, globals, locals, fromlist, level)
        finally:
            self.depth -= 1
            for sig, handler in zip(_SIGNALS, previous):
                signal.signal(sig, handler)
            if held:
                raise KeyboardInterrupt  # as if the signal had come just after the import

    @staticmethod
    def _loaded(name: str, fromlist: Any, level: int) -> bool:
        module = sys.modules.get(name) if level == 0 else None
        if module is None:
            return False
        names = getattr(module, "__dict__", {})
        return all(item == "*" or item in names for item in fromlist or ())


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _ignore_signals() -> None:
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    seen: Set[int] = set()
    link: Optional[BaseException] = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def _exit_interrupted() -> None:
    _ignore_signals()
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(INTERRUPTED)


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM is handled like Ctrl-C everywhere
    if not isinstance(builtins.__import__, _ImportsHoldSignals):
        builtins.__import__ = _ImportsHoldSignals(builtins.__import__)
    try:
        from sacvit_deploy.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        _ignore_signals()
        sys.stderr.write("interrupted\n")
        _exit_interrupted()
    except SystemExit as exc:
        _ignore_signals()
        if exc.code == INTERRUPTED:
            if _caused_by_ctrl_c(exc):  # typer turns a Ctrl-C inside a command into a silent exit 130
                sys.stderr.write("interrupted\n")
            _exit_interrupted()
        raise
    _ignore_signals()


if __name__ == "__main__":
    main()
