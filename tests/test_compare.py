"""The one comparator and the one exit rule, on weights scaled like a trained model's.

Both directions: ONNX Runtime vs PyTorch in float32 must PASS on trained-scale logits (std >= 4,
max |logit| >= 15) with the default tolerance, and real bugs put into the exported graphs (one
block's weights perturbed, a shifted position embedding, stage-2 inputs swapped) must FAIL.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from sacvit_deploy.core.compare import Criteria, NamedRunner, Tolerance, compare, mixed_threshold
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.exit_rule import ExitRule, check_threshold, exit_mask
from sacvit_deploy.core.manifest import Manifest, sha256_file
from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.export.verify import VerificationError, verify_export
from tests.conftest import make_tiny, trained_scale


def _logit_stats(model):
    x = torch.randn(16, 3, model.cfg.img_size, model.cfg.img_size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model(x, 2.0).logits  # stage 2 for all
        logits1 = model.forward_stage1(x).logits
    return float(logits1.std()), float(torch.cat([logits, logits1]).abs().max())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SAC-ViT with trained-scale logits, exported WITHOUT verification (the tests verify)."""
    model = trained_scale(make_tiny("sacvit", seed=3, num_classes=100))
    std, top = _logit_stats(model)
    assert std >= 4.0 and top >= 15.0, (std, top)  # the premise of this file
    folder = tmp_path_factory.mktemp("trained")
    export_artifacts(model, folder, ExportOptions(baseline=True), "sacvit", verify=None)
    return model, folder


def _copy(folder, tmp_path):
    dst = tmp_path / "export"
    shutil.copytree(folder, dst)
    return dst


def _tamper(folder, graph: str, edit) -> None:
    """Apply ``edit`` to a graph and re-record its sha256, as a buggy exporter would have written it."""
    path = folder / graph
    proto = onnx.load(str(path))
    edit(proto.graph)
    onnx.save(proto, str(path))
    m = Manifest.load(folder)
    role = graph.removesuffix(".onnx")
    m.graphs[role].sha256 = sha256_file(path)
    m.graphs[role].size = path.stat().st_size
    m.save(folder)


def _replace_init(graph, name: str, fn) -> None:
    for i, t in enumerate(graph.initializer):
        if t.name == name:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t)), name))
            return
    raise AssertionError(f"no initializer {name}")


def test_trained_scale_passes_with_default_tolerance(trained, tmp_path):
    model, folder = trained
    report = verify_export(_copy(folder, tmp_path), Manifest.load(folder), model)
    assert report["passed"] and (report["atol"], report["rtol"]) == (1e-4, 1e-4)
    worst = max(r["max_abs_diff"] for r in report["rows"])
    limits = [r["limit"] for r in report["rows"] if r["limit"] is not None]
    assert worst > 0 and min(limits) > 1e-4  # the limit really scales with the logits


def _block_weight(graph, block: int) -> str:
    for node in graph.node:
        if node.name == f"/blocks.{block}/mlp/fc1/MatMul":
            return node.input[1]
    raise AssertionError("no fc1 MatMul")


BUGS = {
    # 1% noise on one block's MLP weights
    "perturbed block": (
        "stage1.onnx",
        lambda g: _replace_init(
            g,
            _block_weight(g, 1),
            lambda w: w + 0.01 * w.std() * np.random.default_rng(0).standard_normal(w.shape).astype(w.dtype),
        ),
    ),
    # the position embedding shifted by one token (an off-by-one in the token order)
    "wrong position embedding": (
        "stage1.onnx",
        lambda g: _replace_init(
            g, "model.pos_embed_list.0", lambda p: np.concatenate([p[:, :1], np.roll(p[:, 1:], 1, axis=1)], 1)
        ),
    ),
    # stage 2's two stage-1 feature inputs swapped (same shapes in this config)
    "swapped stage inputs": (
        "stage2.onnx",
        lambda g: _swap_inputs(g, "nontarget_tokens", "target_features"),
    ),
}


def _swap_inputs(graph, a: str, b: str) -> None:
    for node in graph.node:
        node.input[:] = [b if x == a else a if x == b else x for x in node.input]


@pytest.mark.parametrize("bug", list(BUGS))
def test_real_bugs_fail_on_trained_scale(trained, tmp_path, bug):
    model, folder = trained
    copy = _copy(folder, tmp_path)
    graph, edit = BUGS[bug]
    _tamper(copy, graph, edit)
    with pytest.raises(VerificationError, match="differs from PyTorch on") as info:
        verify_export(copy, Manifest.load(copy), model)
    assert "limit" in str(info.value) or "agree" in str(info.value)


