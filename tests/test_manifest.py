"""Manifest round trip, schema checks, tamper detection and path safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sacvit_deploy.core.manifest import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ArtifactError,
    ArtifactFile,
    ExitCalibration,
    Manifest,
    migrate,
    safe_child,
    sha256_file,
)
from sacvit_deploy.model import tiny_config
from sacvit_deploy.model.graphs import graph_specs


def make_manifest(folder) -> Manifest:
    (folder / "stage1.onnx").write_bytes(b"graph-one")
    inputs, outputs = graph_specs(tiny_config(), "stage1")
    entry = ArtifactFile(
        file="stage1.onnx",
        sha256=sha256_file(folder / "stage1.onnx"),
        size=9,
        inputs=inputs,
        outputs=outputs,
    )
    m = Manifest(model=tiny_config(), source_format="sacvit", exit_threshold=0.5, graphs={"stage1": entry})
    m.save(folder)
    return m


def test_round_trip(tmp_path):
    m = make_manifest(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded.model == m.model and loaded.graphs["stage1"] == m.graphs["stage1"]
    assert loaded.graphs["stage1"].input("image").shape == ("batch", 3, 128, 128)
    assert loaded.graphs["stage1"].input("image").is_dynamic
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["schema_version"] == 2 and "num_classes" not in data  # v2: model.num_classes only
    loaded.verify(tmp_path)


def test_tampered_graph_is_detected(tmp_path):
    make_manifest(tmp_path)
    (tmp_path / "stage1.onnx").write_bytes(b"graph-two")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        Manifest.load(tmp_path).verify(tmp_path)
    (tmp_path / "stage1.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        Manifest.load(tmp_path).verify(tmp_path)


@pytest.mark.parametrize("name", ["../stage1.onnx", "/etc/passwd", "sub/stage1.onnx", "..", ""])
def test_paths_out_of_the_folder_are_refused(tmp_path, name):
    make_manifest(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["graphs"]["stage1"]["file"] = name
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="not a plain file name"):
        Manifest.load(tmp_path)


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"x")
    folder = tmp_path / "export"
    folder.mkdir()
    os.symlink(outside, folder / "stage1.onnx")
    with pytest.raises(ArtifactError, match="resolves outside"):
        safe_child(folder, "stage1.onnx")


def test_bad_manifests(tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact folder"):
        Manifest.load(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ArtifactError, match="not a sacvit-deploy manifest"):
        Manifest.load(tmp_path)
    make_manifest(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["schema_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="upgrade sacvit-deploy"):
        Manifest.load(tmp_path)
    data["schema_version"] = 1
    del data["model"]["embed_dim"]
    data["model"]["bogus"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="malformed manifest|unknown fields"):
        Manifest.load(tmp_path)


def _set(path: str, value):
    def edit(d):
        *keys, last = path.split(".")
        for k in keys:
            d = d[int(k)] if isinstance(d, list) else d[k]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value

    return edit


_DELETE = object()
BAD_FIELDS = {
    "schema_version 0": ("schema_version", 0, "schema_version 0 is not a schema version"),
    "schema_version -1": ("schema_version", -1, "not a schema version"),
    "schema_version string": ("schema_version", "1", "not a schema version"),
    "schema_version bool": ("schema_version", True, "not a schema version"),
    "schema_version newer": ("schema_version", 99, "newer than the 2 this sacvit-deploy reads"),
    "threshold NaN": ("exit_threshold", float("nan"), "exit_threshold nan must be a finite number"),
    "threshold negative": ("exit_threshold", -0.5, "exit_threshold"),
    "threshold string": ("exit_threshold", "0.5", "exit_threshold"),
    "1000 classes on a 10-class graph": (
        "model.num_classes+num_classes",
        1000,
        "gives 10 logits but the model config has 1000",
    ),
    "std 0": ("model.preprocess.std", [0.229, 0.0, 0.225], "preprocess.std"),
    "mean of 2": ("model.preprocess.mean", [0.5, 0.5], "preprocess.mean"),
    "resize 0": ("model.preprocess.resize_size", 0, "preprocess.resize_size 0"),
    "resize negative": ("model.preprocess.resize_size", -5, "preprocess.resize_size -5"),
    "resize 200000": ("model.preprocess.resize_size", 200000, "preprocess.resize_size 200000"),
    "lanczos": ("model.preprocess.interpolation", "lanczos", "preprocess.interpolation 'lanczos'"),
    "62.5M classes": ("model.num_classes", 62_500_000, "num_classes 62500000 must be in 1..100000"),
    "num_classes float": ("model.num_classes", 10.0, "num_classes 10.0 must be of type int"),
    "class names not strings": ("model.class_names", list(range(10)), "class_names"),
    "unknown format": ("source_format", "yolo", "source_format 'yolo'"),
    "sha256 short": ("graphs.stage1.sha256", "abc", "is not 64 hex digits"),
    "size negative": ("graphs.stage1.size", -1, "size -1"),
    "dtype unknown": ("graphs.stage1.outputs.0.dtype", "float99", "dtype 'float99'"),
    "no confidence output": ("graphs.stage1.outputs.1.name", "conf", "no 'confidence' output"),
    "image of another model": (
        "graphs.stage1.inputs.0.shape",
        ["batch", 3, 96, 96],
        "takes images of shape (3, 96, 96)",
    ),
    "exporter empty": ("exporter", {}, "exporter: field 'opset'"),  # v2 writes no exporter as null
    "unknown role": ("graphs.stage3", {"file": "x.onnx"}, "unknown roles ['stage3']"),
    "no model": ("model", _DELETE, "no field 'model'"),
    "quantization not an object": ("quantization", [1], "manifest.quantization [1] must be"),
    "quantization fp8": (
        "quantization",
        {"precision": "fp8", "format": "QDQ"},
        "quantization: precision 'fp8', format 'QDQ'; only int8 QDQ",
    ),
    "quantization float_export a string": (
        "quantization",
        {"precision": "int8", "format": "QDQ", "float_export": "export"},
        "quantization.float_export 'export' must be",
    ),
    "quantization float folder missing": (
        "quantization",
        {"precision": "int8", "format": "QDQ", "float_export": {"graphs": {}}},
        "quantization.float_export: field 'folder' is missing",
    ),
    "quantization float sha256 short": (
        "quantization",
        {"precision": "int8", "format": "QDQ", "float_export": {"folder": "e", "graphs": {"stage1": "ab"}}},
        "quantization.float_export.graphs.stage1: sha256 'ab' is not 64 hex digits",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_every_field_is_validated_with_one_line_naming_the_file(tmp_path, case):
    make_manifest(tmp_path)
    path = tmp_path / "manifest.json"
    data = json.loads(path.read_text())
    keys, value, expected = BAD_FIELDS[case]
    for key in keys.split("+"):
        _set(key, value)(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as info:
        Manifest.load(tmp_path)
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message, message


def test_deeply_nested_json_is_one_line(tmp_path):
    make_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="nested too deep"):
        Manifest.load(tmp_path)


V1 = Path(__file__).parent / "data" / "manifest_v1"  # written by sacvit-deploy's v1 code (an lf-vit export)


def test_stored_v1_manifest_migrates_on_load_and_saves_as_v2(tmp_path):
    raw = json.loads((V1 / "manifest.json").read_text())
    assert raw["schema_version"] == 1 and raw["num_classes"] == 10
    m = Manifest.load(V1)
    assert (
        m.num_classes == 10
        and m.source_format == "lf-vit"
        and set(m.graphs) == {"stage1", "stage2", "baseline"}
    )
    assert m.verification is not None and m.verification.passed and m.exporter is not None
    m.save(tmp_path)
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["schema_version"] == SCHEMA_VERSION == 2 and "num_classes" not in saved
    again = Manifest.load(tmp_path)
    assert again.to_dict() == {**m.to_dict(), "created": again.to_dict()["created"]}
    # the step's own check: v1's copy of num_classes must agree with the model's
    raw["num_classes"] = 11
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="num_classes 11 disagrees with the model config's 10"):
        Manifest.load(tmp_path)


def test_every_schema_version_has_a_migration_step():
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))
    assert migrate(
        {"schema_version": 1, "model": {"num_classes": 3}, "num_classes": 3, "exporter": {}}, 1
    ) == {
        "schema_version": 2,
        "model": {"num_classes": 3},
        "exporter": None,
    }


def test_derive_and_with_calibration(tmp_path):
    m = Manifest.load(V1)
    record = ExitCalibration(0.42, {"kind": "accuracy", "value": 0.9}, 0.91, 0.5, 1.2, 64, {"rule": "x"})
    calibrated = m.with_calibration(record)
    assert calibrated.exit_threshold == 0.42 and calibrated.calibration is record
    assert calibrated.graphs == m.graphs and m.exit_threshold != 0.42  # the original is unchanged
    engines = calibrated.derive(source={"export": "e"}, engines={})
    assert engines.graphs == {} and engines.verification is None and engines.weights is None
    assert engines.exit_threshold == 0.42 and engines.calibration is record and engines.model == m.model
    assert engines.source == {**m.source, "export": "e"}


def test_a_calibration_record_with_a_negative_threshold_is_refused():
    """with_calibration makes the record's threshold the exit threshold: the one rule's bound holds."""
    good = {
        "threshold": 0.42,
        "target": {"kind": "accuracy", "value": 0.9},
        "accuracy": 0.91,
        "exit_rate": 0.5,
        "gflops_per_image": 1.2,
        "images": 64,
    }
    assert ExitCalibration.from_dict(good).threshold == 0.42
    with pytest.raises(ValueError, match=r"calibration.threshold -0.1 must be >= 0"):
        ExitCalibration.from_dict({**good, "threshold": -0.1})
