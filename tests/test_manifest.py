"""Manifest round trip, schema checks, tamper detection and path safety."""

from __future__ import annotations

import json
import os

import pytest

from sacvit_deploy.core.manifest import (
    ArtifactError,
    ArtifactFile,
    Manifest,
    TensorSpec,
    safe_child,
    sha256_file,
)
from sacvit_deploy.model import tiny_config


def make_manifest(folder) -> Manifest:
    (folder / "stage1.onnx").write_bytes(b"graph-one")
    entry = ArtifactFile(
        file="stage1.onnx",
        sha256=sha256_file(folder / "stage1.onnx"),
        size=9,
        inputs=[TensorSpec("image", "float32", ("batch", 3, 128, 128))],
        outputs=[TensorSpec("target_index", "int32", ("batch", 8))],
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
    assert data["schema_version"] == 1 and data["num_classes"] == 10
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
