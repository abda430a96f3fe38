"""A new user's first-hour mistakes and surprises (issue 24): each gets a clear line, none loses work."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.model.checkpoint import save_checkpoint
from tests.conftest import make_tiny
from tests.fakes.fixtures import write_calibration

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    a, b = folder / "a.safetensors", folder / "b.safetensors"
    save_checkpoint(make_tiny("sacvit", seed=0), a)
    save_checkpoint(make_tiny("sacvit", seed=1), b)
    return a, b


def _export(*args: str) -> str:
    result = runner.invoke(app, ["export", *args, "--no-weights", "--no-verify"])
    assert result.exit_code == 0, result.output
    return result.output


def test_reexport_keeps_a_calibrated_threshold_or_says_it_resets_it(checkpoints, tmp_path):
    a, b = checkpoints
    out = tmp_path / "export"
    _export(str(a), "--out", str(out))
    default = Manifest.load(out).exit_threshold
    write_calibration(out, 0.338)
    # The same checkpoint again: the calibrated threshold and its record stay, and it says so.
    shown = _export(str(a), "--out", str(out))
    m = Manifest.load(out)
    assert m.exit_threshold == pytest.approx(0.338) and m.calibration is not None
    assert "kept the calibrated exit threshold 0.338" in shown
    # --threshold replaces it, loudly, with the old value and how to restore it.
    shown = _export(str(a), "--out", str(out), "--threshold", "0.7")
    assert Manifest.load(out).exit_threshold == pytest.approx(0.7) and Manifest.load(out).calibration is None
    assert "had the exit threshold 0.338" in shown and "--threshold 0.338" in shown
    # Another checkpoint: its own default threshold, and the same warning.
    write_calibration(out, 0.338)
    shown = _export(str(b), "--out", str(out))
    assert Manifest.load(out).exit_threshold == pytest.approx(default)
    assert "chosen for another checkpoint" in shown and "--threshold 0.338" in shown


def test_artifacts_pointing_at_a_checkpoint_or_the_demo_folder(checkpoints, tmp_path, images_dir):
    a, _ = checkpoints
    result = runner.invoke(app, ["infer", str(images_dir), "--artifacts", str(a)])
    assert result.exit_code == 1 and "a file, not an artifact folder" in result.output
    assert f"sacvit-deploy export {a} --out DIR" in result.output
    _export(str(a), "--out", str(tmp_path / "export"))
    result = runner.invoke(app, ["infer", str(images_dir), "--artifacts", str(tmp_path)])
    assert result.exit_code == 1 and f"holds the export folder(s) {tmp_path / 'export'}" in result.output
    assert "Traceback" not in result.output


def test_output_inside_the_artifact_folder_is_refused_before_any_work(checkpoints, tmp_path, images_dir):
    a, _ = checkpoints
    out = tmp_path / "export"
    _export(str(a), "--out", str(out))
    preds = out / "preds.csv"
    result = runner.invoke(
        app, ["infer", str(images_dir), "--artifacts", str(out), "--format", "csv", "--output", str(preds)]
    )
    assert result.exit_code == 1 and "inside the artifact folder" in result.output and not preds.exists()
    _export(str(a), "--out", str(out))  # the folder still takes the next export


def test_export_times_the_whole_command(checkpoints, tmp_path):
    shown = _export(str(checkpoints[0]), "--out", str(tmp_path / "e"))
    assert "Python start-up not counted)" in shown
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["source"]["sha256"]


def _commands() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)  # every command, one added later included


def test_help_shows_no_bool_or_list_metavars_and_one_bracket_style():
    names = _commands()
    assert {"infer", "check", "export", "profile", "calibrate"} <= set(names)
    for argv in ([], *([n] for n in names)):
        result = runner.invoke(app, [*argv, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (argv, result.output)
        text = result.output
        assert "<bool>" not in text and "list[" not in text, (argv, text)
        assert "[8.5|" not in text  # choices are <a|b|c> everywhere
    infer = runner.invoke(app, ["infer", "--help"], env={"COLUMNS": "200"}).output
    # The bound shown is the bound checked (by the batch_size check every command gets by name, cli/_options.VALUE_CHECKS: one line, exit 1).
    assert "Images per batch, 1 to 1024." in infer and "[x>=1]" not in infer.split("--batch-size")[1][:60]
    result = runner.invoke(app, ["infer", "x.png", "--batch-size", "5000"])
    assert result.exit_code == 1 and "from 1 to 1024" in result.output


@pytest.mark.parametrize(
    "argv",
    [
        ["infer", "x.png", "--format", "json"],
        ["check", "--trt", "9"],
        ["profile", "--backend", "gpu"],
        ["profile", "--iters", "0"],
        ["profile", "--threads", "abc"],
        ["serve", "--instances", "0"],
    ],
)
def test_usage_errors_exit_2_without_pydantic_wording(argv):
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output
    assert "Value error" not in result.output and "Input should" not in result.output, result.output


def test_profile_load_lines_warn_when_the_load_moves_or_the_machine_is_busy():
    from sacvit_deploy.runtime.profile_artifacts import load_lines

    assert len(load_lines((0.5, 0, 0), (0.6, 0, 0), 2)) == 1
    moved = load_lines((0.5, 0, 0), (3.0, 0, 0), 2)
    assert moved[0].startswith("load average (1 min): 0.50 before, 3.00 after") and "moved" in moved[1]
    busy = load_lines((9.0, 0, 0), (9.2, 0, 0), 2)
    assert "busy" in busy[1]
    assert load_lines(None, None, 2) == ["load average: not available on this OS"]
