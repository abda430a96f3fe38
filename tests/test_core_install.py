"""A core install (`pip install -e .`, no extras) must run `--help` of every command, and a command
that needs an extra must say which one in one line.

The optional modules, torch included, are hidden in a subprocess by a meta-path finder that refuses
them, which is what a core-only environment looks like to Python; CI also runs this in a real
core-only venv, and its no-torch job (scripts/no_torch_check.sh) runs commands without torch.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from sacvit_deploy.cli import app
from sacvit_deploy.core.extras import EXTRAS

HIDE = textwrap.dedent(
    f"""
    import sys
    class _Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {sorted(EXTRAS)!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, _Hide())
    sys.argv = ["sacvit-deploy", *sys.argv[1:]]
    from sacvit_deploy.__main__ import main  # as the console script starts
    main()
    """
)

COMMANDS = sorted(c.name for c in app.registered_commands)


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", HIDE, *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_every_help_works_without_extras():  # torch included (it is an extra)
    top = _run("--help")
    assert top.returncode == 0, top.stderr
    for name in COMMANDS:
        assert name in top.stdout
    # one process for all subcommands would hide an import that only one of them triggers
    for name in COMMANDS:
        r = _run(name, "--help")
        assert r.returncode == 0, (name, r.stderr[-2000:])
        assert "Usage" in r.stdout and "Traceback" not in r.stderr, name


def test_the_hiding_is_real():
    r = subprocess.run(
        [sys.executable, "-c", HIDE.split("from sacvit_deploy.__main__")[0] + "import onnx"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "No module named 'onnx'" in r.stderr


@pytest.mark.parametrize(
    ("args", "extra"),
    [(["check", "FOLDER"], "cpu"), (["infer", "--artifacts", "FOLDER", "IMAGE"], "cpu")],
)
def test_a_command_that_needs_an_extra_says_which(tmp_path, exported_tiny, args, extra):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image)
    args = [str(exported_tiny) if a == "FOLDER" else str(image) if a == "IMAGE" else a for a in args]
    r = _run(*args, "--backend", "onnxruntime") if args[0] == "infer" else _run(*args)
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert f"pip install 'sacvit-deploy[{extra}]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len([x for x in lines if x.startswith("error:")]) == 1
