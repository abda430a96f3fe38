"""`sacvit-deploy calibrate`: the threshold sweep on a hand-made set with known answers, labelled
folders, consistency with the pipeline, and the command (including --write and its errors)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.model.flops import FlopsReport
from sacvit_deploy.runtime.exit_calibration import (
    Predictions,
    Target,
    UnreachableTarget,
    calibrate,
    choose,
    evaluate,
    find_labelled_images,
    grid,
    predict_both_stages,
    write_csv,
)
from sacvit_deploy.runtime.images import sample_images
from sacvit_deploy.runtime.loader import open_pipeline
from tests.fakes.fixtures import labelled_export

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"

# ---- a hand-made set --------------------------------------------------------------------------------
# Ten samples, sorted by confidence. k = how many exit (the k most confident). Correct answers:
#   k:        0  1  2  3  4  5  6  7  8  9  10
#   correct:  9  9  9  9  8  9  9  8  8  7  6     (stage 1 alone: 6/10, stage 2 alone: 9/10)
# Thresholds t give k = #(confidence >= t): (0.97, 1] -> 0, (0.92, 0.97] -> 1, ..., (0.45, 0.55] -> 6,
# (0.35, 0.45] -> 7, (0.25, 0.35] -> 8, (0.15, 0.25] -> 9, [0, 0.15] -> 10.
CONF = [0.15, 0.25, 0.35, 0.45, 0.55, 0.62, 0.72, 0.82, 0.92, 0.97]
RIGHT1 = [0, 0, 1, 0, 1, 1, 0, 1, 1, 1]
RIGHT2 = [1, 1, 1, 1, 1, 0, 1, 1, 1, 1]
FLOPS = FlopsReport(baseline=4.0, stage1=1.0, stage2=2.0, stage2_reference=2.5)  # cost = 1 + 2 * (1 - k/10)


@pytest.fixture
def pred() -> Predictions:
    labels = [3] * 10
    return Predictions(
        confidence=CONF,
        pred1=[3 if r else 5 for r in RIGHT1],
        pred2=[3 if r else 7 for r in RIGHT2],
        labels=labels,
    )


def test_grid_is_exact_decimals():
    g = grid(0.01)
    assert len(g) == 101 and g[0] == 0.0 and g[-1] == 1.0 and 0.3 in g and 0.07 in g
    assert grid(0.001, 0.495, 0.505) == [round(0.495 + i / 1000, 3) for i in range(11)]
    assert grid(0.001, -0.5, 0.002) == [0.0, 0.001, 0.002]


def test_evaluate_matches_the_table(pred):
    pts = {p.threshold: p for p in evaluate(pred, FLOPS, [0.0, 0.15, 0.16, 0.5, 0.62, 0.63, 0.98, 1.0])}
    assert {t: p.n_exit for t, p in pts.items()} == {
        0.0: 10,
        0.15: 10,
        0.16: 9,
        0.5: 6,
        0.62: 5,
        0.63: 4,
        0.98: 0,
        1.0: 0,
    }  # a threshold equal to a confidence lets it exit (>=, in float32 on both sides)
    assert {t: p.n_correct for t, p in pts.items()} == {
        0.0: 6,
        0.15: 6,
        0.16: 7,
        0.5: 9,
        0.62: 9,
        0.63: 8,
        0.98: 9,
        1.0: 9,
    }
    assert pts[0.5].gflops == pytest.approx(1.8) and pts[0.5].exit_rate == 0.6
    assert pred.stage1_accuracy == 0.6 and pred.stage2_accuracy == 0.9


def test_target_accuracy_lowest_cost(pred):
    # accuracy >= 0.9 for k in {0,1,2,3,5,6}; the cheapest is k=6, thresholds (0.45, 0.55]:
    # the middle of that range on the union of the coarse and fine grids
    cal = calibrate(pred, FLOPS, Target("accuracy", 0.9))
    c = cal.chosen
    assert c is not None and c.threshold == 0.505
    assert (c.n_exit, c.accuracy, c.gflops) == (6, 0.9, pytest.approx(1.8))
    assert cal.stage1_accuracy == 0.6 and cal.stage2_accuracy == 0.9
    assert 0.505 in [p.threshold for p in cal.points] and len(cal.points) > 101  # fine grid added
    # 0.8: k in {0..10} except 9, 10 -> the cheapest is k=8, thresholds (0.25, 0.35]
    assert calibrate(pred, FLOPS, Target("accuracy", 0.8)).chosen.threshold == 0.305


def test_target_gflops_most_accurate_then_cheaper(pred):
    # <= 1.5 GFLOPs: k >= 8 (k=8: 1.4, 0.8) beats k=9 (0.7), k=10 (0.6)
    c = calibrate(pred, FLOPS, Target("gflops", 1.5)).chosen
    assert c.n_exit == 8 and c.threshold == 0.305 and c.gflops == pytest.approx(1.4)
    # <= 2.0: k=5 and k=6 are both 9/10 correct; the cheaper (k=6) wins
    c = calibrate(pred, FLOPS, Target("gflops", 2.0)).chosen
    assert c.n_exit == 6 and c.threshold == 0.505
    # everything affordable: the most accurate (9/10) and, among those, the cheapest (k=6)
    assert calibrate(pred, FLOPS, Target("gflops", 10.0)).chosen.n_exit == 6


@pytest.mark.parametrize(
    "rate, k, threshold",
    [(0.55, 6, 0.505), (0.6, 6, 0.505), (0.65, 7, 0.405), (0.0, 0, 0.99), (1.0, 10, 0.075)],
)
def test_target_exit_rate_closest_not_below(pred, rate, k, threshold):
    c = calibrate(pred, FLOPS, Target("exit_rate", rate)).chosen
    assert c.n_exit == k and c.exit_rate >= rate and c.threshold == threshold


def test_unreachable_targets_say_the_best(pred):
    with pytest.raises(UnreachableTarget, match=r"the best is 0\.9000 \(threshold"):
        calibrate(pred, FLOPS, Target("accuracy", 0.95))
    with pytest.raises(UnreachableTarget, match=r"the cheapest is 1 GFLOPs/image \(threshold 0"):
        calibrate(pred, FLOPS, Target("gflops", 0.9))
    # choose() alone on a sweep that never reaches the exit rate
    with pytest.raises(UnreachableTarget, match="highest exit rate on the sweep is 0.000"):
        choose(evaluate(pred, FLOPS, [0.99, 1.0]), Target("exit_rate", 0.5))


@pytest.mark.parametrize(
    "kind, value, message",
    [
        ("accuracy", 80.0, "fraction in"),
        ("exit_rate", -0.1, "fraction in"),
        ("gflops", 0.0, "positive"),
        ("x", 1, "unknown"),
    ],
)
def test_bad_targets(kind, value, message):
    with pytest.raises(SacvitError, match=message):
        Target(kind, value)


def test_summary_rows_and_csv(pred, tmp_path):
    cal = calibrate(pred, FLOPS, Target("accuracy", 0.9), extra=[0.76])
    rows = cal.summary_rows(0.05, [0.76])
    ths = [p.threshold for p in rows]
    assert ths == sorted(ths) and 0.505 in ths and 0.76 in ths and len(ths) == 21 + 2
    path = write_csv(cal, tmp_path / "curve.csv")
    table = list(csv.DictReader(path.open()))
    assert len(table) == len(cal.points)
    chosen = [r for r in table if r["chosen"] == "1"]
    assert [r["threshold"] for r in chosen] == ["0.505"] and float(chosen[0]["accuracy"]) == 0.9
    with pytest.raises(SacvitError, match="cannot write the curve"):
        write_csv(cal, tmp_path / "no" / "such" / "dir.csv")


def test_predictions_need_matching_lengths():
    with pytest.raises(ValueError):
        Predictions([0.5, 0.6], [1], [1, 2], [1, 2])


# ---- labelled folders ----------------------------------------------------------------------------
def _image(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)


def test_labelled_by_names_and_by_sorted_order(tmp_path):
    _image(tmp_path / "dog" / "a.png")
    _image(tmp_path / "cat" / "deeper" / "b.png")
    _image(tmp_path / "cat" / "c.jpg")
    _image(tmp_path / "loose.png")
    (tmp_path / "empty").mkdir()
    by_name = find_labelled_images(tmp_path, 5, ["bird", "dog", "cat", "empty", "fish"])
    assert by_name.mapping == "names" and by_name.folders == {"cat": 2, "dog": 1, "empty": 3}
    assert sorted(zip([p.name for p in by_name.paths], by_name.labels, strict=True)) == [
        ("a.png", 1),
        ("b.png", 2),
        ("c.jpg", 2),
    ]
    assert by_name.empty_folders == ["empty"] and by_name.ignored_files == 1
    assert "by name" in by_name.describe()
    by_order = find_labelled_images(tmp_path, 5, None, "sorted")  # folder i = class i
    assert by_order.mapping == "sorted" and by_order.folders == {"cat": 0, "dog": 1, "empty": 2}
    assert "sorted order" in by_order.describe()


def test_folder_names_that_are_not_class_names_are_refused(tmp_path):
    # Ten digit folders for a 1000-class ImageNet model: no silent "sorted folder i = class i".
    for d in range(10):
        _image(tmp_path / "digits" / str(d) / "a.png")
    imagenet = [f"n{i:05d}" for i in range(1000)]
    with pytest.raises(SacvitError) as info:
        find_labelled_images(tmp_path / "digits", 1000, imagenet)
    message = str(info.value)
    assert "digits/0: folder name '0' is not one of the model's 1000 class names" in message
    assert "--folder-labels index" in message and "sorted" in message
    with pytest.raises(SacvitError, match="has no class names to match"):
        find_labelled_images(tmp_path / "digits", 10, None)
    by_index = find_labelled_images(tmp_path / "digits", 1000, imagenet, "index")
    assert by_index.mapping == "index" and by_index.folders == {str(d): d for d in range(10)}
    with pytest.raises(SacvitError, match=r"folder name '9' is not a class index 0-8"):
        find_labelled_images(tmp_path / "digits", 9, None, "index")


def test_labelled_folder_errors(tmp_path):
    with pytest.raises(SacvitError, match="no such folder"):
        find_labelled_images(tmp_path / "missing", 3, None)
    _image(tmp_path / "flat" / "a.png")
    with pytest.raises(SacvitError, match=r"no class sub-folders \(1 loose images\).*ImageFolder"):
        find_labelled_images(tmp_path / "flat", 3, None)
    for name in ("cat", "dgo"):
        _image(tmp_path / "typo" / name / "a.png")
    with pytest.raises(
        SacvitError,
        match=r"typo/dgo: folder name 'dgo' is not one of the model's 3 class names \('cat', 'dog', 'fish', ...\); rename",
    ):
        find_labelled_images(tmp_path / "typo", 3, ["cat", "dog", "fish"])
    # the folder is named, with the fix
    for name in ("a", "b", "c", "d"):
        _image(tmp_path / "many" / name / "x.png")
    with pytest.raises(
        SacvitError, match=r"many/d: folder maps to no class: 4 class folders for a model with 3"
    ):
        find_labelled_images(tmp_path / "many", 3, None, "sorted")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    with pytest.raises(SacvitError, match="hold no images"):
        find_labelled_images(tmp_path / "hollow", 3, None, "sorted")


# ---- against the real pipeline ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny export and an ImageFolder of the bundled photos (rotated copies), plus a bad file."""
    return labelled_export(tmp_path_factory, "calibrate", ("class_a", "class_b", "class_c"), per_class=4)


