"""Every benchmark runs, in its quick mode, so none can rot (issue 24 point 15).

Discovers every ``benchmarks/*.py`` not starting with ``_`` (a new benchmark is covered for free) and
runs it as a user would, ``python benchmarks/NAME.py --quick``: a tiny model and a few rounds, under a
minute on 2 cores. Each must exit 0 and print the load average (the ratios it prints mean little
without it). Exit code 77 means "nothing to measure here" (triton_load.py without a Triton
environment): a skip with the benchmark's own reason, except where ``SACVIT_REQUIRE_TRITON=1`` (CI)
says the environment is there.

The numbers are not checked: performance targets live in the benchmarks' own output, not in timed
tests (load on a shared machine moves them by tens of percent).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
SKIPPED = 77
STATISTIC = re.compile(r"\b(median|mean|p50)|no timing ratio", re.IGNORECASE)

pytestmark = pytest.mark.slow


def test_the_known_benchmarks_are_discovered():
    names = {p.stem for p in BENCHMARKS}
    assert {
        "headline",
        "int8",
        "pipeline_vs_baseline",
        "signal_sweep",
        "train_ddp_cpu",
        "triton_load",
    } <= names


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_runs_in_quick_mode(script):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    result = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    if result.returncode == SKIPPED and not os.environ.get("SACVIT_REQUIRE_TRITON"):
        pytest.skip(output.strip().splitlines()[-1])
    assert result.returncode == 0, f"{script.name} --quick: exit {result.returncode}\n{output[-4000:]}"
    assert "load average" in output, f"{script.name} prints no load average:\n{output[-2000:]}"
    # ...and which statistic its figures are (a ratio of medians and one of means differ by tens of %)
    assert STATISTIC.search(output), f"{script.name} names no statistic:\n{output[-2000:]}"
    assert "Traceback" not in output, output[-4000:]
