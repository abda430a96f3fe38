"""The package's layers point one way: core <- model <- backends <- runtime <- export / engine /
training / quantize <- triton <- cli, with no import cycles between or inside subpackages.

Every import counts, including the ones inside functions (lazy imports of optional extras): a
lazy import upward is still a dependency upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sacvit_deploy

ROOT = Path(sacvit_deploy.__file__).parent
# Lower numbers are lower layers; a module may import its own layer's subpackage and lower layers.
LAYERS = {
    "core": 0,
    "model": 1,
    "backends": 2,
    "runtime": 3,
    "demo_assets": 3,
    "export": 4,
    "engine": 4,
    "training": 4,
    "quantize": 4,
    "triton": 5,
    "cli": 6,
    "__main__": 7,  # python -m sacvit_deploy and the console script: the entry above the CLI
}
# The package root is a facade above everything (``from sacvit_deploy import Pipeline``, imported lazily).
FACADE = "sacvit_deploy"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sacvit_deploy")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                mod = node.module or ""
            if mod.startswith("sacvit_deploy"):
                found.add(mod)
                found |= {f"{mod}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        graph[name] = {m for m in _imports(path, name) if m in mods and m != name}
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_has_a_layer():
    unknown = {m for m in _graph() if m != FACADE and _layer(m) not in LAYERS}
    assert not unknown, f"modules outside the layer table: {sorted(unknown)}"


def test_imports_point_down():
    bad = []
    for mod, deps in _graph().items():
        if mod == FACADE:
            continue
        here = _layer(mod)
        for dep in deps:
            there = _layer(dep)
            if dep == FACADE:
                bad.append(f"{mod} -> {dep} (import from sacvit_deploy.core instead)")
            elif there != here and LAYERS[there] >= LAYERS[here]:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(sorted(bad))


def test_core_imports_nothing_else_from_the_package():
    for mod, deps in _graph().items():
        if _layer(mod) == "core":
            assert all(_layer(d) == "core" for d in deps), (mod, deps)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_cycles_between_modules():
    graph = _graph()
    # A package's __init__ importing its own modules is how packages re-export; not a cycle.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    graph.pop(FACADE, None)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_cycles_between_subpackages():
    graph: dict[str, set[str]] = {}
    for mod, deps in _graph().items():
        if mod == FACADE:
            continue
        here = _layer(mod)
        graph.setdefault(here, set()).update(_layer(d) for d in deps if _layer(d) != here and d != FACADE)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_layer_test_sees_lazy_imports():
    """A control: the parser must find imports inside functions, or the tests above prove nothing."""
    graph = _graph()
    assert "sacvit_deploy.backends.onnxruntime_backend" in graph["sacvit_deploy.backends.factory"]
    assert any(d.startswith("sacvit_deploy.runtime") for d in graph["sacvit_deploy.cli.infer"])


def test_commands_do_not_import_each_other():
    """A command module (cli/<command>.py) imports shared CLI code only from cli/_*.py; the demo runs
    other commands through ``run_command``, the real parser, never by importing them."""
    bad = []
    for mod, deps in _graph().items():
        if _layer(mod) != "cli" or mod.count(".") != 2 or mod.rsplit(".", 1)[1].startswith("_"):
            continue
        for dep in deps:
            leaf = dep.split(".")[2] if dep.count(".") >= 2 else ""
            if _layer(dep) == "cli" and dep != mod and leaf and not leaf.startswith("_"):
                bad.append(f"{mod} -> {dep}")
    assert not bad, "commands importing commands:\n" + "\n".join(sorted(bad))
