"""torch is optional, and the command line starts light.

- ``--help`` of every command runs where torch cannot be imported: tests/test_core_install.py hides
  every extra, torch included, and runs each command's help (CI's no-torch job runs the real thing:
  scripts/no_torch_check.sh). Here a runner script blocks torch with ``sys.modules['torch'] = None``,
  which makes ``import torch`` raise ModuleNotFoundError as in an environment without it.
- ``--help`` and ``infer --help`` import neither torch nor onnxruntime (nor onnx, TensorRT or a CUDA
  binding): checked in a subprocess where they ARE installed, by reading ``sys.modules`` when the
  process exits. (numpy is avoided where possible; benchmarks/startup.py reports whether it loads.)
- ``export`` and ``train`` without torch say in one line which extra to install (from core/extras.py),
  exit 1, no traceback.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sacvit_deploy.core.extras import COMMAND_EXTRAS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnxruntime", "onnx", "tensorrt", "pycuda", "cuda")

# Runs the CLI as the console script does (sacvit_deploy.__main__), with torch blocked.
NO_TORCH = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # import torch -> ModuleNotFoundError
    sys.argv = ["sacvit-deploy", *sys.argv[1:]]
    from sacvit_deploy.__main__ import main
    main()
    """
)
# Runs the CLI and prints, at exit, the heavy modules that were imported.
PROBE = textwrap.dedent(
    f"""
    import atexit, sys
    atexit.register(lambda: sys.stderr.write(
        "IMPORTED " + ",".join(m for m in {HEAVY!r} if m in sys.modules) + "\\n"))
    sys.argv = ["sacvit-deploy", *sys.argv[1:]]
    from sacvit_deploy.__main__ import main
    main()
    """
)


def _run(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=180, cwd=cwd
    )


def test_the_block_is_real():
    r = _run(NO_TORCH.replace("from sacvit_deploy.__main__ import main\nmain()", "import torch"))
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr and "torch" in r.stderr


@pytest.mark.parametrize("args", [["--help"], ["infer", "--help"]])
def test_help_imports_no_heavy_module(args):
    import torch  # noqa: F401  (installed here: the help must not load it anyway)

    r = _run(PROBE, *args)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("IMPORTED ")]
    assert lines == ["IMPORTED "], (args, lines)  # none of HEAVY


def test_the_probe_sees_an_import():
    r = _run(PROBE.replace("from sacvit_deploy.__main__ import main\nmain()", "import onnx"))
    assert "IMPORTED onnx" in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["export", "CKPT", "--out", "OUT"], "export"),
        (["train", "DATA", "--out", "OUT"], "train"),
    ],
)
def test_a_command_that_needs_torch_names_its_extra(tmp_path, args, extra):
    (tmp_path / "data").mkdir()
    (tmp_path / "m.safetensors").write_bytes(b"")
    subst = {
        "CKPT": str(tmp_path / "m.safetensors"),
        "DATA": str(tmp_path / "data"),
        "OUT": str(tmp_path / "o"),
    }
    r = _run(NO_TORCH, *[subst.get(a, a) for a in args], cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert lines == [
        f"error: `sacvit-deploy {args[0]}` needs torch (PyTorch), which is not installed: "
        f"pip install 'sacvit-deploy[{extra}]'"
    ], lines
    assert not (tmp_path / "o").exists()


def test_command_extras_install_what_they_promise():
    """export = torch + onnx, train = torch: the extras in pyproject install the modules the table
    says they do, and torch is in no core dependency."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(reqs: list[str]) -> set[str]:
        return {r.split(">")[0].split("=")[0].split("[")[0].split("<")[0].strip().lower() for r in reqs}

    assert "torch" not in names(project["dependencies"])
    for command, (extra, modules) in COMMAND_EXTRAS.items():
        assert set(modules) <= names(extras[extra]), command
    for extra in ("cpu", "gpu", "tensorrt", "jetson"):
        assert "torch" not in names(extras[extra]), extra


def test_export_defaults_are_the_comparators():
    from sacvit_deploy.cli.export import DEFAULT_ATOL, DEFAULT_RTOL
    from sacvit_deploy.core.compare import Tolerance

    assert Tolerance() == Tolerance(DEFAULT_ATOL, DEFAULT_RTOL)


def test_demo_no_export_without_an_export_says_so(tmp_path):
    """`demo --no-export` (its inference half, for an environment without torch) needs an export
    from an earlier demo in --out: without one, one line naming the folder and the fix."""
    plain = NO_TORCH.replace('sys.modules["torch"] = None', "")  # torch or not: the same refusal
    r = _run(plain, "demo", "--out", str(tmp_path / "d"), "--no-export", "--no-profile", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no export to reuse" in errors[0] and "drop --no-export" in errors[0], (
        r.stderr
    )
    assert "Traceback" not in r.stderr
