"""The command line through typer's CliRunner."""

from __future__ import annotations

import pytest
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


# Each choice a command offers is a table that lives below the CLI; most of those modules import
# numpy or torch, which `--help` must not, so the CLI spells the values again (or builds them from
# the light tables it does import) and this test holds every choice Enum to its table.
def _choice_tables():
    from sacvit_deploy.backends.factory import DEVICES, backend_names
    from sacvit_deploy.backends.openvino_backend import HINTS
    from sacvit_deploy.backends.trt_version import HARDWARE_COMPAT
    from sacvit_deploy.core.formats import AUTO, FORMAT_NAMES, INIT_FORMATS, TRAIN_FORMATS
    from sacvit_deploy.core.trt_families import TRT_FAMILY_NAMES
    from sacvit_deploy.quantize.qdq import METHODS
    from sacvit_deploy.runtime.exit_calibration import FOLDER_MAPPINGS
    from sacvit_deploy.training.distributed import BACKENDS as DIST_BACKENDS
    from sacvit_deploy.training.loop import AMP_DTYPES
    from sacvit_deploy.training.recipe import RECIPES
    from sacvit_deploy.triton.config import KINDS
    from sacvit_deploy.triton.repository import BACKENDS as TRITON_BACKENDS

    return {
        "BackendName": backend_names(),
        "DeviceName": DEVICES,
        "OvHint": HINTS,
        "FolderLabels": FOLDER_MAPPINGS,
        "HardwareCompat": tuple(HARDWARE_COMPAT),
        "TrtFamilyChoice": TRT_FAMILY_NAMES,
        "CheckpointFormatChoice": (AUTO, *FORMAT_NAMES),
        "TrainFormatChoice": TRAIN_FORMATS,
        "InitFormatChoice": INIT_FORMATS,
        "CalibrationMethod": METHODS,
        "DistBackend": DIST_BACKENDS,
        "AmpDtype": tuple(AMP_DTYPES),
        "Recipe": RECIPES,
        "InstanceKind": tuple(KINDS),
        "TritonBackend": TRITON_BACKENDS,
    }


# No table below the CLI: infer --format (how the CLI prints); check --backend (which of check's two
# parity paths runs).
CLI_ONLY_CHOICES = {"OutputFormat", "ParityBackend"}


def test_every_choice_a_command_offers_is_its_table():
    import enum
    import inspect

    import typing_extensions as typing

    pytest.importorskip("torch")  # training's tables live with torch
    tables = _choice_tables()
    seen = set()
    for command in app.registered_commands:
        fn = command.callback.__wrapped__
        hints = typing.get_type_hints(fn, include_extras=True)
        for param in inspect.signature(fn).parameters:
            hint = hints[param]
            if typing.get_origin(hint) is typing.Annotated:
                hint = typing.get_args(hint)[0]
            choices = [a for a in (typing.get_args(hint) or (hint,)) if isinstance(a, type)]
            for choice in (c for c in choices if issubclass(c, enum.Enum)):
                seen.add(choice.__name__)
                if choice.__name__ in CLI_ONLY_CHOICES:
                    continue
                assert choice.__name__ in tables, (
                    f"{command.name} --{param}: {choice.__name__} has no table here"
                )
                values = [m.value for m in choice]
                assert values == list(tables[choice.__name__]), f"{command.name} --{param}: {values}"
    assert seen == set(tables) | CLI_ONLY_CHOICES, sorted(seen ^ (set(tables) | CLI_ONLY_CHOICES))
