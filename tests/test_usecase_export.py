"""The export use case as a Python user calls it: ``export_checkpoint(...) -> ExportRun``.

Real checkpoints (trained-scale weights: logit std ~4, as the float32 rounding of a real model sees),
real exports, real ONNX Runtime; the files, hashes and numbers are checked against independent
computations (hashlib, an ONNX Runtime session of our own, the model's own forward).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sacvit_deploy.core.compare import Tolerance
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import ExitCalibration, Manifest
from sacvit_deploy.export.export_checkpoint import ExportRun, export_checkpoint
from sacvit_deploy.export.onnx_export import ExportOptions
from sacvit_deploy.model.checkpoint import save_checkpoint
from tests.conftest import make_tiny, trained_scale
from tests.fakes.fixtures import write_calibration

NAMES = [f"class {i}" for i in range(10)]  # tiny_config has 10 classes


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two different trained-scale tiny SAC-ViT checkpoints (safetensors) and their models."""
    folder = tmp_path_factory.mktemp("usecase-export")
    out = []
    for seed in (0, 1):
        model = trained_scale(make_tiny("sacvit", seed=seed), seed=seed)
        out.append((save_checkpoint(model, folder / f"ckpt{seed}.safetensors"), model))
    return out


@pytest.fixture(scope="module")
def verified(checkpoints, tmp_path_factory):
    """One verified export with a labels list, kept for the tests that only read it."""
    path, model = checkpoints[0]
    lines: list[str] = []
    out = tmp_path_factory.mktemp("verified") / "export"
    run = export_checkpoint(
        path, out, labels=NAMES, tolerance=Tolerance(2e-4, 2e-4), options=ExportOptions(), log=lines.append
    )
    return run, lines, model


def test_files_written_and_the_manifest_describes_them(verified, checkpoints):
    run, lines, model = verified
    path = checkpoints[0][0]
    assert isinstance(run, ExportRun) and run.folder.is_dir()
    assert set(run.files) == {"stage1.onnx", "stage2.onnx", "model.safetensors"}
    for name, size in run.files.items():
        assert (run.folder / name).stat().st_size == size > 0
    on_disk = json.loads((run.folder / "manifest.json").read_text())
    manifest = Manifest.load(run.folder)
    assert on_disk["source"] == {"checkpoint": path.name, "format": "sacvit", "sha256": _sha(path)}
    assert run.checkpoint_sha256 == _sha(path) and run.checkpoint == path
    for role in ("stage1", "stage2"):
        assert manifest.graphs[role].sha256 == _sha(run.folder / f"{role}.onnx")
        assert manifest.graphs[role].size == run.files[f"{role}.onnx"]
    assert manifest.weights is not None and manifest.weights.sha256 == _sha(run.folder / "model.safetensors")
    assert manifest.exit_threshold == pytest.approx(model.cfg.exit_threshold)
    assert manifest.exporter.target_trt == "10" and manifest.exporter.opset == 17
    assert manifest.calibration is None and run.calibration is None
    # What the loader found, as the command prints it.
    assert (run.fmt, run.variant) == ("sacvit", model.cfg.variant)
    assert (run.selection, run.attention) == (model.cfg.selection, model.cfg.attention)
    assert f"loaded {path} as sacvit {model.cfg.variant}" in "\n".join(lines)
    assert any(line.startswith("staged stage1.onnx") for line in lines)
    assert run.seconds > 0
    # The returned manifest is the published one.
    assert run.manifest.to_dict() == manifest.to_dict()


def test_class_names_come_from_the_labels_list(verified):
    run, _, model = verified
    assert Manifest.load(run.folder).class_names == tuple(NAMES)
    assert model.cfg.class_names != tuple(NAMES)  # renamed on the way, the checkpoint untouched
    # model.safetensors carries the names too (the torch backend labels from it).
    from sacvit_deploy.model.checkpoint import load_checkpoint

    assert load_checkpoint(run.folder / "model.safetensors").cfg.class_names == tuple(NAMES)


