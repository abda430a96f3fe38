"""`quantize_export`, the quantize use case, called as a Python user would: on a real (tiny) export,
real calibration images, real onnxruntime.quantization and the real comparison; the agreement and
accuracy numbers are checked against onnxruntime sessions run here, outside the comparator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.compare import DECISION_HAIR
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.quantize import artifacts
from sacvit_deploy.quantize.qdq import QuantizeError
from sacvit_deploy.quantize.quantize_export import (
    QuantizeOptions,
    QuantizeRejected,
    QuantizeRun,
    quantize_export,
)
from sacvit_deploy.runtime.images import load_image, preprocess
from tests.fakes.pictures import make_images

runner = CliRunner()


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    make_images(folder, count=8)
    return folder


def _session_outputs(path, images):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"image": images}), strict=True))


def _preprocessed(paths, export):
    cfg = Manifest.load(export).preprocess
    return np.stack([preprocess(load_image(p), cfg) for p in paths]).astype(np.float32)


@pytest.fixture(scope="module")
def labelled(exported_tiny, calib, tmp_path_factory):
    """The calibration pictures as an ImageFolder (class-index folders), labelled so that the float
    stage 1 is right on every other image: its accuracy is 50%, not a trivial 0% or 100%."""
    folder = tmp_path_factory.mktemp("labelled")
    paths = sorted(calib.glob("*.png"))
    predicted = _session_outputs(exported_tiny / "stage1.onnx", _preprocessed(paths, exported_tiny))
    classes = Manifest.load(exported_tiny).num_classes
    for i, (p, y) in enumerate(zip(paths, predicted["logits"].argmax(-1), strict=True)):
        label = int(y) if i % 2 == 0 else (int(y) + 1) % classes
        (folder / str(label)).mkdir(exist_ok=True)
        shutil.copy(p, folder / str(label) / p.name)
    return folder


@pytest.fixture(scope="module")
def run(exported_tiny, calib, labelled, tmp_path_factory):
    logs, steps = [], []
    out = tmp_path_factory.mktemp("q") / "int8"
    result = quantize_export(
        exported_tiny,
        calib,
        out,
        options=QuantizeOptions(batch=4),
        images=labelled,
        folder_labels="index",
        min_agreement=0.5,
        log=logs.append,
        on_step=steps.append,
    )
    return result, logs, steps


def test_quantize_export_publishes_a_verified_folder_with_its_report(run, exported_tiny, calib, labelled):
    result, logs, steps = run
    assert isinstance(result, QuantizeRun)
    m = Manifest.load(result.folder)
    m.verify(result.folder)  # every file's sha256 and size as the manifest says
    assert result.manifest.quantization == m.quantization and set(m.graphs) == {"stage1", "stage2"}
    assert result.files == {e.file: (result.folder / e.file).stat().st_size for e in m.graphs.values()}
    assert m.quantization.details["verification"] == result.report and result.report["passed"]
    assert result.calibration["count"] == 8 and result.float_folder == exported_tiny
    assert steps == [
        "loading the calibration images",
        "quantizing the graphs",
        "comparing the int8 graphs with the float ones",
    ]
    assert f"calibration: 8 images from {calib}" in logs, logs
    assert any(line.startswith(f"verification: 8 labelled images in {labelled}") for line in logs), logs
    assert any("noisy" in line for line in logs)  # 8 < 32 calibration images: the note says so
    assert result.small_model and "SLOWER" in (result.speed_note or "")  # a tiny model

    # The report's numbers against onnxruntime run here on the same labelled images.
    report = result.report
    assert report["images"] == "labelled images" and report["samples"] == 8
    paths = sorted(labelled.rglob("*.png"))
    labels = np.array([int(p.parent.name) for p in paths])
    images = _preprocessed(paths, exported_tiny)
    f = _session_outputs(exported_tiny / "stage1.onnx", images)
    q = _session_outputs(result.folder / "stage1.onnx", images)
    row = next(r for r in report["rows"] if r["check"] == "stage1")
    diff = max(np.abs(f[k].astype(np.float64) - q[k]).max() for k in ("logits", "confidence"))
    assert diff > 0 and row["max_abs_diff"] == pytest.approx(diff, rel=1e-3, abs=1e-6)
    margin = np.diff(np.sort(f["logits"].astype(np.float64), axis=-1)[:, -2:], axis=-1)[:, 0]
    decidable = margin > 2 * DECISION_HAIR
    same = f["logits"].argmax(-1) == q["logits"].argmax(-1)
    assert row["top1_agreement"] == pytest.approx(same[decidable].mean() if decidable.any() else 1.0)
    acc = result.accuracy
    assert acc is not None and acc["images"] == 8 and acc["float"]["stage1"] == 0.5  # by construction
    assert acc["float"]["stage1"] == pytest.approx((f["logits"].argmax(-1) == labels).mean())
    assert acc["int8"]["stage1"] == pytest.approx((q["logits"].argmax(-1) == labels).mean())


def test_bad_values_are_one_line_errors_before_any_work(run, exported_tiny, calib, tmp_path):
    int8 = run[0].folder
    cases = [
        ({"min_agreement": 1.01}, "--min-agreement 1.01: give a fraction from 0 to 1"),
        ({"min_agreement": float("nan")}, "--min-agreement nan"),
        ({"max_calib_images": 0}, "--max-calib-images 0: give a positive number"),
        ({"folder_labels": "by-name"}, "--folder-labels by-name: use one of names, index, sorted"),
        ({"options": QuantizeOptions(ops=("Add",))}, "--ops Add: choose among MatMul, Gemm, Conv"),
        ({"options": QuantizeOptions(threads=0)}, "--threads 0: give a positive number of threads"),
    ]
    for kwargs, text in cases:
        with pytest.raises(QuantizeError) as info:
            quantize_export(exported_tiny, calib, tmp_path / "a", **kwargs)
        assert text in str(info.value) and "\n" not in str(info.value)
    inside = Path(exported_tiny) / "int8"  # out inside the float export: refused as out = the export
    with pytest.raises(QuantizeError, match="not into the float export"):
        quantize_export(exported_tiny, calib, inside)
    assert not inside.exists()
    # an int8 folder is refused before its calibration images are even looked for
    with pytest.raises(QuantizeError, match="already an int8"):
        quantize_export(int8, tmp_path / "no-such-folder", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_rejected_run_raises_with_its_report_and_writes_nothing(
    exported_tiny, calib, tmp_path, monkeypatch
):
    """A plausible bug (weight scales off by 8x) caught by the real comparison."""
    real = artifacts.quantize_graph

    def broken(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        model = onnx.load(str(dst))
        for init in model.graph.initializer:
            if init.name.endswith("_scale") and len(init.dims) == 1:  # per-channel weight scales
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 8, init.name))
        onnx.save(model, str(dst))

    monkeypatch.setattr(artifacts, "quantize_graph", broken)
    out = tmp_path / "q"
    with pytest.raises(QuantizeRejected) as info:
        quantize_export(exported_tiny, calib, out, max_calib_images=6)
    report = info.value.report
    assert not report["passed"] and report["samples"] == 6 and report["images"] == "calibration images"
    failed = [r for r in report["rows"] if not r["passed"]]
    assert failed and all(r["reason"] for r in failed)
    worst = min(failed, key=lambda r: min(r["top1_agreement"], r["exit_agreement"] or 1.0))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"int8 {worst['check']} agrees with float on only ")
    assert "(need 95%); nothing was written" in message
    assert not out.exists()  # the folder it would have created is gone too


def test_the_cli_prints_the_use_cases_result_and_a_rejected_report(
    run, exported_tiny, calib, tmp_path, monkeypatch
):
    from sacvit_deploy.quantize import quantize_export as module

    result = run[0]
    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return result

    monkeypatch.setattr(module, "quantize_export", fake)
    out, report = tmp_path / "int8", tmp_path / "r.json"
    argv = ["quantize", str(exported_tiny), "--calib-images", str(calib), "--out", str(out)]
    done = runner.invoke(app, [*argv, "--json", str(report), "--min-agreement", "0.7", "--ops", "MatMul"])
    assert done.exit_code == 0, done.output
    ((args, kwargs),) = calls
    assert args == (exported_tiny, calib, out) and kwargs["min_agreement"] == 0.7
    assert kwargs["options"].ops == ("MatMul",) and kwargs["folder_labels"] == "names"
    assert (
        f"quantized to {result.folder}/" in done.stdout and "Verification: int8 (QDQ) vs float" in done.stdout
    )
    assert "early-exit accuracy: float" in done.stdout and json.loads(report.read_text()) == result.report

    rejected = dict(result.report, passed=False)

    def reject(*_args, **_kwargs):
        raise QuantizeRejected("int8 stage1 agrees with float on only 50.0% of 8 images", rejected)

    monkeypatch.setattr(module, "quantize_export", reject)
    report.unlink()
    done = runner.invoke(app, [*argv, "--json", str(report)])
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert "Verification: int8 (QDQ) vs float" in done.stdout and "Accuracy on 8 labelled" in done.stdout
    last = [line for line in done.output.splitlines() if line.strip()][-1]
    assert last == "error: int8 stage1 agrees with float on only 50.0% of 8 images"
    assert json.loads(report.read_text()) == rejected  # written for a rejected run too


def test_a_labelled_image_that_does_not_load_is_left_out_with_a_line(labelled, exported_tiny, tmp_path):
    """The verification images are the user's: a broken one is named (``skipped ...``), not silently
    dropped, and the others are still compared."""
    from sacvit_deploy.quantize.quantize_export import _verification_batches
    from sacvit_deploy.runtime.exit_calibration import find_labelled_images

    folder = tmp_path / "labelled"
    shutil.copytree(labelled, folder)
    broken = next(folder.iterdir()) / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    m = Manifest.load(exported_tiny)
    found = find_labelled_images(folder, m.num_classes, m.class_names, "index")
    logs: list[str] = []
    batches = list(_verification_batches(None, found, m.preprocess, logs.append))  # type: ignore[arg-type]
    assert sum(images.shape[0] for images, _ in batches) == len(found.paths) - 1 == 8
    assert len(logs) == 1 and logs[0].startswith("skipped ") and "broken.png" in logs[0], logs
