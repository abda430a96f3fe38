"""The one progress facility (cli/_progress.py): shown on a terminal, silent elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from sacvit_deploy.cli import _progress


def test_silent_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(_progress, "terminal", lambda: False)
    with _progress.progress_bar() as bar:
        advance = bar.task("work", total=3)
        advance(3)
    assert not bar.enabled


def test_disabled_on_request_even_on_a_terminal(monkeypatch):
    monkeypatch.setattr(_progress, "terminal", lambda: True)
    with _progress.progress_bar(enabled=False) as bar:
        bar.task("work", total=3)(1)
    assert not bar.enabled


def test_bar_counts_on_a_terminal(monkeypatch):
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=100)
    monkeypatch.setattr(_progress, "terminal", lambda: True)
    monkeypatch.setattr(_progress, "err", console)
    with _progress.progress_bar() as bar:
        advance = bar.task("classifying", total=4)
        advance(1)
        advance(3)
        progress = bar._progress
        assert progress is not None and progress.tasks[0].completed == 4
        progress.refresh()
    assert "classifying" in stream.getvalue() and "4/4" in stream.getvalue()


def test_spinner_shows_elapsed_time_and_no_count(monkeypatch):
    """A call of unknown length: a spinner and the elapsed time, never a count stuck at 0/?."""
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=100)
    monkeypatch.setattr(_progress, "terminal", lambda: True)
    monkeypatch.setattr(_progress, "err", console)
    with _progress.spinner("exporting"):
        pass
    shown = stream.getvalue()
    assert "exporting" in shown and "0:00:00" in shown and "/?" not in shown and "eta" not in shown