def test_verification_report_present_and_passed(verified):
    run, _, _ = verified
    report = run.verification
    assert report is not None and report["passed"] is True
    assert (report["atol"], report["rtol"]) == (2e-4, 2e-4)  # the tolerance given
    assert report["checker"] == {"stage1": "ok", "stage2": "ok"}
    assert {row["images"] for row in report["rows"]} == {"random", "real"}  # bundled samples loaded
    assert all(row["passed"] for row in report["rows"])
    assert {"stage1", "stage2"} <= {row["check"] for row in report["rows"]}
    target = report["tensorrt"]["10"]
    assert target["stage1"]["parses"] and target["stage2"]["parses"]
    assert Manifest.load(run.folder).verification.to_dict() == report


def test_the_graph_computes_what_the_checkpoint_does(verified):
    """Independently of the verification: our own ONNX Runtime session on stage1.onnx against the
    trained-scale model's forward, within a limit that scales with the logits."""
    import onnxruntime as ort

    run, _, model = verified
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    session = ort.InferenceSession(str(run.folder / "stage1.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model.forward_stage1(x).logits.numpy()
    assert float(want.std()) > 1.0  # trained scale, not init-scale logits of ~0.1
    assert np.abs(got - want).max() <= 1e-4 + 1e-4 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).all()


FAST = ExportOptions(weights=False)


def test_reexport_keeps_a_calibration_of_the_same_checkpoint_in_one_publish(
    checkpoints, tmp_path, monkeypatch
):
    path, _ = checkpoints[0]
    out = tmp_path / "export"
    export_checkpoint(path, out, options=FAST, verify=False)
    record = write_calibration(out, 0.338)

    saves = []
    original = Manifest.save

    def counting_save(self, folder):
        saves.append(self.calibration)
        return original(self, folder)

    monkeypatch.setattr(Manifest, "save", counting_save)
    lines: list[str] = []
    run = export_checkpoint(path, out, options=FAST, verify=False, log=lines.append)
    assert (
        run.calibration is not None and run.calibration.kept and run.calibration.reason == "same checkpoint"
    )
    m = Manifest.load(out)
    assert m.exit_threshold == pytest.approx(0.338) and m.calibration == record
    assert run.manifest.calibration == record
    assert saves == [record]  # the kept record went into the one manifest the publish wrote
    assert any(line.startswith("kept the calibrated exit threshold 0.338") for line in lines)
    assert not any(line.startswith("warning") for line in lines)


def test_another_checkpoint_or_a_threshold_resets_the_calibration_and_says_so(checkpoints, tmp_path):
    (a, _), (b, model_b) = checkpoints
    out = tmp_path / "export"
    export_checkpoint(a, out, options=FAST, verify=False)
    write_calibration(out, 0.338)

    lines: list[str] = []
    run = export_checkpoint(b, out, options=FAST, verify=False, log=lines.append)
    assert run.calibration is not None and not run.calibration.kept
    assert run.calibration.reason == "other checkpoint" and run.calibration.previous.threshold == 0.338
    m = Manifest.load(out)
    assert m.calibration is None and m.exit_threshold == pytest.approx(model_b.cfg.exit_threshold)
    warning = next(line for line in lines if line.startswith("warning: "))
    assert f"{out}/ had the exit threshold 0.338" in warning and "chosen for another checkpoint" in warning
    assert "--threshold 0.338" in warning and "\n" not in warning
    assert warning == run.calibration.message(out)

    write_calibration(out, 0.338)
    lines.clear()
    run = export_checkpoint(
        b, out, options=ExportOptions(weights=False, threshold=0.7), verify=False, log=lines.append
    )
    assert run.calibration.reason == "threshold given" and not run.calibration.kept
    assert Manifest.load(out).exit_threshold == pytest.approx(0.7) and Manifest.load(out).calibration is None
    assert any("--threshold replaces it" in line for line in lines)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_bad_labels_file_is_one_line_naming_it_and_nothing_is_written(checkpoints, tmp_path):
    path, _ = checkpoints[0]
    out = tmp_path / "export"
    short = tmp_path / "labels.txt"
    short.write_text("cat\ndog\n\n", encoding="utf-8")
    with pytest.raises(SacvitError) as exc:
        export_checkpoint(path, out, labels=short, options=FAST, verify=False)
    text = _one_line(exc)
    assert text.startswith(f"{short}: 2 labels for a model with 10 classes") and "one name per class" in text
    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SacvitError) as exc:
        export_checkpoint(path, out, labels=str(binary), options=FAST, verify=False)
    assert _one_line(exc).startswith(f"{binary}: cannot read the labels file")
    with pytest.raises(SacvitError) as exc:
        export_checkpoint(path, out, labels=tmp_path / "missing.txt", options=FAST, verify=False)
    assert _one_line(exc).startswith(f"{tmp_path / 'missing.txt'}: cannot read the labels file")
    with pytest.raises(SacvitError) as exc:
        export_checkpoint(path, out, labels=["cat", "dog"], options=FAST, verify=False)
    assert _one_line(exc) == "labels: 2 names for a model with 10 classes; give one name per class"
    with pytest.raises(SacvitError) as exc:
        export_checkpoint(path, out, labels=[*NAMES[:9], ""], options=FAST, verify=False)
    assert "is not a class name" in _one_line(exc)
    assert not out.exists()