def test_init_scale_still_passes(tmp_path):
    model = make_tiny("lf-vit", seed=5)
    folder = tmp_path / "e"
    result = export_artifacts(
        model, folder, ExportOptions(), "lf-vit", verify=lambda f, m: verify_export(f, m, model)
    )
    assert result.manifest.verification.passed


# ---- the comparator on synthetic runners ---------------------------------------------------------------
def _side(name, logits1, conf, index, logits2):
    def stage1(feed):
        n = feed["image"].shape[0]
        k = index.shape[1]
        return {
            "logits": logits1[:n],
            "confidence": conf[:n],
            "target_index": index[:n],
            "nontarget_tokens": np.zeros((n, 2, 4), np.float32),
            "target_features": np.zeros((n, k, 4), np.float32),
        }

    def stage2(feed):
        # rows of the samples fed, recognised by the image's first pixel (its sample id)
        ids = feed["image"][:, 0, 0, 0].astype(int)
        return {"logits": logits2[ids]}

    return NamedRunner(name, {"stage1": stage1, "stage2": stage2})


def _images(n):
    x = np.zeros((n, 3, 2, 2), np.float32)
    x[:, 0, 0, 0] = np.arange(n)
    return x


def test_comparator_exempts_decisions_within_a_hair():
    n = 4
    logits1 = np.array([[10.0, 0], [0, 10], [5, 5.00001], [1, 0]], np.float32)
    logits2 = np.array([[0, 3.0], [3, 0], [1, 0], [0, 1]], np.float32)
    conf = np.array([0.9, 0.2, 0.50001, 0.7], np.float32)
    index = np.array([[0, 1]] * n, np.int32)
    ref = _side("ref", logits1, conf, index, logits2)
    # the candidate: a near-tie top-1 flips (sample 2) and a confidence a hair under the threshold
    got_logits1 = logits1.copy()
    got_logits1[2] = [5.00001, 5]
    got_conf = conf.copy()
    got_conf[2] = 0.49999
    cand = _side("cand", got_logits1, got_conf, index, logits2)
    rows = compare(ref, cand, _images(n), threshold=0.5)
    assert all(r.passed for r in rows), [r.reason for r in rows if not r.passed]
    assert rows[0].undecided >= 1


def test_comparator_fails_on_a_clear_decision_and_on_nan():
    n = 3
    logits1 = np.array([[10.0, 0], [0, 10], [4, 0]], np.float32)
    logits2 = np.array([[0, 3.0], [3, 0], [1, 0]], np.float32)
    conf = np.array([0.9, 0.2, 0.6], np.float32)
    index = np.array([[0, 1]] * n, np.int32)
    ref = _side("ref", logits1, conf, index, logits2)
    flipped = conf.copy()
    flipped[2] = 0.3  # clearly on the other side of 0.5
    rows = compare(ref, _side("c", logits1, flipped, index, logits2), _images(n), 0.5)
    assert not rows[0].passed and "confidence" in rows[0].reason
    assert any(
        r.check.startswith("pipeline@") and not r.passed and "exit decisions" in r.reason for r in rows
    )
    nan = logits1.copy()
    nan[0, 0] = np.nan
    rows = compare(ref, _side("c", nan, conf, index, logits2), _images(n), 0.5)
    assert not rows[0].passed
    other_index = np.array([[0, 2]] * n, np.int32)
    rows = compare(ref, _side("c", logits1, conf, other_index, logits2), _images(n), 0.5)
    assert not rows[0].passed and "target-token sets" in rows[0].reason
    # reduced precision: selection is reported, not gated; decisions need min_agreement
    rows = compare(
        ref, _side("c", logits1, conf, other_index, logits2), _images(n), 0.5, "x", Criteria(None, 0.99, 1e-3)
    )
    assert rows[0].passed and rows[0].selection_agreement == 0.0


def test_tolerance_is_scaled_by_the_reference():
    t = Tolerance()
    assert t.limit(np.array([15.0, -3.0])) == pytest.approx(1e-4 + 15 * 1e-4)
    with pytest.raises(SacvitError):
        Tolerance(atol=-1.0)
    with pytest.raises(SacvitError):
        Tolerance(rtol=float("nan"))


def test_mixed_threshold_splits_between_samples():
    th = mixed_threshold(np.array([0.1, 0.9, 0.4, 0.6], np.float32))
    assert th == pytest.approx(0.5)


