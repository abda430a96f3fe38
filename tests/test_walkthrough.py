"""A new user's first hour, from the README: every command it and the demo print runs as printed.

In one temporary directory and in this order: the README's start command (`sacvit-deploy demo`),
every command the demo prints (its closing "Next" block and the export's `next:` hint), then every
`sacvit-deploy` command of the README's "The real workflow" section, with only the substitutions
listed in the README's own table ("Trying it on the demo's files"). Each must exit 0. The commands
the README says need other things (TensorRT and a GPU, a Triton server, a data set) are reported
as skipped with that reason, never run with changed arguments.

Runs in-process through typer's CliRunner (the argv is exactly the printed line, split like a
shell would split it), on the bundled demo model: about a minute on 2 busy cores.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sacvit_deploy.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()

pytestmark = pytest.mark.slow


def _section(text: str, heading: str) -> str:
    """The text under a Markdown heading, up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text[text.index(heading + "\n") + len(heading) + 1 :].splitlines(keepends=True)
    kept, fenced = [], False
    for line in lines:
        fenced ^= line.startswith("```")
        if not fenced and re.match(rf"#{{1,{level}}} ", line):  # a `# comment` in a code block is no heading
            break
        kept.append(line)
    return "".join(kept)


def _commands(markdown: str) -> list[tuple[str, str]]:
    """(subsection heading, command line) of every `sacvit-deploy` line in the ```bash blocks."""
    found, heading = [], ""
    for block_or_text in re.split(r"(```bash\n.*?```)", markdown, flags=re.S):
        if not block_or_text.startswith("```bash"):
            headings = re.findall(r"^#+ (.*)$", block_or_text, re.M)
            heading = headings[-1] if headings else heading
            continue
        body = block_or_text[len("```bash\n") : -len("```")].replace("\\\n", " ")
        for line in body.splitlines():
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("sacvit-deploy "):
                    found.append((heading, part))
    return found


def _substitutions(text: str) -> list[tuple[str, str]]:
    table = _section(text, "### Trying it on the demo's files")
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", table, re.M)
    assert rows, "the README's substitution table is missing"
    return rows


def _needs(heading: str, argv: list[str]) -> str | None:
    """Why a README command cannot run here (the README names these), or None."""
    if argv[1] == "build-engine" and importlib.util.find_spec("tensorrt") is None:
        return "needs TensorRT and an NVIDIA GPU"
    if "--triton" in argv:
        return "needs a running Triton server"
    if argv[1] == "serve":
        return "serves until stopped, from the Triton environment docs/triton.md sets up (tests/test_triton_server.py runs it)"
    if "Train" in heading:
        return "needs a data set and DeiT weights (tests/test_train.py trains a tiny model)"
    return None


def _run(line: str) -> str:
    argv = shlex.split(line, comments=True)
    assert argv[0] == "sacvit-deploy", line
    result = runner.invoke(app, argv[1:])
    assert result.exit_code == 0, f"$ {line}\nexit {result.exit_code}\n{result.output}"
    return result.output


def test_readme_and_demo_commands_run_as_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = README.read_text(encoding="utf-8")

    start_section = _section(text, "## Start")
    start = [c for _, c in _commands(start_section)]
    assert [shlex.split(c, comments=True) for c in start] == [["sacvit-deploy", "demo"]]
    demo = _run(start[0])
    # The demo shows both stages at work and keeps its files where it says.
    for step in ("1. Export to two verified ONNX graphs", "2. Classify the bundled images", "3. Profile"):
        assert step in demo
    stage1 = next(x for x in demo.splitlines() if x.strip().startswith("stage 1 (half resolution"))
    stage2 = next(x for x in demo.splitlines() if x.strip().startswith("stage 2 (target tokens"))
    assert "answered 0 images" not in stage1 and "answered 0 images" not in stage2
    assert (tmp_path / "sacvit-demo" / "export" / "manifest.json").is_file()

    subs = _substitutions(text)

    def substitute(line: str) -> str:
        for old, new in subs:
            line = line.replace(old, new)
        return line

    # What the demo prints next: the closing block and the export's `next:` hint.
    tail = demo[demo.index("Next, on the demo's files") :]
    printed = [x.strip() for x in tail.splitlines() if x.strip().startswith("sacvit-deploy ")]
    hints = [x for x in demo.splitlines() if x.startswith("next: ")]
    printed += [p.strip() for h in hints for p in h[len("next: ") :].split("|")]
    assert len(printed) >= 6, printed
    for line in printed:
        _run(substitute(line))

    skipped = []
    workflow = _commands(_section(text, "## The real workflow"))
    assert len(workflow) >= 12, workflow
    # "Runs on a CPU as written" holds only when the Start line installs what the workflow's options need.
    if any("--plot" in line for _, line in workflow):
        install = next(x for x in start_section.splitlines() if "pip install -e" in x)
        assert "plot" in install, (
            f"the workflow uses --plot, the Start line does not install [plot]: {install}"
        )
    # The parity check "later", as the README writes it, ends with its verdict and exit code 0.
    assert ("1. Export a checkpoint", "sacvit-deploy check export/ --run") in [
        (h, c.split("#")[0].strip()) for h, c in workflow
    ]
    for heading, line in workflow:
        line = substitute(line)
        reason = _needs(heading, shlex.split(line, comments=True))
        if reason:
            skipped.append(f"{line}: {reason}")
            continue
        output = _run(line)
        if line.startswith("sacvit-deploy check export/ --run"):
            assert "verdict: OK" in output and "parity: every row passes" in output, output
    # The workflow left what it promised.
    assert (tmp_path / "export" / "baseline.onnx").is_file() and (tmp_path / "export85").is_dir()
    assert (tmp_path / "predictions.jsonl").stat().st_size > 0
    assert (tmp_path / "profile.json").is_file() and (tmp_path / "curve.csv").is_file()
    assert (tmp_path / "profile.png").stat().st_size > 0 and (tmp_path / "curve.png").stat().st_size > 0
    assert (tmp_path / "model_repository").is_dir()
    # build-engine x3 (one of the int8 export), infer --triton, serve, train x3 (one fine-tuning), 2 exports
    assert len(skipped) <= 10, skipped
