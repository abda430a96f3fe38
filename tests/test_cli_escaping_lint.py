"""Lint for issue 22's rule "terminal output escapes control characters and is never parsed as Rich
markup": every value a cli/ module interpolates into console text goes through ``safe(...)`` (or
``printable(...)``), unless it is plainly a number or on the allowlist below with its reason.

What is checked, in every module of sacvit_deploy/cli/ (parsed with ``ast``, nothing imported):

* the text arguments of the printing calls (``note``, ``fail``, ``out.print``, ``err.print``,
  ``out.status``/``err.status``, ``typer.echo``) and of Rich table text (``Table(title=/caption=)``,
  ``.add_row``): every ``{value}`` of an f-string in them, including f-strings nested in
  ``", ".join(...)`` and the like, and a local variable given to them (followed to its assignments
  in the same function). A call with ``markup=False`` is exempt (no markup is parsed; the consoles'
  render hook escapes control characters whatever is printed);
* ``note`` or ``fail`` handed over as a callback (``log=note``): the library's messages would be
  printed as markup, unescaped.

Module constants (UPPER_CASE names, and ``.get``/``[...]`` of them) are our own text. A value is
plainly a number when it has a numeric format spec (``:.1f``, ``:d``, ``:g``, ``:+.2f``,
``:>5.1f`` ...: a string would raise), is ``len/int/float/round/abs/sum(...)``, arithmetic other
than ``+``/``*``/``%`` (those work on strings), a number literal, a name in :data:`NUMBERS` or a call
of a formatter in :data:`NUMBER_FORMATTERS`. A string literal passes (its markup is ours).

Findings are keyed by (module, the value's source text), not line numbers, so edits elsewhere in a
module do not move them. :data:`ALLOWED` are values that are safe for a stated reason; :data:`KNOWN`
are real findings not fixed yet ("to fix"). An entry that matches nothing any more fails too (drop it:
the code was fixed or changed).
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import sacvit_deploy

CLI = Path(sacvit_deploy.__file__).parent / "cli"

SINKS = {"note", "fail", "out.print", "err.print", "out.status", "err.status", "typer.echo"}
TABLE_TEXT = {"Table": ("title", "caption"), "add_row": None}  # None: every positional argument
CALLBACKS = {"note", "fail"}  # printing functions that must not be handed library text unescaped
# The escapers, and functions of ours that return their result.
ESCAPERS: dict[str, str] = {
    "safe": "cli._console.safe: printable() and Rich markup escaped",
    "printable": "cli._console.printable: control characters escaped (for text printed with markup=False)",
    "_q": "demo: safe(shlex.quote(path))",
}
NUMERIC_CALLS = {"len", "int", "float", "round", "abs", "sum"}
NUMERIC_SPEC = re.compile(r"^(.?[<>=^])?[-+ ]?#?0?\d*[,_]?(\.\d+)?[bcdeEfFgGnoxX%]$")

# Names (as written in the source) that hold ints or floats: each with where the number comes from.
NUMBERS: dict[str, str] = {
    "topk": "infer --topk: typer int option",
    "manifest.num_classes": "Manifest field validated as an int",
    "failed": "infer: count of unreadable images",
    "done": "infer: count of images classified",
    "stage1": "infer: count of images answered at stage 1",
    "limit": "profile: int option",
    "correct": "demo: count of correct predictions",
    "number": "demo: step number (enumerate)",
    "labelled.ignored_files": "LabelledImages.ignored_files: a count",
    "result.max_batch": "serve/triton: int (validated option or manifest field)",
    "result.epochs_done": "TrainResult: int",
    "result.steps": "TrainResult: int",
    "serving.pid": "the Triton server's process id (int)",
    "serving.returncode": "Popen.returncode of tritonserver: int",
    "serving.max_batch": "serve: RepositoryResult.max_batch, an int",
    "code": "serve: the server's exit code (int)",
    "notes": "triton: count of findings that are notes",
    "writer.rows": "infer: count of CSV rows written",
    "acc['images']": "quantize: count of labelled images (computed here)",
}
# Functions of ours that format a number into a plain numeric string.
NUMBER_FORMATTERS: dict[str, str] = {
    "_th": "calibrate: f'{value:.4f}'",
    "format_gflops": "model.flops.format_gflops: a number with 3 significant digits",
    "pct": "parity/agreement tables: '-' or f'{100 * v:.1f}%'",
}

# (module, value) -> why it is safe though not escaped here.
ALLOWED: dict[tuple[str, str], str] = {
    ("_console.py", "message"): "fail()'s own template: its message is markup by contract, and the f-strings "
    "callers pass to fail() are checked at their call sites",
    (
        "_tables.py",
        "low",
    ): "parity_table's verdict markup: a literal default, and a literal at its one caller",
    ("__init__.py", "__version__"): "the package's own version constant",
    ("demo.py", "title"): "_step's title: a literal at each _step call",
    ("build_engine.py", "sizes"): "role names of the engines this command just built (stage1 ...) and sizes",
    ("export.py", "sizes"): "role names of the graphs this command just exported and sizes",
    ("quantize.py", "sizes"): "role names of the graphs this command just wrote and sizes",
    ("export.py", "k"): "onnx.checker verdicts of this export: graph roles",
    ("export.py", "v"): "onnx.checker verdicts of this export: 'ok'",
    ("export.py", "', '.join(verdicts)"): "this export's parser verdicts: graph roles and counts",
    ("export.py", "version"): "TensorRT family names from core.trt_families (this export's own report)",
    ("export.py", "target_trt"): "a typer choice (TrtFamily enum)",
    ("export.py", "target_trt.value"): "a typer choice (TrtFamily enum)",
    ("check.py", "version"): "--trt families, validated against core.trt_families",
    ("check.py", "', '.join(versions)"): "--trt families, validated against core.trt_families",
    ("triton.py", "backend.value"): "a typer choice",
    ("triton.py", "models['bls']"): "Triton model names, validated by triton.index._MODEL_NAME",
    ("triton.py", "models['stage1']"): "Triton model names, validated by triton.index._MODEL_NAME",
    ("triton.py", "models['stage2']"): "Triton model names, validated by triton.index._MODEL_NAME",
    ("serve.py", "serving.http_url"): "http://127.0.0.1:<int port>",
    ("serve.py", "serving.grpc_url"): "grpc://127.0.0.1:<int port>",
    ("serve.py", "serving.metrics_url"): "http://127.0.0.1:<int port>/metrics",
    ("export.py", "word"): "_log_line's loop over the literals 'warning' / 'skipped'",
    ("quantize.py", "name"): "the literals 'float' / 'int8'",
    ("quantize.py", 'r["check"]'): "check names of the report quantize just computed",
    ("quantize.py", 'r["samples"]'): "sample counts of the report quantize just computed",
    ("quantize.py", "report['samples']"): "sample count of the report quantize just computed",
    ("quantize.py", "report['images']"): "the literals 'labelled images' / 'calibration images' (quantize())",
    ("variants.py", "name"): "the built-in VARIANTS table",
    ("variants.py", "f"): "the built-in CHECKPOINT_FORMATS names",
    ("variants.py", "window"): "built from the built-in configs",
    ("variants.py", "cfg.attention"): "the built-in configs",
    ("variants.py", "cfg.coarse_grid"): "the built-in configs",
    ("variants.py", "cfg.num_targets"): "the built-in configs",
    ("variants.py", "cfg.stage2_tokens"): "the built-in configs",
}

# Real findings not fixed yet: (module, value) -> where the text comes from, "to fix". The 32 found
# on c75b984 (paths the user typed, manifest and checkpoint text, repository findings, profile's
# log=note) are fixed; a new one is fixed, not listed, unless it cannot be fixed at once.
KNOWN: dict[tuple[str, str], str] = {}


# ---- the checker ---------------------------------------------------------------------------------------
def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _spec_text(spec: ast.AST | None) -> str | None:
    """The format spec when it is constant text, else None."""
    if spec is None:
        return ""
    if isinstance(spec, ast.JoinedStr) and all(isinstance(v, ast.Constant) for v in spec.values):
        return "".join(str(v.value) for v in spec.values)  # type: ignore[attr-defined]
    return None


class Checker:
    """Finds the unescaped values one module's source prints (see the module docstring)."""

    def __init__(self, source: str, numbers=NUMBERS, formatters=NUMBER_FORMATTERS) -> None:
        self.source = source
        self.tree = ast.parse(source)
        self.numbers = numbers
        self.formatters = formatters
        self._assignments: dict[int, dict[str, list[ast.AST]]] = {}
        self._parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(self.tree):
            for child in ast.iter_child_nodes(parent):
                self._parents[child] = parent

    def text(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.dump(node)

    # -- where text reaches the terminal
    def findings(self) -> Iterator[tuple[int, str]]:
        """(line, value source) for every unescaped value that reaches console text."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                for arg in self._text_arguments(node):
                    for leaf in self._unsafe(arg, node):
                        yield getattr(leaf, "lineno", node.lineno), self.text(leaf)
            elif isinstance(node, ast.Name) and node.id in CALLBACKS and isinstance(node.ctx, ast.Load):
                parent = self._parents.get(node)
                if not (isinstance(parent, ast.Call) and parent.func is node):
                    yield node.lineno, f"{node.id} (as a callback)"

    def _text_arguments(self, call: ast.Call) -> list[ast.AST]:
        name = _dotted(call.func)
        if name in SINKS:
            if any(
                k.arg == "markup" and isinstance(k.value, ast.Constant) and k.value.value is False
                for k in call.keywords
            ):
                return []
            if name in ("out.print", "err.print"):
                # renderables (tables, progress) are printed as they are: check the text expressions only
                args = [a for a in call.args if isinstance(a, (ast.JoinedStr, ast.BinOp, ast.IfExp))]
            else:
                args = call.args[:1]  # the message (fail's second argument is the exit code)
            return args + [k.value for k in call.keywords if k.arg == "message"]
        short = name.rsplit(".", 1)[-1] if name else None
        if short in TABLE_TEXT:
            keys = TABLE_TEXT[short]
            if keys is None:
                return list(call.args)
            return [k.value for k in call.keywords if k.arg in keys]
        return []

    # -- is a value safe?
    def _unsafe(self, node: ast.AST, where: ast.AST, depth: int = 0) -> list[ast.AST]:
        """The parts of ``node`` that put unescaped text on the terminal."""
        if depth > 8:
            return [node]
        if isinstance(node, ast.Constant):
            return []  # a literal: our own text (its markup is ours)
        if isinstance(node, ast.JoinedStr):
            bad: list[ast.AST] = []
            for v in node.values:
                if isinstance(v, ast.FormattedValue):
                    spec = _spec_text(v.format_spec)
                    if spec and NUMERIC_SPEC.match(spec):
                        continue
                    bad += self._unsafe(v.value, where, depth=depth + 1)
            return bad
        if isinstance(node, (ast.Starred, ast.List, ast.Tuple)):
            parts = [node.value] if isinstance(node, ast.Starred) else node.elts
            return [b for p in parts for b in self._unsafe(p, where, depth=depth + 1)]
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            short = node.func.attr if isinstance(node.func, ast.Attribute) else name
            if short in ESCAPERS or name in NUMERIC_CALLS or short in self.formatters:
                return []
            if name == "str" and len(node.args) == 1:
                return self._unsafe(node.args[0], where, depth=depth + 1)
            if short == "get" and isinstance(node.func, ast.Attribute) and _constant_name(node.func.value):
                return []  # a lookup in a table of ours
            if short == "join" and isinstance(node.func, ast.Attribute) and len(node.args) == 1:
                sep = self._unsafe(node.func.value, where, depth=depth + 1)
                items = node.args[0]
                if isinstance(items, (ast.GeneratorExp, ast.ListComp)):
                    return sep + self._unsafe(items.elt, where, depth=depth + 1)
                if isinstance(items, (ast.List, ast.Tuple)):
                    return sep + [b for e in items.elts for b in self._unsafe(e, where, depth=depth + 1)]
            return [node]
        if isinstance(node, ast.IfExp):
            return self._unsafe(node.body, where, depth=depth + 1) + self._unsafe(
                node.orelse, where, depth=depth + 1
            )
        if isinstance(node, ast.UnaryOp):
            return (
                []
                if isinstance(node.op, (ast.USub, ast.UAdd))
                else self._unsafe(node.operand, where, depth=depth + 1)
            )
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, (ast.Sub, ast.Div, ast.FloorDiv, ast.Pow)):
                return []  # arithmetic only numbers do
            left = self._unsafe(node.left, where, depth=depth + 1)
            right = self._unsafe(node.right, where, depth=depth + 1)
            return [node] if (left or right) and not isinstance(node.op, ast.Add) else left + right
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
            if self.text(node) in self.numbers or _constant_name(node):
                return []
            if isinstance(node, ast.Name):
                values = self._local_values(node.id, where)
                if values and all(not self._unsafe(v, where, depth=depth + 1) for v in values):
                    return []
            return [node]
        return [node]

    def _local_values(self, name: str, where: ast.AST) -> list[ast.AST]:
        """The values ``name`` is assigned in the function around ``where`` (empty: not a local)."""
        scope = where
        while scope in self._parents and not isinstance(
            scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        ):
            scope = self._parents[scope]
        if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return []
        values: list[ast.AST] = []
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id == name:
                        values.append(node.value)
                    elif name in {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}:
                        # a, b = x, y: each name its own value; any other unpacking: unknown
                        if not (
                            isinstance(target, ast.Tuple)
                            and isinstance(node.value, ast.Tuple)
                            and len(target.elts) == len(node.value.elts)
                        ):
                            return []
                        values += [
                            node.value.elts[i]
                            for i, t in enumerate(target.elts)
                            if isinstance(t, ast.Name) and t.id == name
                        ]
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
                if node.target.id == name:
                    if node.value is None:
                        continue
                    values.append(node.value)
            elif isinstance(
                node, (ast.For, ast.comprehension, ast.With, ast.arguments, ast.ExceptHandler)
            ) and name in _bound_names(node):
                return []  # a loop variable, parameter, with/except target: not ours to know
        return values


def _constant_name(node: ast.AST) -> bool:
    """A module constant of ours (UPPER_CASE, e.g. PARITY_CAPTION), or an entry of one (_STYLES[k])."""
    if isinstance(node, ast.Subscript):
        node = node.value
    return isinstance(node, ast.Name) and node.id.lstrip("_").isupper()


def _bound_names(node: ast.AST) -> set:
    if isinstance(node, (ast.For, ast.comprehension)):
        return {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
    if isinstance(node, ast.With):
        return {
            n.id
            for item in node.items
            if item.optional_vars
            for n in ast.walk(item.optional_vars)
            if isinstance(n, ast.Name)
        }
    if isinstance(node, ast.arguments):
        return {
            a.arg for a in [*node.posonlyargs, *node.args, *node.kwonlyargs, node.vararg, node.kwarg] if a
        }
    if isinstance(node, ast.ExceptHandler):
        return {node.name} if node.name else set()
    return set()


def cli_findings() -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted(CLI.glob("*.py")):
        for line, value in Checker(path.read_text()).findings():
            found.setdefault((path.name, value), []).append(line)
    return found


# ---- the tests --------------------------------------------------------------------------------------------
def test_every_value_the_cli_prints_is_escaped_or_a_number_or_listed():
    found = cli_findings()
    new = {key: lines for key, lines in found.items() if key not in ALLOWED and key not in KNOWN}
    assert not new, (
        "cli/ prints values without safe(...): "
        + "; ".join(
            f"{module}:{','.join(map(str, lines))}: {{{value}}}"
            for (module, value), lines in sorted(new.items())
        )
        + ". Wrap each in safe(...) (printable(...) where no markup is parsed), or give a numeric format spec."
    )


def test_the_allowlists_match_something():
    found = cli_findings()
    stale = sorted(key for key in [*ALLOWED, *KNOWN] if key not in found)
    assert not stale, f"allowlist entries that match nothing (fixed or changed: drop them): {stale}"
    for what, names in (
        ("NUMBERS", NUMBERS),
        ("NUMBER_FORMATTERS", NUMBER_FORMATTERS),
        ("ESCAPERS", ESCAPERS),
    ):
        text = "".join(p.read_text() for p in CLI.glob("*.py"))
        unused = sorted(n for n in names if n not in text)
        assert not unused, f"{what} names no cli/ module uses: {unused}"


def _check(source: str) -> list[str]:
    return [value for _line, value in Checker(source).findings()]


@pytest.mark.parametrize(
    "source, flagged",
    [
        ('note(f"wrote {path}")', ["path"]),
        ('note(f"wrote {safe(path)}")', []),
        ('err.print(f"[red]{printable(name)}[/]")', []),
        ('raise fail(f"cannot read {folder}: {exc}")', ["folder", "exc"]),
        ('out.print(f"{ratio:.2f}x, {n:d} images, {share:>5.1%}")', []),
        ('out.print(f"{value:>20}")', ["value"]),  # alignment only: a string fits too
        ('out.print(f"{len(paths)} paths, {count} more")', ["count"]),
        ('out.print(f"{path}", markup=False)', []),
        ('typer.echo(f"version {v}")', ["v"]),
        ('note(", ".join(f"{k} {v:.1f}" for k, v in items))', ["k"]),
        ('note(f"a {x!r}")', ["x"]),  # repr escapes control characters, not markup
        ('note(f"{a - b} fewer, {a + b}")', ["a", "b"]),
        ("run(log=note)", ["note (as a callback)"]),
        ("run(log=lambda m: note(safe(m)))", []),
        ('Table(title=f"check of {folder}")', ["folder"]),
        ('table.add_row(name, f"{size:.1f}")', ["name"]),
        ('def f(p):\n    shown = safe(p)\n    note(f"at {shown}")', []),
        ('def f(p):\n    shown = str(p)\n    note(f"at {shown}")', ["shown"]),
        ("def f(p):\n    note(p)", ["p"]),
        ('note("a [red]literal[/] is ours")', []),
        ("note(f\"{'yes' if ok else 'no'}\")", []),
    ],
)
def test_the_checker_flags_unescaped_values(source, flagged):
    assert _check(source) == flagged


def test_the_checker_fails_the_cli_test_on_a_new_unsafe_note(tmp_path, monkeypatch):
    """A scratch copy of cli/ with one unsafe note added: the CLI test fails and names it."""
    scratch = tmp_path / "cli"
    shutil.copytree(CLI, scratch)
    infer = scratch / "infer.py"
    infer.write_text(infer.read_text() + '\n\ndef _scratch(path):\n    note(f"read {path}")\n')
    monkeypatch.setattr(sys.modules[__name__], "CLI", scratch)
    with pytest.raises(AssertionError, match=r"infer\.py:\d+: \{path\}"):
        test_every_value_the_cli_prints_is_escaped_or_a_number_or_listed()