# ---- the exit rule ---------------------------------------------------------------------------------------
def test_exit_rule_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    conf = rng.random(1000).astype(np.float32)
    conf[:5] = [0.0, 0.5, 1.0, 0.5, np.nextafter(np.float32(0.5), np.float32(0))]
    for th in (0.0, 0.5, 0.76, 1.0, 1.01):
        rule = ExitRule(th)
        np_hard = rule.hard_indices(conf)
        t_hard = rule.hard_indices(torch.from_numpy(conf))
        assert np.array_equal(np_hard, t_hard.numpy())
        assert np.array_equal(rule.exits(conf), conf >= np.float32(th))
        assert np.array_equal(rule.stage(conf), np.where(conf >= np.float32(th), 1, 2))
    assert ExitRule(0.0).exit_rate(conf) == 1.0 and ExitRule(1.01).exit_rate(conf) == 0.0
    table = exit_mask(conf[None, :], np.array([[0.2], [0.8]], np.float32))
    assert table.shape == (2, 1000)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, "x", None, True])
def test_exit_rule_refuses_bad_thresholds(bad):
    with pytest.raises(SacvitError):
        check_threshold(bad)


def test_bls_model_copy_matches_the_exit_rule():
    """The Triton BLS model runs without this package and keeps its own copy of the rule."""
    import importlib.util
    import sys
    import types
    from pathlib import Path

    import sacvit_deploy.triton

    path = Path(sacvit_deploy.triton.__file__).parent / "bls_model.py"
    spec = importlib.util.spec_from_file_location("bls_model_under_test", path)
    module = importlib.util.module_from_spec(spec)
    stub = types.ModuleType("triton_python_backend_utils")  # only imported, not used by the rule
    saved = sys.modules.get(stub.__name__)
    sys.modules[stub.__name__] = stub
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop(stub.__name__)
        else:
            sys.modules[stub.__name__] = saved
    rng = np.random.default_rng(1)
    conf = rng.random(257).astype(np.float32)
    conf[:3] = [0.5, 0.0, 1.0]
    for th in (0.0, 0.3, 0.5, 0.76, 1.0, 1.5):
        thresholds = np.full(conf.shape, th, np.float32)
        want = ExitRule(th).hard_indices(conf)
        assert np.array_equal(np.flatnonzero(module.goes_to_stage2(conf, thresholds)), want), th
        t = torch.from_numpy(conf)
        got = torch.nonzero(module.goes_to_stage2(t, torch.from_numpy(thresholds))).flatten()
        assert np.array_equal(got.numpy(), want), th


@pytest.mark.slow
def test_trained_scale_deit_small_lfvit_checkpoint_exports_with_defaults(tmp_path):
    """The README's first export command on a DeiT-S checkpoint in the official LF-ViT layout whose
    head gives trained-scale logits: it used to fail at 1.7e-4 over a fixed 1e-4."""
    from typer.testing import CliRunner

    from sacvit_deploy.cli import app
    from sacvit_deploy.model import SACViT, make_config

    torch.manual_seed(0)
    model = trained_scale(SACViT(make_config("deit_small_224", "lf-vit")).eval())
    std, top = _logit_stats(model)
    assert std >= 4.0 and top >= 15.0, (std, top)
    ckpt = tmp_path / "lf-vit_deit_small.pth"
    torch.save({"model": model.state_dict(), "flops": 1.7, "anytime_classification": []}, ckpt)
    result = CliRunner().invoke(
        app, ["export", str(ckpt), "--format", "lf-vit", "--out", str(tmp_path / "export")]
    )
    assert result.exit_code == 0, result.output
    report = Manifest.load(tmp_path / "export").verification.to_dict()
    assert report["passed"]
    # Each row against its own limit (the limits scale with each output's magnitude).
    limited = [r for r in report["rows"] if r["limit"] is not None]
    assert limited, report["rows"]
    for r in limited:
        assert r["max_abs_diff"] < r["limit"], r
    assert max(r["max_abs_diff"] for r in limited) > 0  # really compared, not the same numbers


def test_check_run_uses_the_comparator(exported_tiny, tmp_path):
    """`check --run`: ONNX Runtime vs the folder's own weights; a graph bug exits 2."""
    from typer.testing import CliRunner

    from sacvit_deploy.cli import app

    ok = CliRunner().invoke(app, ["check", str(exported_tiny), "--trt", "10", "--run"])
    assert ok.exit_code == 0, ok.output
    assert "ONNX Runtime (CPU) vs PyTorch (model.safetensors)" in ok.output and "FAIL" not in ok.output
    copy = _copy(exported_tiny, tmp_path)
    _tamper(copy, "stage2.onnx", lambda g: _swap_inputs(g, "nontarget_tokens", "target_features"))
    bad = CliRunner().invoke(app, ["check", str(copy), "--trt", "10", "--run"])
    assert bad.exit_code == 2 and "FAIL" in bad.output, bad.output