def test_the_cli_prints_the_use_case_result(verified, tmp_path, monkeypatch):
    """`sacvit-deploy export` parses, calls export_checkpoint once and prints what it returns."""
    import dataclasses

    import sacvit_deploy.export.export_checkpoint as usecase
    from sacvit_deploy.cli import app

    run, _, _ = verified
    calls = []
    fake = dataclasses.replace(
        run,
        folder=tmp_path / "elsewhere",
        files={"stage1.onnx": 3 * 2**20, "stage2.onnx": 5 * 2**20},
        seconds=42.31,
    )

    def fake_export(checkpoint, out_dir, **kwargs):
        calls.append((checkpoint, out_dir, kwargs))
        kwargs["log"]("a line [red]logged[/] by the use case")
        return fake

    monkeypatch.setattr(usecase, "export_checkpoint", fake_export)
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"not read: the use case is a fake")
    result = CliRunner().invoke(
        app,
        [
            "export",
            str(ckpt),
            "--out",
            str(tmp_path / "o"),
            "--batch",
            "4",
            "--atol",
            "0.001",
            "--labels",
            str(ckpt),
        ],
    )
    assert result.exit_code == 0, result.output
    [(checkpoint, out_dir, kwargs)] = calls
    assert checkpoint == ckpt and out_dir == tmp_path / "o"
    assert kwargs["options"].batch == 4 and kwargs["tolerance"] == Tolerance(0.001, 1e-4)
    assert kwargs["labels"] == ckpt and kwargs["verify"] is True
    shown = " ".join(result.output.split())
    assert f"exported to {tmp_path / 'elsewhere'}/ in 42.3 s" in shown
    assert "stage1.onnx 3.0 MB, stage2.onnx 5.0 MB" in shown
    assert "a line [red]logged[/] by the use case" in shown  # escaped, not Rich markup
    assert "Verification: ONNX Runtime (CPU) vs PyTorch" in shown and "TensorRT 10 parser check" in shown


def test_export_artifacts_publishes_a_calibration_record_with_its_threshold_only(tmp_path):
    """The kept record's parameter: its threshold is the export's; another one is refused before
    anything is written."""
    from sacvit_deploy.export.onnx_export import ExportError, export_artifacts

    record = ExitCalibration.from_dict(
        {
            "threshold": 0.25,
            "target": {"kind": "accuracy", "value": 0.8},
            "accuracy": 0.8,
            "exit_rate": 0.4,
            "gflops_per_image": 0.01,
            "images": 20,
        }
    )
    model = make_tiny("sacvit")
    with pytest.raises(ExportError) as exc:
        export_artifacts(model, tmp_path / "a", ExportOptions(threshold=0.7), "sacvit", calibration=record)
    assert "the calibration record is for 0.25" in _one_line(exc) and not (tmp_path / "a").exists()
    result = export_artifacts(
        model, tmp_path / "b", ExportOptions(weights=False), "sacvit", calibration=record
    )
    m = Manifest.load(tmp_path / "b")
    assert m.exit_threshold == 0.25 and m.model.exit_threshold == 0.25 and m.calibration == record
    assert result.manifest.calibration == record
