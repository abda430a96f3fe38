"""`sacvit-deploy export` and `infer` end to end, the Python API, and a bad-file corpus."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.model import save_checkpoint
from sacvit_deploy.runtime.api import Pipeline
from sacvit_deploy.runtime.images import load_image, preprocess, sample_images
from sacvit_deploy.runtime.pipeline import EarlyExitPipeline
from tests.conftest import make_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A checkpoint exported with the CLI, and a folder of mixed good and bad images."""
    root = tmp_path_factory.mktemp("work")
    model = make_tiny("sacvit")
    save_checkpoint(model, root / "tiny.safetensors")
    result = runner.invoke(
        app, ["export", str(root / "tiny.safetensors"), "--out", str(root / "export"), "--baseline"]
    )
    assert result.exit_code == 0, result.output
    images = root / "images"
    (images / "nested").mkdir(parents=True)
    samples = sample_images()
    for p in samples:
        (images / p.name).write_bytes(p.read_bytes())
    cat = Image.open(samples[0])
    cat.convert("L").save(images / "nested" / "gray.bmp")
    cat.convert("RGBA").save(images / "nested" / "rgba.webp")
    cat.convert("CMYK").save(images / "nested" / "cmyk.tiff")
    cat.convert("P").save(images / "nested" / "palette.png")
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.png").write_text("not an image")
    data = (images / "chelsea.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return model, root


def test_export_cli_output(workdir):
    _, root = workdir
    manifest = json.loads((root / "export" / "manifest.json").read_text())
    assert manifest["verification"]["passed"]
    assert {r["images"] for r in manifest["verification"]["rows"]} == {"random", "real"}
    assert set(manifest["graphs"]) == {"stage1", "stage2", "baseline"}
    trt = manifest["verification"]["tensorrt"]
    assert set(trt) == {"8.5", "8.6", "10", "11"}
    assert all(r["parses"] for v in ("8.6", "10", "11") for r in trt[v].values())
    assert not trt["8.5"]["stage1"]["parses"]  # native LayerNorm: export --target-trt 8.5 for JetPack 5


def test_infer_table_reports_every_good_image_and_each_bad_one(workdir):
    _, root = workdir
    result = runner.invoke(
        app,
        [
            "infer",
            str(root / "images"),
            str(root / "bad"),
            "--artifacts",
            str(root / "export"),
            "--batch-size",
            "4",
        ],
    )
    assert result.exit_code == 2, result.output  # some failed
    out = result.output
    good = [p for p in (root / "images").rglob("*") if p.is_file()]
    for p in good:
        assert str(p) in out
    assert out.count("FAILED") == 3
    assert "empty.jpg: empty file" in out and "truncated.jpg: truncated or corrupt" in out
    assert f"{len(good)} images classified, 3 failed" in out and "exit rate" in out


def test_infer_all_good_exits_zero_and_outputs_agree_across_backends(workdir):
    model, root = workdir
    rows = {}
    for backend in ("onnxruntime", "torch"):
        out = root / f"out-{backend}.jsonl"
        result = runner.invoke(
            app,
            [
                "infer",
                str(root / "images"),
                "--artifacts",
                str(root / "export"),
                "--backend",
                backend,
                "--format",
                "jsonl",
                "--output",
                str(out),
                "--topk",
                "3",
            ],
        )
        assert result.exit_code == 0, result.output
        rows[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows["torch"]) == len(rows["onnxruntime"]) == len(list((root / "images").rglob("*.*")))
    for a, b in zip(rows["torch"], rows["onnxruntime"], strict=True):
        assert a["path"] == b["path"] and a["stage"] == b["stage"]
        assert a["top"][0]["class"] == b["top"][0]["class"]
        assert abs(a["confidence"] - b["confidence"]) < 1e-4
    # and both equal the PyTorch reference forward on the same preprocessed pixels
    paths = [r["path"] for r in rows["onnxruntime"]]
    x = torch.from_numpy(np.stack([preprocess(load_image(p), model.cfg.preprocess) for p in paths]))
    with torch.no_grad():
        ref = model(x)
    assert [r["stage"] for r in rows["onnxruntime"]] == ref.stage.tolist()
    assert [r["top"][0]["class"] for r in rows["onnxruntime"]] == ref.logits.argmax(-1).tolist()
    assert {r["stage"] for r in rows["onnxruntime"]} == {1, 2}, "the sample set should exercise both stages"


def test_infer_csv_and_labels(workdir):
    _, root = workdir
    labels = root / "labels.txt"
    labels.write_text("\n".join(f"class-{i}" for i in range(10)) + "\n")
    out = root / "out.csv"
    result = runner.invoke(
        app,
        [
            "infer",
            str(root / "images" / "chelsea.jpg"),
            str(root / "bad" / "empty.jpg"),
            "--artifacts",
            str(root / "export"),
            "--format",
            "csv",
            "--output",
            str(out),
            "--labels",
            str(labels),
            "--topk",
            "2",
        ],
    )
    assert result.exit_code == 2
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["path"] for r in rows] == [
        str(root / "images" / "chelsea.jpg"),
        str(root / "bad" / "empty.jpg"),
    ]
    assert (
        rows[0]["top1_name"].startswith("class-")
        and rows[0]["stage"] in ("1", "2")
        and rows[0]["error"] == ""
    )
    assert rows[1]["error"] == "empty file (0 bytes)"
    labels.write_text("only\ntwo\n")
    result = runner.invoke(
        app, ["infer", str(root / "images"), "--artifacts", str(root / "export"), "--labels", str(labels)]
    )
    assert result.exit_code == 1 and "2 labels for a model with 10 classes" in result.output


