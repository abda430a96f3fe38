"""`sacvit-deploy build-engine` through typer's CliRunner, with the fake TensorRT injected."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.manifest import Manifest
from tests.fakes.fixtures import install_fake_tensorrt, shared_export

runner = CliRunner()


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return shared_export(tmp_path_factory)[1]


def one_line_error(result, text: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], result.output
    assert "Traceback" not in result.output


def test_build_engine_end_to_end(export, tmp_path, monkeypatch):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    out = tmp_path / "engines"
    result = runner.invoke(
        app, ["build-engine", str(export), "--out", str(out), "--fp16", "--max-batch", "16"]
    )
    assert result.exit_code == 0, result.output
    assert "built 3 engines into" in result.stdout and "stage1.engine" in result.stdout
    assert "Parity: engines vs ONNX Runtime (CPU)" in result.stdout and "pass" in result.stdout
    m = Manifest.load(out)
    assert set(m.engines) == {"stage1", "stage2", "baseline"} and m.tensorrt.precision == "fp16"
    assert m.engines["stage2"].info["profiles"]["image"]["max"][0] == 16
    assert ("FP16",) in fake.called("Config.set_flag")


def test_no_tensorrt_is_one_line_naming_the_extra(export, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = runner.invoke(app, ["build-engine", str(export), "--out", str(tmp_path / "e")])
    one_line_error(result, "TensorRT is not installed: pip install 'sacvit-deploy[tensorrt]'")
    assert "apt install python3-libnvinfer" in result.output


def test_no_gpu(export, tmp_path, monkeypatch):
    from tests.fakes.fake_tensorrt import make_fake_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3.0"))
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = runner.invoke(app, ["build-engine", str(export), "--out", str(tmp_path / "e")])
    one_line_error(result, "no CUDA GPU is visible here")


@pytest.mark.parametrize(
    ("version", "args", "text"),
    [
        ("8.5.2", ["--version-compatible"], "--version-compatible needs TensorRT 8.6 or later"),
        (
            "10.3.0",
            ["--hardware-compat", "same-cc"],
            "--hardware-compat same-cc needs TensorRT 10.9 or later",
        ),
        ("11.0.0", ["--int8", "--calib-images", "."], "--int8 is not supported on TensorRT 11.0.0"),
        ("10.3.0", ["--fp16", "--dla-core", "0"], "this device has no DLA"),
        ("10.3.0", ["--min-batch", "8", "--opt-batch", "4"], "--min-batch (8) <= --opt-batch (4)"),
    ],
)
def test_unsupported_options_are_one_line_errors(export, tmp_path, monkeypatch, version, args, text):
    install_fake_tensorrt(monkeypatch, tmp_path, version)
    result = runner.invoke(app, ["build-engine", str(export), "--out", str(tmp_path / "e"), *args])
    one_line_error(result, text)


def test_hardware_compat_choices_are_checked_by_the_parser(export):
    result = runner.invoke(app, ["build-engine", str(export), "--hardware-compat", "turing"])
    assert result.exit_code == 2 and "turing" in result.output
