"""The use-case layer (issue 23): each command that does work calls ONE library function, the same
one a Python user calls (``from sacvit_deploy import export_checkpoint``), and that function neither
prints nor knows the CLI. Structural checks on the real modules; each use case's behaviour is tested
in tests/test_usecase_<name>.py and through its command's tests."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import sacvit_deploy
from sacvit_deploy import USE_CASES

ROOT = Path(sacvit_deploy.__file__).parent
CLI_MODULE = {command: command.replace("-", "_") for _, command in USE_CASES.values() if command}
COMMANDED = sorted(name for name, (_, command) in USE_CASES.items() if command)


def _tree(module: str) -> ast.Module:
    path = Path(importlib.import_module(module).__file__)
    return ast.parse(path.read_text(), str(path))


@pytest.mark.parametrize("name", sorted(USE_CASES))
def test_every_name_resolves_to_its_module(name):
    module, _ = USE_CASES[name]
    obj = getattr(sacvit_deploy, name)
    assert obj is getattr(importlib.import_module(module), name)
    assert obj.__module__.startswith(module)  # defined there, or in a module of that package
    assert not module.startswith("sacvit_deploy.cli")
    assert name in dir(sacvit_deploy)


@pytest.mark.parametrize("name", COMMANDED)
def test_the_command_calls_its_use_case(name):
    """The command module imports the use case, or a public step of it (a name in its module's
    ``__all__``: calibrate reports between opening and running), from its module and calls it."""
    module, command = USE_CASES[name]
    tree = _tree(f"sacvit_deploy.cli.{CLI_MODULE[command]}")
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == module
        for alias in node.names
        if alias.name == name or alias.name in getattr(importlib.import_module(module), "__all__", ())
    }
    assert imported, f"cli/{CLI_MODULE[command]}.py does not import {name} from {module}"
    called = {
        n.func.id if isinstance(n.func, ast.Name) else getattr(n.func.value, "id", None)
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))
    }
    assert imported & called, f"cli/{CLI_MODULE[command]}.py imports {name} but never calls it"


@pytest.mark.parametrize("name", sorted(USE_CASES))
def test_a_use_case_neither_prints_nor_knows_the_cli(name):
    module, _ = USE_CASES[name]
    tree = _tree(module)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for mod in names:
                assert not mod.startswith(("sacvit_deploy.cli", "typer", "rich", "click")), (
                    f"{module} imports {mod}: a use case reports through its result and callbacks"
                )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "print", f"{module}:{node.lineno} prints"


@pytest.mark.parametrize("name", sorted(n for n in USE_CASES if n != "Pipeline"))
def test_a_use_case_takes_plain_values(name):
    """No typer/click/enum-of-the-CLI defaults: a Python caller passes strings, numbers and paths."""
    fn = getattr(sacvit_deploy, name)
    for p in inspect.signature(fn).parameters.values():
        default = p.default
        assert type(default).__module__.split(".")[0] not in ("typer", "click", "rich"), (name, p.name)
        assert "cli" not in type(default).__module__.split("."), (name, p.name)


def test_import_sacvit_deploy_stays_light():
    code = (
        "import sys, sacvit_deploy\n"
        "heavy = [m for m in ('numpy', 'torch', 'onnx', 'onnxruntime', 'typer') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    blocks = text.split("```python\n")[1:]
    return [b.split("```", 1)[0] for b in blocks]


def test_the_readme_python_snippets_name_what_exists():
    """The README's Python examples (no data to run them on here) are held to the code: every name
    they import exists, and every call of an imported function or class passes arguments its
    signature accepts. Renaming a keyword of a use case fails here, not in a user's script."""
    blocks = [b for b in _readme_python_blocks() if "sacvit_deploy" in b]
    assert len(blocks) >= 3
    checked = 0
    for block in blocks:
        tree = ast.parse(block)
        imported = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sacvit_deploy"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"README imports {alias.name} from {node.module}"
                    imported[alias.asname or alias.name] = getattr(module, alias.name)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            fn = imported.get(node.func.id)
            if fn is None or not callable(fn):
                continue
            args = [None] * len(node.args)
            kwargs = {k.arg: None for k in node.keywords if k.arg}
            try:
                sig = inspect.signature(fn)
                # **options pass through to runners: the README's keywords must be named parameters
                named = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
                sig.replace(parameters=named).bind(*args, **kwargs)
            except TypeError as exc:
                pytest.fail(
                    f"README calls {node.func.id}({ast.unparse(node)[len(node.func.id) + 1 : -1]}): {exc}"
                )
            checked += 1
    assert checked >= 8, checked
