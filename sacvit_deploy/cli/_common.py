"""What every command shares: consoles, the one-line error convention, option types."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from sacvit_deploy.errors import SacvitError

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

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def note(message: str) -> None:
    err.print(message, highlight=False)