def test_empty_or_missing_inputs_are_clear_errors(workdir, tmp_path):
    _, root = workdir
    result = runner.invoke(app, ["infer", str(tmp_path), "--artifacts", str(root / "export")])
    assert result.exit_code == 1 and "no images found" in result.output
    result = runner.invoke(app, ["infer", str(root / "images"), "--artifacts", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "run `sacvit-deploy export" in result.output
    result = runner.invoke(app, ["infer", str(root / "bad")])  # nothing readable at all
    assert result.exit_code != 0


def test_interrupted_run_keeps_finished_rows(workdir, monkeypatch):
    _, root = workdir
    real_run = EarlyExitPipeline.run
    calls = {"n": 0}

    def interrupt_second_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(EarlyExitPipeline, "run", interrupt_second_batch)
    out = root / "partial.jsonl"
    result = runner.invoke(
        app,
        [
            "infer",
            str(root / "images"),
            "--artifacts",
            str(root / "export"),
            "--batch-size",
            "3",
            "--format",
            "jsonl",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 130
    assert "interrupted: 3 images classified" in result.output
    assert len(out.read_text().splitlines()) == 3


def test_default_artifact_folder_is_export_in_the_working_directory(workdir, monkeypatch):
    _, root = workdir
    monkeypatch.chdir(root)
    result = runner.invoke(app, ["infer", "images/chelsea.jpg"])
    assert result.exit_code == 0, result.output
    assert "artifacts: export/" in result.output


def test_python_api_accepts_paths_pil_and_arrays(workdir):
    model, root = workdir
    path = root / "images" / "coffee.jpg"
    pil = Image.open(path)
    arr = np.asarray(pil.convert("RGB"))
    with Pipeline.from_artifacts(root / "export", backend="onnxruntime") as pipe:
        preds = pipe.predict([path, pil, arr], topk=3)
        assert [p.source for p in preds] == [str(path), "<JpegImageFile 1>", "<ndarray 2>"]
        assert len({(p.classes[0], p.stage) for p in preds}) == 1  # same image three ways
        assert len(preds[0].classes) == 3 and preds[0].probabilities == sorted(
            preds[0].probabilities, reverse=True
        )
        pipe.threshold = 0.0
        assert pipe.predict(path)[0].stage == 1
    x = torch.from_numpy(preprocess(load_image(path), model.cfg.preprocess))[None]
    with torch.no_grad():
        assert preds[0].classes[0] == int(model(x).logits.argmax())
