"""``python -m sacvit_deploy`` and the ``sacvit-deploy`` console script.

Kept free of heavy imports, so that Ctrl-C (or SIGTERM) at any moment after this module starts ends
the program with "interrupted" and exit code 130, never a traceback or a crash:

- While the command line (typer, torch, onnx) is importing, a signal is held and acted on once the
  import is done: a KeyboardInterrupt raised inside an extension module's initialisation can abort
  the process (pybind11 turns it into ``std::terminate``) or leave CPython believing the program died
  of an unhandled Ctrl-C, which turns exit code 130 into death by SIGINT under ``python -m``.
- Once the command has finished, further signals are ignored: the interpreter resets its handlers
  while it shuts down, and a Ctrl-C there would replace the command's exit code with SIGINT.
- An interrupted run ends with ``os._exit(130)`` after flushing the streams and running the atexit
  hooks, so the exit code is 130 whatever state the interpreter was left in.

A signal that arrives before this module runs (while Python itself starts) is Python's to handle.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED = 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _import_cli(held: list[int]):  # -> Callable[[], None]
    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    for sig in _SIGNALS:
        signal.signal(sig, hold)
    try:
        from sacvit_deploy.cli import main as cli_main
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM is handled like Ctrl-C everywhere
    return cli_main


def _ignore_signals() -> None:
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    seen: set[int] = set()
    link: BaseException | None = exc
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
    held: list[int] = []
    try:
        cli_main = _import_cli(held)
        if held:
            raise KeyboardInterrupt
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
