"""Start-up: how long `sacvit-deploy --help`, `sacvit-deploy infer --help` and the first result row of
`infer` take, in fresh processes, against Python's own start-up (`python -c pass`), one interleaved run.

Prints the median over N rounds (each round runs every command once, in turn, so background load
affects them alike) of the wall time and of the CPU time (user + system, which waiting for a busy CPU
does not inflate), the wall-time ratio to Python's start-up, the target, and the load average.
Targets on the project's machine: `--help` <= 0.5 s, first row of `infer` <= 2 s.

    python benchmarks/startup.py                       # exports the demo model first (needs torch)
    python benchmarks/startup.py --artifacts sacvit-demo/export --images sacvit-demo/images
    python benchmarks/startup.py --python .venv-notorch/bin/python --artifacts ... --images ...
    python benchmarks/startup.py --quick               # 3 rounds

The first row is the time from starting `infer --format jsonl` (ONNX Runtime, CPU) until its first
line reaches the pipe: interpreter, CLI, backend and model load, one image decoded and classified.
It also reports which heavy modules `--help` imported (there should be none).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "onnxruntime", "onnx", "numpy", "PIL", "tensorrt")
TARGETS = {"--help": 0.5, "infer --help": 0.5, "infer: first row": 2.0}

# Runs the CLI as the console script does, then prints which heavy modules were imported.
PROBE = (
    "import sys, atexit\n"
    f"atexit.register(lambda: sys.stderr.write('HEAVY ' + ','.join(m for m in {HEAVY!r} if m in sys.modules) + '\\n'))\n"
    "sys.argv = ['sacvit-deploy', *sys.argv[1:]]\n"
    "from sacvit_deploy.__main__ import main\n"
    "main()\n"
)


# Every command runs outside the checkout, so it imports the package the interpreter has installed (an
# editable install: the checkout; or what PYTHONPATH names), not ./sacvit_deploy by accident.
CWD = tempfile.gettempdir()


def _env() -> dict[str, str]:
    return dict(os.environ)


def package_location(python: str) -> str:
    code = "import sacvit_deploy, os; print(os.path.dirname(sacvit_deploy.__file__))"
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, env=_env(), cwd=CWD)
    return r.stdout.strip() or r.stderr.strip()[-200:]


def _child_cpu() -> float:
    """CPU seconds (user + system) of the waited-for child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_command(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``argv``."""
    c, t = _child_cpu(), time.perf_counter()
    subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=_env(), cwd=CWD
    )
    return time.perf_counter() - t, _child_cpu() - c


def time_first_row(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds from the start of ``argv`` to its first line on stdout; the process is then
    stopped (its CPU time runs to the kill, a few ms later)."""
    c, t = _child_cpu(), time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=CWD)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - t
    proc.kill()
    _, err = proc.communicate()
    if not line.strip():
        raise SystemExit(f"infer wrote no row: {err.decode(errors='replace')[-2000:]}")
    json.loads(line)  # a real result row, not a message
    return elapsed, _child_cpu() - c


def heavy_imports(python: str, args: list[str]) -> str:
    r = subprocess.run([python, "-c", PROBE, *args], capture_output=True, text=True, env=_env(), cwd=CWD)
    found = [line[6:] for line in r.stderr.splitlines() if line.startswith("HEAVY ")]
    return (found[-1] or "none") if found else "? (" + r.stderr.strip()[-200:] + ")"


def demo_export(python: str, folder: Path) -> tuple[Path, Path]:
    subprocess.run(
        [python, "-m", "sacvit_deploy", "demo", "--out", str(folder), "--no-profile"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=True,
        env=_env(),
        cwd=CWD,
    )
    return folder / "export", folder / "images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="the interpreter to measure (default: this one)")
    ap.add_argument("--artifacts", type=Path, help="an export folder (default: export the demo model)")
    ap.add_argument("--images", type=Path, help="images for infer (default: the demo's)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds

    tmp = None
    if args.artifacts is None:
        tmp = Path(tempfile.mkdtemp(prefix="startup-"))
        artifacts, images = demo_export(args.python, tmp / "demo")
    else:
        artifacts, images = args.artifacts.resolve(), (args.images or args.artifacts).resolve()
    try:
        py, cli = [args.python], [args.python, "-m", "sacvit_deploy"]
        infer = [*cli, "infer", str(images), "--artifacts", str(artifacts), "--format", "jsonl"]
        infer += ["--backend", "onnxruntime", "--no-progress"]
        cases = {
            "python -c pass": lambda: time_command([*py, "-c", "pass"]),
            "--help": lambda: time_command([*cli, "--help"]),
            "infer --help": lambda: time_command([*cli, "infer", "--help"]),
            "infer: first row": lambda: time_first_row(infer),
        }
        for fn in cases.values():  # warm-up: file caches, .pyc
            fn()
        times: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, fn in cases.items():
                wall, used = fn()
                times[name].append(wall)
                cpu[name].append(used)
        heavy = {
            "--help": heavy_imports(args.python, ["--help"]),
            "infer --help": heavy_imports(args.python, ["infer", "--help"]),
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()
    floor = statistics.median(times["python -c pass"])
    print(f"start-up of sacvit-deploy ({args.python}: {package_location(args.python)})")
    print(f"median of {rounds} interleaved rounds")
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    if load[0] > (os.cpu_count() or 1):
        print("  (busier than the CPUs: wall times include waiting for a CPU; the CPU column does not)")
    print(
        f"{'command':<18} {'wall s':>8} {'/ python':>9} {'cpu s':>7} {'target s':>9}  heavy modules imported"
    )
    report = {"python": args.python, "rounds": rounds, "loadavg": load, "rows": {}}
    for name, values in times.items():
        med, med_cpu = statistics.median(values), statistics.median(cpu[name])
        target = TARGETS.get(name)
        verdict = "" if target is None else ("ok" if med <= target else "OVER")
        print(
            f"{name:<18} {med:>8.3f} {med / floor:>8.1f}x {med_cpu:>7.3f} {target if target else '-':>9}"
            f" {verdict:>4}  {heavy.get(name, '')}"
        )
        report["rows"][name] = {
            "median_wall_s": med,
            "median_cpu_s": med_cpu,
            "wall_s": values,
            "cpu_s": cpu[name],
            "target_s": target,
            "heavy": heavy.get(name),
        }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
