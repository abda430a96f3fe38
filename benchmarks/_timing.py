"""Timing shared by the benchmarks."""

from __future__ import annotations

import os
import time


def load_average() -> tuple[float, float, float]:
    """The 1/5/15-minute load average (zeros where the OS has none)."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return (0.0, 0.0, 0.0)


def load_line(before: tuple[float, float, float], after: tuple[float, float, float]) -> str:
    """One line every benchmark prints: background load changes what a ratio means."""
    fmt = lambda t: "/".join(f"{x:.2f}" for x in t)  # noqa: E731
    return f"load average (1/5/15 min) before {fmt(before)}, after {fmt(after)} on {os.cpu_count()} CPUs"


def timed(fns: dict, warmup: int, iters: int) -> dict[str, list[float]]:
    """Time several callables round-robin, so background load affects them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times
