"""Ctrl-C / SIGTERM at every moment of a command's start: how does the program end?

By default starts ``sacvit-deploy infer`` on an empty folder (it imports everything, then stops with
one error line) and sends the signal after 0.05 s, 0.10 s, ... up to --until seconds, for both entry
points. Every run should end with exit code 130 and "interrupted", or (signal after the command
ended) with the command's own ending: exit code 1 and an error line, or 0 and nothing left behind
that it did not finish. Anything else is counted as bad and printed.

    python benchmarks/signal_sweep.py [--until 3.0] [--step 0.05] [--signal INT|TERM]
    python benchmarks/signal_sweep.py --command "export CKPT" --until 8   # a command's own imports
    python benchmarks/signal_sweep.py --quick       # 2 moments per entry point (CI); exit 1 on a bad ending

No timing ratio: it counts endings (ok / bad rc N); the load average is printed because a loaded
machine moves each moment to a later point of the start-up.

The test suite samples three moments (tests/test_hostile.py::test_ctrl_c_while_importing_*); this
sweep is what found the rare endings (rc -2, rc -6) those samples can miss.
"""

from __future__ import annotations

import argparse
import collections
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import load_average, load_line


def sweep(
    command: list[str], args: list[str], sig: int, until: float, step: float, cwd: Path
) -> collections.Counter:
    outcomes: collections.Counter = collections.Counter()
    steps = round(until / step)
    for i in range(1, steps + 1):
        after = i * step
        proc = subprocess.Popen(
            [*command, *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(after)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        rc = proc.returncode
        ok = (rc == 130 and "interrupted" in err) or (rc == 1 and "error:" in err) or rc == 0
        ok = ok and "Traceback" not in err
        outcomes["ok" if ok else f"bad rc {rc}"] += 1
        if not ok:
            last = (err.strip().splitlines() or ["(nothing on stderr)"])[-1]
            print(f"  after {after:.2f}s: rc {rc}: {last[:160]!r}")
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--until", type=float, default=3.0)
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--signal", choices=["INT", "TERM"], default="INT")
    parser.add_argument(
        "--command",
        default="infer imgs --artifacts export --backend onnxruntime",
        help="the sacvit-deploy arguments (paths relative to the current folder)",
    )
    parser.add_argument("--quick", action="store_true", help="signal at 0.5 and 1.0 s only (CI)")
    args = parser.parse_args()
    if args.quick:
        args.until, args.step = 1.0, 0.5
    load_before = load_average()
    sig = signal.SIGINT if args.signal == "INT" else signal.SIGTERM
    script = Path(sys.executable).with_name("sacvit-deploy")
    entries = {"python -m sacvit_deploy": [sys.executable, "-m", "sacvit_deploy"]}
    if script.exists():
        entries["sacvit-deploy"] = [str(script)]
    argv = [str(Path(a).resolve()) if Path(a).exists() else a for a in shlex.split(args.command)]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "imgs").mkdir()
        for name, command in entries.items():
            print(f"{name} {args.command}: SIG{args.signal} every {args.step:g}s up to {args.until:g}s")
            outcomes = sweep(command, argv, sig, args.until, args.step, Path(tmp))
            print(f"  {dict(sorted(outcomes.items()))}")
            bad += sum(n for k, n in outcomes.items() if k != "ok")
    print(load_line(load_before, load_average()))
    print("statistic: counts of endings per entry point (no timing ratio)")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
