"""Timing shared by the benchmarks."""

from __future__ import annotations

import time


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