def test_predictions_agree_with_the_pipeline(workdir):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 128, 128)
    opened = open_pipeline(workdir / "export", backend="onnxruntime", device="cpu")
    with opened.pipeline as pipe:
        pred = predict_both_stages(pipe.stage1, pipe.stage2, [(x[:4], [0] * 4), (x[4:], [1] * 2)])
        for t in (0.0, float(np.median(pred.confidence)) + 1e-4, 1.01):
            out = pipe.run(x.numpy(), t)
            exits = pred.confidence >= t
            combined = np.where(exits, pred.pred1, pred.pred2)
            np.testing.assert_array_equal(combined, out.logits.argmax(-1))
            np.testing.assert_array_equal(exits, out.stage == 1)


def _calibrate(workdir, *args):
    return runner.invoke(
        app,
        [
            *("calibrate", "--images", str(workdir / "labelled"), "--artifacts", str(workdir / "export")),
            *("--folder-labels", "sorted", *args),
        ],
    )


def test_calibrate_write_updates_the_manifest(workdir, tmp_path):
    before = Manifest.load(workdir / "export")
    result = _calibrate(
        workdir,
        *("--target-exit-rate", "0.5", "--write", "--batch-size", "5"),
        *("--csv", str(tmp_path / "c.csv"), "--plot", str(tmp_path / "c.png")),
    )
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output and "1 unreadable skipped" in result.output
    assert "mapped by sorted order" in result.output
    after = Manifest.load(workdir / "export")
    after.verify(workdir / "export", "graphs")  # still loads and verifies
    assert after.calibration is not None
    rec = after.calibration.to_dict()
    assert after.exit_threshold == rec["threshold"] != before.exit_threshold
    assert rec["target"] == {"kind": "exit_rate", "value": 0.5} and rec["exit_rate"] >= 0.5
    assert rec["images"] == 12 and rec["previous_threshold"] == before.exit_threshold
    assert rec["label_mapping"] == "sorted" and rec["unreadable_images"] == 1
    assert f"chosen threshold {after.exit_threshold:.4f} " in result.stdout  # one format throughout
    assert after.graphs.keys() == before.graphs.keys() and after.model == before.model
    # the pipeline now runs at the calibrated threshold
    assert open_pipeline(workdir / "export", backend="onnxruntime").pipeline.threshold == rec["threshold"]
    raw = json.loads((workdir / "export" / "manifest.json").read_text())
    assert raw["calibration"]["threshold"] == raw["exit_threshold"]
    assert len(list(csv.DictReader((tmp_path / "c.csv").open()))) > 101
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)
    assert "curve CSV:" in result.output and "plot:" in result.output


