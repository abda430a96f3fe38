"""The one progress facility of the command line: Rich bars and spinners on stderr.

Shown only when stderr is a terminal (pipes, logs and tests see nothing), and transient: a finished
bar disappears, so the results printed to stdout stay the only lasting output. Library code never
imports this; it takes a plain callback (``advance(n)``) that a command gets from :func:`task`.

    with progress_bar(enabled) as bar:
        advance = bar.task("classifying", total=len(paths))
        ...
        advance(len(batch))
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from sacvit_deploy.cli._console import err

Advance = Callable[[int], None]


def _no_op(_n: int = 1) -> None:
    return None


class Bar:
    """Tasks on one live display; a disabled Bar hands out no-op callbacks."""

    def __init__(self, progress: Optional[Any]) -> None:
        self._progress = progress  # rich.progress.Progress, or None when disabled

    @property
    def enabled(self) -> bool:
        return self._progress is not None

    def task(self, description: str, total: Optional[int] = None) -> Advance:
        """Add a task (``total`` None: a spinner with a count); returns ``advance(n=1)``."""
        if self._progress is None:
            return _no_op
        progress = self._progress
        task_id = progress.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            progress.advance(task_id, n)

        return advance


def terminal() -> bool:
    """Whether progress would be shown: stderr is a terminal."""
    return sys.stderr.isatty()


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Bar]:
    """A live progress display on stderr for the ``with`` block, when enabled and on a terminal."""
    if not enabled or not terminal():
        yield Bar(None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    with progress:
        yield Bar(progress)


@contextmanager
def spinner(description: str, enabled: bool = True) -> Iterator[None]:
    """A spinner with elapsed time for work whose length is unknown (one long call).

    No bar, count or eta: a count would sit at ``0/?`` for the whole call.
    """
    if not enabled or not terminal():
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True
    ) as progress:
        progress.add_task(description, total=None)
        yield
