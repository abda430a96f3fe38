"""`sacvit-deploy profile`: statistics, exit-rate thresholds, the JSON schema, the plot, the Jetson
path with fakes (see test_jetson.py) and the CLI errors. No timing is asserted."""

from __future__ import annotations

import importlib
import json
import math
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.runtime.profiling import (
    SCHEMA,
    SCHEMA_VERSION,
    BatchProfile,
    LatencyStats,
    pool_batches,
    threshold_for_exit_rate,
)
from tests.fakes.fixtures import shared_export
from tests.test_jetson import fake_jetson

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny export with baseline.onnx (the session's shared one: read-only here) and one without."""
    model, with_baseline = shared_export(tmp_path_factory)
    without = tmp_path_factory.mktemp("profile") / "without"
    export_artifacts(model, without, ExportOptions(), "sacvit")
    return {"with": with_baseline, "without": without}


# ---- statistics -----------------------------------------------------------------------------------
def test_latency_stats_known_values():
    s = LatencyStats.of([0.004, 0.001, 0.003, 0.002])
    assert (s.n, s.median, s.mean, s.min, s.max) == (4, 0.0025, 0.0025, 0.001, 0.004)
    assert s.p90 == pytest.approx(0.0037)  # linear between order statistics: 3 + 0.7 * (4 - 3)
    assert s.p99 == pytest.approx(0.00397)
    assert s.throughput(8) == pytest.approx(3200.0)
    d = s.to_dict()
    assert d["median_ms"] == pytest.approx(2.5) and d["n"] == 4


def test_latency_stats_one_sample_and_none():
    s = LatencyStats.of([0.5])
    assert s.median == s.p90 == s.p99 == s.mean == s.min == s.max == 0.5
    with pytest.raises(ValueError):
        LatencyStats.of([])
    assert LatencyStats.of([0.0]).throughput(4) == 0.0


# ---- exit-rate thresholds --------------------------------------------------------------------------
def _exits(conf, th):
    return int((torch.tensor(conf, dtype=torch.float32) >= th).sum())  # the pipeline's comparison


def test_threshold_midway_between_two_confidences():
    conf = [0.4, 0.1, 0.3, 0.2]
    split = threshold_for_exit_rate(conf, 0.5)
    assert (split.n_exit, split.n, split.exit_rate) == (2, 4, 0.5)
    assert split.threshold == pytest.approx(0.25)
    assert split.threshold not in [float(np.float32(c)) for c in conf]
    assert _exits(conf, split.threshold) == 2


@pytest.mark.parametrize("rate, k", [(0.0, 0), (0.05, 0), (0.1, 1), (0.77, 6), (0.9, 7), (1.0, 8)])
def test_threshold_hits_the_rounded_count(rate, k):
    conf = torch.linspace(0.2, 0.9, 8)
    split = threshold_for_exit_rate(conf, rate)
    assert split.n_exit == k == _exits(conf.tolist(), split.threshold)
    assert split.requested == rate


def test_exit_rate_zero_and_one_with_saturated_confidences():
    conf = [1.0, 0.5, 1.0]
    none = threshold_for_exit_rate(conf, 0.0)
    assert none.n_exit == 0 and none.threshold > 1.0 and _exits(conf, none.threshold) == 0
    every = threshold_for_exit_rate(conf, 1.0)
    assert every.n_exit == 3 and every.threshold == pytest.approx(0.25) and _exits(conf, every.threshold) == 3


def test_ties_take_the_nearest_count_that_splits():
    conf = [0.5, 0.5, 0.5, 0.9]
    split = threshold_for_exit_rate(conf, 0.5)  # 2 cannot be split off (tie); 1 can, 3 cannot
    assert split.n_exit == 1 and split.threshold == pytest.approx(0.7)
    assert _exits(conf, split.threshold) == 1
    same = threshold_for_exit_rate([0.3, 0.3, 0.3], 0.34)  # all equal: all or nothing
    assert same.n_exit == 0


def test_adjacent_floats_are_a_tie():
    a = np.float32(0.6)
    b = np.nextafter(a, np.float32(1))
    split = threshold_for_exit_rate([float(a), float(b)], 0.5)
    assert split.n_exit in (0, 2)  # no float32 lies strictly between them
    assert split.n_exit == 0  # equally near: the smaller count
    assert _exits([float(a), float(b)], split.threshold) == split.n_exit


def test_batch_of_one():
    assert threshold_for_exit_rate([0.7], 0.4).n_exit == 0
    one = threshold_for_exit_rate([0.7], 0.6)
    assert one.n_exit == 1 and one.threshold == pytest.approx(0.35)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_exit_rate_out_of_range(bad):
    with pytest.raises(SacvitError, match="outside"):
        threshold_for_exit_rate([0.5], bad)


def test_pool_batches_wrap_around_and_stay_distinct():
    pool = torch.arange(5).float().view(5, 1, 1, 1)
    batches = pool_batches(pool, 2, 10)
    assert len(batches) == 5  # offsets repeat after 5 / gcd(5, 2) batches
    assert [b.flatten().tolist() for b in batches[:3]] == [[0, 1], [2, 3], [4, 0]]
    assert len(pool_batches(pool, 5, 10)) == 1


def test_overhead_is_the_median_of_paired_ratios():
    # Round by round the pipeline costs 10% more than its stages back to back (load varies by 20x).
    e2e = [1.1, 2.2, 11.0, 0.55, 0.66]
    ideal = [1.0, 2.0, 10.0, 0.5, 0.6]
    bp = BatchProfile(2, 5, 1, {"end_to_end": e2e, "ideal": ideal}, 5, 10)
    assert bp.overhead == pytest.approx(0.10)
    shuffled = BatchProfile(2, 5, 1, {"end_to_end": e2e, "ideal": [0.6, 10.0, 0.5, 2.0, 1.0]}, 5, 10)
    assert shuffled.overhead != pytest.approx(0.10)  # pairs matter, not just the two distributions


# ---- the command ----------------------------------------------------------------------------------
STATS_KEYS = {"n", "median_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"}


def _check_schema(report: dict, sizes: list[int], baseline: bool) -> None:
    assert report["schema"] == SCHEMA and report["schema_version"] == SCHEMA_VERSION
    assert set(report) >= {
        "created",
        "environment",
        "model",
        "settings",
        "threshold",
        "flops",
        "batches",
        "notes",
    }
    env = report["environment"]
    for key in ("backend", "device", "provider", "backend_choice", "cpu_model", "host_device_copies"):
        assert isinstance(env[key], str), key
    assert env["backend"] == "onnxruntime" and env["provider"] == "cpu" and env["device"] == "cpu"
    assert "not applicable" in env["host_device_copies"]
    assert {"sacvit-deploy", "torch", "onnxruntime", "tensorrt", "python"} <= set(env["versions"])
    assert set(env["runners"]) == {"stage1", "stage2", *(("baseline",) if baseline else ())}
    assert env["runners"]["stage1"]["provider"] == "CPUExecutionProvider"
    assert isinstance(env["threads"], int | None) and isinstance(env["cpu_count"], int)
    th = report["threshold"]
    assert isinstance(th["value"], float) and 0 <= th["pool_exit_rate"] <= 1
    assert report["settings"]["batch_sizes"] == sizes
    fl = report["flops"]
    assert all(isinstance(fl[k], float) for k in ("baseline", "stage1", "stage2", "stage2_reference"))
    assert [b["batch"] for b in report["batches"]] == sizes
    for b in report["batches"]:
        rows = {
            "stage1",
            "gate",
            "stage2",
            "pipeline_staged",
            "end_to_end",
            "stage1_alone",
            "stage2_alone",
            "ideal",
        }
        if baseline:
            rows.add("baseline")
        assert set(b["latency"]) == rows == set(b["samples_ms"])
        assert all(len(v) == report["settings"]["iters"] for v in b["samples_ms"].values())
        for st in b["latency"].values():
            assert set(st) == STATS_KEYS and st["n"] == report["settings"]["iters"]
            assert all(isinstance(st[k], float) and st[k] >= 0 for k in STATS_KEYS - {"n"})
            assert st["min_ms"] <= st["median_ms"] <= st["p90_ms"] <= st["p99_ms"] <= st["max_ms"]
        assert all(isinstance(v, float) and v >= 0 for v in b["throughput_ips"].values())
        assert 0 <= b["exit_rate"] <= 1 and isinstance(b["overhead"], float)
        g = b["gflops_per_image"]
        assert g["measured"] == pytest.approx(fl["stage1"] + (1 - b["exit_rate"]) * fl["stage2"])
        if baseline:
            assert isinstance(b["speedup"], float) and b["speedup"] > 0
            assert b["latency_ratio"] == pytest.approx(1 / b["speedup"])
        else:
            assert b["speedup"] is None


def test_profile_cli_json_schema_and_plot(folders, tmp_path):
    out_json, out_png = tmp_path / "p.json", tmp_path / "p.png"
    args = [
        "profile",
        "--artifacts",
        str(folders["with"]),
        *("--backend", "onnxruntime"),  # the schema below is ONNX Runtime's (auto may pick OpenVINO)
        "--iters",
        "2",
        "--warmup",
        "1",
        "--batch-sizes",
        "1,3",
    ]
    args += [
        "--synthetic",
        "--baseline",
        "--exit-rate",
        "0.5",
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    _check_schema(report, [1, 3], baseline=True)
    assert report["threshold"]["requested_exit_rate"] == 0.5
    assert report["threshold"]["pool_exit_rate"] == pytest.approx(2 / 3)  # 3 pool images: 1.5 rounds to 2
    assert report["flops"]["expected_at_requested"] == pytest.approx(
        report["flops"]["stage1"] + 0.5 * report["flops"]["stage2"]
    )
    assert report["environment"]["jetson"] is None and any("not a Jetson" in n for n in report["notes"])
    assert out_png.read_bytes().startswith(PNG) and out_png.stat().st_size > 1000
    text = result.stdout
    assert "=== batch 1:" in text and "=== batch 3:" in text and "summary (medians)" in text
    assert "end to end" in text and "ideal: stage 1 + 2, back to back" in text and "vs baseline:" in text
    assert "rows: 'in pipeline'" in text and "columns: latency statistics" in text  # the legend
    assert "GFLOPs/image:" in text


def test_profile_cli_real_images_and_threshold(folders, tmp_path):
    from sacvit_deploy.runtime.images import sample_images

    images = tmp_path / "imgs"
    images.mkdir()
    for p in sample_images()[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "bad.png").write_text("no")
    out_json = tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            *(
                "profile",
                "--artifacts",
                str(folders["without"]),
                *("--backend", "onnxruntime"),
                "--images",
                str(images),
                "--threshold",
                "0.5",
            ),
            *("--iters", "1", "--warmup", "0", "--batch-sizes", "4", "--json", str(out_json)),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    _check_schema(report, [4], baseline=False)
    assert report["threshold"]["value"] == 0.5 and report["threshold"]["requested_exit_rate"] is None
    assert report["settings"]["pool_size"] == 4  # 2 readable images cycled to fill the batch
    assert "cycled to 4" in report["settings"]["images"]
    assert "bad.png" in result.output


def test_profile_jetson_path_with_fakes(folders, tmp_path, monkeypatch):
    # the use case probes the Jetson: patch the name in its module
    use_case = importlib.import_module("sacvit_deploy.runtime.profile_artifacts")
    monkeypatch.setattr(use_case, "Jetson", lambda: fake_jetson())  # the name profile_artifacts calls
    out_json = tmp_path / "j.json"
    result = runner.invoke(
        app,
        [
            *("profile", "--artifacts", str(folders["with"]), "--iters", "1", "--warmup", "0"),
            *("--batch-sizes", "2", "--baseline", "--json", str(out_json)),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    jet = report["environment"]["jetson"]
    assert jet["model"].startswith("NVIDIA Jetson Orin Nano") and jet["nvpmodel"]["mode"] == "15W"
    power = report["batches"][0]["power"]
    for who in ("pipeline", "baseline"):
        assert power[who]["mean_mw"] == 5012.0 and power[who]["rail"] == "VDD_IN"
        assert power[who]["energy_per_image_mj"] == pytest.approx(
            5012.0 * power[who]["seconds"] / power[who]["images"]
        )
    assert "power: pipeline 5012 mW avg (VDD_IN" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--images", "x", "--synthetic"], "exclude each other"),
        (["--threshold", "0.5", "--exit-rate", "0.5"], "exclude each other"),
        (["--exit-rate", "1.5"], "give a fraction in [0, 1]"),
        (["--batch-sizes", "1,zero"], "--batch-sizes '1,zero': give positive integers"),
        (["--batch-sizes", "0"], "give positive integers"),
        (["--seed", "-1"], "--seed -1: give a whole number >= 0"),
    ],
)
def test_profile_cli_option_errors(folders, args, message):
    result = runner.invoke(app, ["profile", "--artifacts", str(folders["with"]), *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_profile_cli_baseline_missing(folders):
    result = runner.invoke(app, ["profile", "--artifacts", str(folders["without"]), "--baseline"])
    assert result.exit_code == 1
    assert "no baseline.onnx" in result.output and "--baseline`" in result.output


def test_profile_cli_missing_folder_and_images(folders, tmp_path):
    result = runner.invoke(app, ["profile", "--artifacts", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no such artifact folder" in result.output
    result = runner.invoke(
        app, ["profile", "--artifacts", str(folders["with"]), "--images", str(tmp_path / "none")]
    )
    assert result.exit_code == 1 and "not a folder" in result.output


def test_plot_without_matplotlib_is_one_line(folders, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = runner.invoke(
        app, ["profile", "--artifacts", str(folders["with"]), "--plot", str(tmp_path / "p.png")]
    )
    assert result.exit_code == 1
    assert "pip install 'sacvit-deploy[plot]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "p.png").exists()


def test_image_pool_takes_the_first_images_and_names_each_unreadable_one(folders, tmp_path, monkeypatch):
    """profile's pool loads through the one image-folder loader: the first max(largest batch,
    MAX_POOL) files in sorted order, each unreadable one named, the rest cycled to fill the largest batch."""
    from sacvit_deploy.core.manifest import Manifest
    from sacvit_deploy.runtime import profile_artifacts
    from sacvit_deploy.runtime.images import sample_images

    monkeypatch.setattr(profile_artifacts, "MAX_POOL", 2)
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "0bad.png").write_text("no")  # sorted first: inside the first 3
    for p in sample_images()[:3]:
        (images / p.name).write_bytes(p.read_bytes())
    cfg = Manifest.load(folders["with"]).model.preprocess
    lines = []
    pool, source = profile_artifacts.image_pool(images, cfg, 3, log=lines.append)  # first 3 files
    using, skipped = sorted(lines)  # "--images: ..." sorts before "skipped ..."
    assert using == "--images: using the first 3 of 4 images"
    assert skipped.startswith("skipped ") and "0bad.png: not an image" in skipped
    assert pool.shape == (3, 3, cfg.input_size, cfg.input_size) and pool.dtype == np.float32
    assert source == f"{images} (2 images, cycled to 3)"
    np.testing.assert_array_equal(pool[2], pool[0])