def test_calibrate_without_target_prints_the_curve_only(workdir):
    before = (workdir / "export" / "manifest.json").read_text()
    result = _calibrate(workdir)
    assert result.exit_code == 0, result.output
    assert "threshold" in result.stdout and "<- manifest's current" in result.stdout
    assert "curve CSV: not written (give --csv FILE)" in result.output
    assert (workdir / "export" / "manifest.json").read_text() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target-accuracy", "0.5", "--target-gflops", "1"], "exclude each other"),
        (["--write"], "--write needs a target"),
        (["--target-accuracy", "80"], "give a fraction in [0, 1]"),
        (["--target-gflops", "0.0000001"], "is unreachable: the cheapest is"),
    ],
)
def test_calibrate_errors(workdir, args, message):
    before = (workdir / "export" / "manifest.json").read_text()
    result = _calibrate(workdir, *args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert (workdir / "export" / "manifest.json").read_text() == before


def test_calibrate_unlabelled_folder(workdir, tmp_path):
    for p in sample_images()[:2]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--images",
            str(tmp_path),
            "--artifacts",
            str(workdir / "export"),
            "--target-exit-rate",
            "0.5",
        ],
    )
    assert result.exit_code == 1 and "no class sub-folders" in result.output


def test_manifest_without_calibration_field_still_loads(workdir):
    raw = json.loads((workdir / "export" / "manifest.json").read_text())
    raw.pop("calibration", None)  # a manifest written before the field existed
    m = Manifest.from_dict(raw)
    assert m.calibration is None
    assert m.to_dict()["calibration"] is None


def test_calibrate_refuses_unmapped_folders_in_one_line(workdir):
    # The tiny model has no class names: the folders' meaning must be given, not guessed.
    result = runner.invoke(
        app, ["calibrate", "--images", str(workdir / "labelled"), "--artifacts", str(workdir / "export")]
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "--folder-labels index" in lines[-1]
    assert "Traceback" not in result.output
