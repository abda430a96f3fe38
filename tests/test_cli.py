"""The command line through typer's CliRunner."""

from __future__ import annotations

from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.version import __version__

runner = CliRunner()


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "variants" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"sacvit-deploy {__version__}"


def test_variants_lists_token_counts_and_gflops():
    result = runner.invoke(app, ["variants", "--format", "lf-vit"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "deit_small_224" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[4:9] == ["22", "116", "4.60", "1.10", "2.64"]


def test_unknown_format_is_one_line_error():
    result = runner.invoke(app, ["variants", "--format", "yolo"])
    assert result.exit_code == 1
    assert "unknown format 'yolo'" in result.output


def test_export_errors_are_one_line_with_the_fix(tmp_path):
    import torch

    from sacvit_deploy.model import DeiT, make_config

    deit = tmp_path / "deit.pth"
    torch.save(DeiT(make_config("deit_tiny_224")).state_dict(), deit)
    result = runner.invoke(app, ["export", str(deit), "--format", "lf-vit", "--out", str(tmp_path / "e")])
    assert result.exit_code == 1
    assert "pass --format deit" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["export", str(deit), "--format", "yolo"])
    assert result.exit_code == 2  # typer rejects values outside the Enum
    result = runner.invoke(app, ["export", str(tmp_path / "missing.pth")])
    assert result.exit_code == 1 and "no such file" in result.output
    result = runner.invoke(app, ["export", str(deit), "--batch", "zero"])
    assert result.exit_code == 1 and "--batch 'zero'" in result.output
