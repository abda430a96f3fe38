"""Import every sacvit_deploy module on a real CPython 3.10 (Pyodide 0.22.1 under node), and run every
command's --help there.

Pyodide is CPython 3.10.2 compiled to WebAssembly; this project's numpy/torch/onnxruntime are not in it,
so a module that needs one of those is reported as skipped (with the module it needs), and every other
import error (a SyntaxError, a 3.11-only stdlib name, an annotation typer cannot evaluate) fails the
check. The pure-Python CLI dependencies (typer, click, rich, ...) are installed into Pyodide from wheels
of the versions installed here, so the CLI's --help runs for real on 3.10.

    npm install --prefix .pyodide pyodide@0.22.1
    python scripts/py310_check.py --pyodide .pyodide/node_modules/pyodide
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Pure-Python packages the CLI needs, resolved by pip for Python 3.10 with their own dependencies.
# typer at its floor (constraints-floors.txt): newer typer depends on pydantic-core, a compiled
# extension that Pyodide cannot load from a manylinux wheel.
PURE = ["rich", "typing_extensions"]
# Not in Pyodide: a module needing one of these is skipped, not failed.
ABSENT = {
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "PIL",
    "safetensors",
    "tensorrt",
    "pycuda",
    "cuda",
    "openvino",
    "tritonclient",
    "matplotlib",
    "transformers",
    "ml_dtypes",
}

PY = r"""
import importlib, json, pkgutil, re, sys, traceback
sys.path[:0] = [SITE, SRC]
ABSENT = set(ABSENT_LIST)
import sacvit_deploy
ok, skipped, failed = [], {}, {}
names = ["sacvit_deploy"] + [m.name for m in pkgutil.walk_packages(sacvit_deploy.__path__, "sacvit_deploy.")]
for name in names:
    try:
        importlib.import_module(name)
        ok.append(name)
    except ModuleNotFoundError as exc:
        # Pyodide's own message for a package it ships but has not loaded leaves exc.name unset.
        found = re.search(r"module '([A-Za-z0-9_.]+)'", str(exc))
        top = (exc.name or (found.group(1) if found else "")).split(".")[0]
        if top in ABSENT:
            skipped[name] = top
        else:
            failed[name] = traceback.format_exc(limit=3)
    except Exception:
        failed[name] = traceback.format_exc(limit=3)
helps = {}
if "sacvit_deploy.cli" in ok:
    from sacvit_deploy.cli import app
    import typer.main
    cmd = typer.main.get_command(app)
    for sub in [None] + sorted(cmd.commands):
        args = ["--help"] if sub is None else [sub, "--help"]
        try:
            cmd.main(args, prog_name="sacvit-deploy", standalone_mode=False)
            helps[sub or "(top)"] = "ok"
        except SystemExit as exc:
            helps[sub or "(top)"] = "ok" if not exc.code else "exit %s" % exc.code
        except Exception:
            helps[sub or "(top)"] = traceback.format_exc(limit=4)
json.dumps(dict(version=sys.version.split()[0], ok=ok, skipped=skipped, failed=failed, helps=helps))
"""

JS = r"""
const { loadPyodide } = require(process.argv[2] + "/pyodide.js");
(async () => {
  const py = await loadPyodide({ indexURL: process.argv[2] + "/", stdout: () => {}, stderr: () => {} });
  py.FS.mkdir("/mnt");
  py.FS.mount(py.FS.filesystems.NODEFS, { root: process.argv[3] }, "/mnt");
  const code = require("fs").readFileSync(process.argv[4], "utf8");
  console.log(py.runPython(code));
})().catch((e) => { console.error(String(e)); process.exit(3); });
"""


def _floor(name: str) -> str:
    for line in (ROOT / "constraints-floors.txt").read_text().splitlines():
        if line.split("==")[0].strip() == name:
            return line.split("#")[0].strip()
    raise SystemExit(f"constraints-floors.txt has no {name} pin")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pyodide", required=True, help="the folder of the npm package pyodide@0.22.1")
    args = parser.parse_args()
    pyodide = Path(args.pyodide).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wheels, site = work / "wheels", work / "site"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--only-binary=:all:",
                "--python-version",
                "3.10",
                "-d",
                str(wheels),
                *PURE,
                _floor("typer"),
            ],
            check=True,
        )
        for wheel in wheels.glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(site)
        src = work / "src"
        src.mkdir()
        os.symlink(ROOT / "sacvit_deploy", src / "sacvit_deploy")
        program = PY.replace("SITE", repr("/mnt/site")).replace("SRC", repr("/mnt/src"))
        program = program.replace("ABSENT_LIST", repr(sorted(ABSENT)))
        (work / "check.py").write_text(program)
        (work / "run.js").write_text(JS)
        # NODEFS does not follow a symlink out of its root: copy the package instead.
        os.unlink(src / "sacvit_deploy")
        subprocess.run(["cp", "-r", str(ROOT / "sacvit_deploy"), str(src / "sacvit_deploy")], check=True)
        out = subprocess.run(
            ["node", str(work / "run.js"), str(pyodide), str(work), str(work / "check.py")],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if out.returncode:
        print(f"py310 check: node failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
        return 2
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"Python {report['version']} (Pyodide): {len(report['ok'])} modules imported, "
        f"{len(report['skipped'])} skipped for a package Pyodide lacks, {len(report['failed'])} failed"
    )
    needs: dict[str, list[str]] = {}
    for name, top in report["skipped"].items():
        needs.setdefault(top, []).append(name)
    for top, names in sorted(needs.items()):
        print(
            f"  needs {top}: {len(names)} ({', '.join(n.removeprefix('sacvit_deploy.') for n in names[:6])}"
            f"{', ...' if len(names) > 6 else ''})"
        )
    for name, tb in report["failed"].items():
        print(f"FAILED import {name}:\n{tb}")
    bad_help = {k: v for k, v in report["helps"].items() if v != "ok"}
    if report["helps"]:
        print(f"--help on 3.10: {len(report['helps']) - len(bad_help)} of {len(report['helps'])} commands ok")
    else:
        print("--help on 3.10: not run (sacvit_deploy.cli did not import)")
    for k, v in bad_help.items():
        print(f"FAILED {k} --help:\n{v}")
    return 1 if report["failed"] or bad_help else 0


if __name__ == "__main__":
    sys.exit(main())
