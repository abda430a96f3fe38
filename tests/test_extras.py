"""Install hints: built in one place, and a missing module is named by what is missing.

onnx imports ml_dtypes; with it missing, the hint must say ml_dtypes, not the extra that installed
onnx (which is installed already). Real onnx and onnxruntime, with ml_dtypes blocked in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sacvit_deploy
from sacvit_deploy.core.extras import INSTALLS, install_hint, missing_module_message

BLOCK = "import sys; sys.modules['ml_dtypes'] = None\n"


def test_install_hints_are_written_in_one_file():
    root = Path(sacvit_deploy.__file__).parent
    writers = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "pip install 'sacvit-deploy[" in p.read_text(encoding="utf-8")
    )
    assert writers == ["core/extras.py"]
    assert install_hint("cpu", "gpu") == "pip install 'sacvit-deploy[cpu]' (or '[gpu]')"
    with pytest.raises(ValueError):
        install_hint("no-such-extra")
    pyproject = (root.parent / "pyproject.toml").read_text()
    for extra in INSTALLS:  # every row is a real extra
        assert f"\n{extra} = [" in pyproject, extra


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=300)


def test_library_import_names_the_missing_dependency():
    pytest.importorskip("onnxruntime")
    done = _run(
        "from sacvit_deploy.core.extras import missing_module_message\n"
        "try:\n    import onnxruntime.quantization\n"
        "except ImportError as exc:\n    print(missing_module_message('onnxruntime', exc, 'quantize'))\n"
    )
    assert "quantize needs ml_dtypes (imported by onnxruntime, which is installed)" in done.stdout, done
    assert "pip install ml_dtypes" in done.stdout and "sacvit-deploy[" not in done.stdout


def test_cli_names_the_missing_dependency(tmp_path):
    pytest.importorskip("onnx")
    done = _run(
        f"from sacvit_deploy.cli import app\napp(['check', {str(tmp_path)!r}], prog_name='sacvit-deploy')\n"
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "ml_dtypes" in lines[0] and "pip install ml_dtypes" in lines[0], lines[0]
    assert "sacvit-deploy[" not in lines[0]


def test_a_module_missing_itself_gets_its_extra():
    exc = ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
    assert missing_module_message("onnxruntime", exc, "x").endswith(install_hint("cpu"))
    broken = ImportError("DLL load failed: libcudart.so.12")
    assert "is installed but does not import (DLL load failed" in missing_module_message(
        "onnxruntime", broken
    )


def test_a_module_whose_package_has_another_name_gets_the_package():
    """onnx imports google.protobuf: the fix is `pip install protobuf` (`pip install google` installs
    an unrelated package). Real onnx, with google blocked in a subprocess."""
    pytest.importorskip("onnx")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['google'] = None\n"
            "from sacvit_deploy.core.extras import import_failure\n"
            "try:\n    import onnx\n"
            "except ModuleNotFoundError as exc:\n    print(import_failure(exc, 'export', command='export'))\n",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "export needs google (imported by onnx, which is installed)" in done.stdout, done
    assert done.stdout.rstrip().endswith("pip install protobuf"), done.stdout
    exc = ModuleNotFoundError("No module named 'PIL'", name="PIL")
    assert missing_module_message("PIL", exc, "x").endswith("pip install pillow")
