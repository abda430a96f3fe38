"""The profile use case as a Python user calls it: ``profile_artifacts(...) -> ProfileRun``.

On a real export (tests/conftest.py), with few rounds. The report is held against facts computed
here without the package's runners: stage 1's confidences from an ONNX Runtime session of our own
on stage1.onnx, the exit rule ``confidence >= threshold``, and the FLOPs table. No timing is asserted.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.flops import FlopsReport
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.runtime.images import collect_images, load_image, preprocess
from sacvit_deploy.runtime.profile_artifacts import ProfileRun, profile_artifacts

ROOT = Path(__file__).resolve().parents[1]
FAST = {"backend": "onnxruntime", "warmup": 0}


def stage1_confidence(folder: Path, images: np.ndarray) -> np.ndarray:
    """Stage 1's confidences from a session of our own (not the package's runner), image by image."""
    session = ort.InferenceSession(str(folder / "stage1.onnx"), providers=["CPUExecutionProvider"])
    return np.array(
        [session.run(["confidence"], {"image": images[i : i + 1]})[0][0] for i in range(len(images))],
        dtype=np.float32,
    )


def real_images(folder: Path, images_dir: Path) -> np.ndarray:
    """The photos preprocessed one at a time (the pool decodes them in batches, in threads)."""
    cfg = Manifest.load(folder).preprocess
    return np.stack([preprocess(load_image(p), cfg) for p in collect_images([images_dir])])


def robust_threshold(confidence: np.ndarray) -> float:
    """A threshold in the widest gap between sorted confidences near the middle (no sample sits
    within rounding distance of it, whatever the batch or the CPU)."""
    c = np.sort(confidence)
    mid = range(max(1, len(c) // 4), min(len(c), 3 * len(c) // 4 + 1))
    i = max(mid, key=lambda k: c[k] - c[k - 1])
    assert c[i] - c[i - 1] > 1e-3, c  # a real split: images on both sides
    return float((c[i] + c[i - 1]) / 2)


@pytest.fixture(scope="module")
def with_baseline(tmp_path_factory):
    from tests.fakes.fixtures import shared_export

    return shared_export(tmp_path_factory)[1]  # tiny SAC-ViT with baseline.onnx, read-only here


def test_real_images_exit_rate_and_flops_match_independent_facts(exported_tiny, images_dir):
    pool = real_images(exported_tiny, images_dir)
    confidence = stage1_confidence(exported_tiny, pool)
    threshold = robust_threshold(confidence)
    exits = float(np.mean(confidence >= threshold))
    assert 0 < exits < 1
    n = len(pool)  # 8 photos: 8 rounds of batch 1, and of batch 4 (2 distinct batches), cover them evenly
    logged, steps = [], []
    run = profile_artifacts(
        exported_tiny,
        batch_sizes=[1, 4, 4],
        images=images_dir,
        threshold=threshold,
        iters=n,
        log=logged.append,
        advance=steps.append,
        **FAST,
    )
    assert isinstance(run, ProfileRun) and run.folder == exported_tiny
    report = run.report
    assert report["settings"]["batch_sizes"] == [1, 4]  # repeats dropped, order kept
    assert [b["batch"] for b in report["batches"]] == [1, 4] == [b.batch for b in run.batches]
    th = report["threshold"]
    assert th["value"] == threshold and th["requested_exit_rate"] is None
    assert th["pool_size"] == n == report["settings"]["pool_size"]
    assert th["pool_exit_rate"] == pytest.approx(exits, abs=1e-12)
    for b in report["batches"]:  # every pool image timed equally often: the pool's exit rate
        assert b["rounds"] == n and b["exit_rate"] == pytest.approx(exits, abs=1e-12)
        assert all(st["n"] == n for st in b["latency"].values())
        assert b["speedup"] is None and "baseline" not in b["latency"]

    flops = FlopsReport.of(Manifest.load(exported_tiny).model)
    fl = report["flops"]
    assert (fl["baseline"], fl["stage1"], fl["stage2"]) == (flops.baseline, flops.stage1, flops.stage2)
    for b in report["batches"]:
        g = b["gflops_per_image"]
        assert g["measured"] == pytest.approx(flops.stage1 + (1 - exits) * flops.stage2)
        assert g["baseline"] == flops.baseline and g["expected"] is None

    assert sum(steps) == 2 * (0 + n)  # advance(1) per round, warm-up included
    assert logged[0] == "backend: " + run.backend and "onnxruntime" in run.backend
    assert any(line.startswith("power: ") for line in logged)  # the Jetson probe's note
    assert f"batch 4: 0 warm-up + {n} timed rounds ..." in logged
    assert report["settings"]["images"] == f"{images_dir} ({n} images)"
    text = "\n".join(run.lines)
    assert "=== batch 1:" in text and "=== batch 4:" in text and "summary (medians)" in text
    assert run.lines[-1].startswith("load average") or run.lines[-2].startswith("load average")
    assert set(report["environment"]["load_average"]) == {"before", "after"}


def test_exit_rate_sets_the_threshold_on_the_synthetic_pool(exported_tiny, tmp_path):
    largest = 6
    run = profile_artifacts(exported_tiny, batch_sizes=[2, largest], exit_rate=0.5, iters=1, seed=3, **FAST)
    th = run.report["threshold"]
    # The documented pool: `largest` N(0, 1) images of the manifest's size, from numpy's seeded generator.
    size = Manifest.load(exported_tiny).preprocess.input_size
    noise = np.random.default_rng(3).standard_normal((largest, 3, size, size), dtype=np.float32)
    confidence = stage1_confidence(exported_tiny, noise)
    assert th["pool_size"] == largest and th["requested_exit_rate"] == 0.5
    assert th["pool_exit_rate"] == float(np.mean(confidence >= th["value"])) == 0.5  # 3 of 6 exit
    assert np.sum(confidence >= th["value"]) == run.split.n_exit == 3
    gap = np.min(np.abs(confidence - th["value"]))
    assert gap > 0  # the threshold lies between confidences, never on one
    assert run.report["settings"]["seed"] == 3 and "seed 3" in run.report["settings"]["images"]
    flops = FlopsReport.of(Manifest.load(exported_tiny).model)
    assert run.report["flops"]["expected_at_requested"] == pytest.approx(flops.expected(0.5))

    # What --json writes: the report, whole.
    written = run.write_json(tmp_path / "p.json")
    assert json.loads(written.read_text()) == json.loads(json.dumps(run.report))


def test_baseline_is_timed_beside_the_pipeline(with_baseline):
    run = profile_artifacts(with_baseline, batch_sizes=[2], baseline=True, iters=2, **FAST)
    (b,) = run.report["batches"]
    assert len(b["samples_ms"]["baseline"]) == 2 and b["speedup"] > 0
    assert b["latency_ratio"] == pytest.approx(1 / b["speedup"])
    assert set(run.report["environment"]["runners"]) == {"stage1", "stage2", "baseline"}
    assert any("vs baseline:" in line for line in run.lines)


def test_baseline_missing_is_one_line(exported_tiny):
    with pytest.raises(SacvitError) as e:
        profile_artifacts(exported_tiny, baseline=True, **FAST)
    msg = str(e.value)
    assert "no baseline.onnx" in msg and "--baseline`" in msg and str(exported_tiny) in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "options, message",
    [
        ({"images": "x", "synthetic": True}, "--images and --synthetic exclude each other; give one"),
        ({"threshold": 0.5, "exit_rate": 0.5}, "--threshold and --exit-rate exclude each other; give one"),
        ({"threshold": math.nan}, "finite"),
        ({"threshold": -0.5}, ">= 0"),
        ({"exit_rate": 1.5}, "--exit-rate 1.5: give a fraction in [0, 1]"),
        ({"exit_rate": math.nan}, "give a fraction in [0, 1]"),
        ({"batch_sizes": [1, 0]}, "--batch-sizes 0: give a batch size from 1 to 1024"),
        ({"batch_sizes": [2000]}, "--batch-sizes 2000: give a batch size from 1 to 1024"),
        ({"batch_sizes": []}, "give one or more batch sizes"),
        ({"batch_sizes": "1,8"}, "give one or more batch sizes"),
        ({"iters": 0}, "--iters 0: give a whole number >= 1"),
        ({"warmup": -1}, "--warmup -1: give a whole number >= 0"),
        ({"seed": -1}, "--seed -1: give a whole number >= 0"),
        ({"iters": 2.5}, "--iters 2.5: give a whole number"),
    ],
)
def test_bad_options_are_one_line_before_anything_opens(tmp_path, options, message):
    # The folder does not exist: an option error must come first, before the folder is opened.
    with pytest.raises(ValueError) as e:
        profile_artifacts(tmp_path / "nope", **options)
    assert isinstance(e.value, SacvitError)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_image_folder_errors_and_skipped_files(exported_tiny, images_dir, tmp_path):
    with pytest.raises(SacvitError, match="not a folder; give a folder of images, or use --synthetic"):
        profile_artifacts(exported_tiny, images=tmp_path / "none", **FAST)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_text("no image")
    with pytest.raises(SacvitError, match="none of the 1 images could be read"):
        profile_artifacts(exported_tiny, images=bad, **FAST)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    first = collect_images([images_dir])[0]
    (mixed / first.name).write_bytes(first.read_bytes())
    (mixed / "broken.jpg").write_text("no image")
    logged = []
    run = profile_artifacts(exported_tiny, batch_sizes=[3], images=mixed, iters=1, log=logged.append, **FAST)
    assert any(line.startswith("skipped ") and "broken.jpg" in line for line in logged)
    assert run.report["settings"]["images"] == f"{mixed} (1 images, cycled to 3)"
    assert run.report["threshold"]["pool_size"] == 3


def test_the_command_prints_what_the_use_case_returns(exported_tiny, tmp_path, monkeypatch):
    from sacvit_deploy.cli import app

    use_case = importlib.import_module("sacvit_deploy.runtime.profile_artifacts")
    calls = []
    manifest = Manifest.load(exported_tiny)

    def fake(artifacts, **kwargs):
        calls.append((artifacts, kwargs))
        kwargs["log"]("a note [red]not markup[/]")
        return ProfileRun(
            {"schema": "x", "n": 1},
            ["line one [bold]x[/]", "line two"],
            exported_tiny,
            manifest,
            "b",
            None,
            [],
        )

    monkeypatch.setattr(use_case, "profile_artifacts", fake)
    out_json = tmp_path / "p.json"
    args = ["profile", "--artifacts", str(exported_tiny), "--batch-sizes", "1,8,8", "--exit-rate", "0.25"]
    result = CliRunner().invoke(app, [*args, "--backend", "onnxruntime", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    ((artifacts, kwargs),) = calls
    assert artifacts == exported_tiny and kwargs["batch_sizes"] == [1, 8] and kwargs["exit_rate"] == 0.25
    assert kwargs["backend"] == "onnxruntime" and kwargs["device"] is None  # plain values, not enums
    assert "line one [bold]x[/]\nline two\n" in result.stdout  # printed as written, never as markup
    assert "a note [red]not markup[/]" in result.stderr
    assert json.loads(out_json.read_text()) == {"schema": "x", "n": 1}


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )


def test_importing_the_use_case_loads_no_torch():
    r = _python("import sys, sacvit_deploy.runtime.profile_artifacts\nprint('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"


def test_profile_runs_where_torch_is_not_installed(exported_tiny):
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None  # every `import torch` now fails
        from sacvit_deploy.runtime.profile_artifacts import profile_artifacts
        run = profile_artifacts({str(exported_tiny)!r}, batch_sizes=[2], exit_rate=0.5, iters=1,
                                warmup=0, backend="onnxruntime")
        print(json.dumps(run.report["threshold"]))
        """
    )
    r = _python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    th = json.loads(r.stdout.strip().splitlines()[-1])
    assert th["pool_size"] == 2 and th["pool_exit_rate"] == 0.5
