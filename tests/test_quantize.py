"""`sacvit-deploy quantize`: INT8 Q/DQ graphs from a tiny export, run by ONNX Runtime, checked for
TensorRT, built with the fake TensorRT on 8.6, 10.x and 11.x, and used by infer / calibrate / profile."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.engine.build import EngineBuildError
from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.export.trt_compat import check_folder_versions, check_model
from sacvit_deploy.quantize.artifacts import QuantizeOptions, load_calibration_images, quantize_artifacts
from sacvit_deploy.quantize.compare import compare_folders
from sacvit_deploy.quantize.qdq import (
    KEPT_ATTENTION,
    KEPT_HEAD,
    KEPT_SCORE_PATH,
    METHODS,
    QuantizeError,
    plan_nodes,
)
from tests.conftest import make_tiny
from tests.fakes.fixtures import build, install_fake_tensorrt, shared_export
from tests.fakes.pictures import make_images

runner = CliRunner()


@pytest.fixture(scope="module")
def float_export(tmp_path_factory):
    return shared_export(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    make_images(folder, count=12)
    return folder


@pytest.fixture(scope="module")
def int8(float_export, calib, tmp_path_factory):
    """The tiny export quantized through the CLI, with its verification report."""
    out = tmp_path_factory.mktemp("q") / "export-int8"
    report = out.parent / "report.json"
    result = runner.invoke(
        app,
        [
            *("quantize", str(float_export), "--calib-images", str(calib), "--out", str(out)),
            *("--min-agreement", "0.5", "--json", str(report)),
        ],
    )
    assert result.exit_code == 0, result.output
    return out, result, json.loads(report.read_text())


def _batches(folder, manifest, n=None):
    import torch

    images = load_calibration_images(folder, manifest.preprocess, log=lambda _m: None).images[:n]
    yield torch.from_numpy(images), None


# ---- which nodes are quantized -------------------------------------------------------------------------
def test_plan_keeps_attention_scores_head_and_norms_float(float_export):
    m = onnx.load(str(float_export / "stage1.onnx"))
    plan = plan_nodes(m)
    ops = {n.name: n.op_type for n in m.graph.node}
    assert plan.quantize and all(ops[n] in ("MatMul", "Conv") for n in plan.quantize)
    assert any("qkv" in n for n in plan.quantize) and any("fc2" in n for n in plan.quantize)
    assert plan.kept[KEPT_HEAD] == ["/head/Gemm"]
    assert all(ops[n] == "MatMul" for n in plan.kept[KEPT_ATTENTION])
    assert plan.kept[KEPT_SCORE_PATH]  # the window-sum MatMul of the token selection
    quantized = set(plan.quantize)
    assert not any(ops[n] in ("LayerNormalization", "Softmax") for n in quantized)
    # --ops MatMul leaves the patch embedding (Conv) float; --quantize-head takes the head
    assert "Conv" not in {ops[n] for n in plan_nodes(m, ("MatMul",)).quantize}
    assert "/head/Gemm" in plan_nodes(m, quantize_head=True).quantize


# ---- the int8 folder -----------------------------------------------------------------------------------
def test_quantize_writes_qdq_graphs_and_a_manifest(int8, float_export, calib):
    out, result, report = int8
    assert "Verification: int8 (QDQ) vs float" in result.stdout and "target-set agree" in result.stdout
    m = Manifest.load(out)
    m.verify(out)
    assert set(m.graphs) == {"stage1", "stage2", "baseline"} and m.weights is None
    q = m.quantization
    assert q.precision == "int8" and q.format == "QDQ"
    assert q.details["calibration"]["count"] == 12 and len(q.details["calibration"]["files_sha256"]) == 64
    assert q.float_graphs["stage1"] == Manifest.load(float_export).graphs["stage1"].sha256
    assert q.details["verification"] == report and report["passed"]
    # The one comparator's rows: the early exit at the manifest's threshold and at one splitting the images.
    checks = [r["check"] for r in report["rows"]]
    assert checks[:3] == ["stage1", "stage2", "pipeline@0.500"] and checks[-1] == "baseline"
    assert len(checks) == 5 and checks[3].startswith("pipeline@")
    for role, entry in m.graphs.items():
        proto = onnx.load(str(out / entry.file))
        kinds = {n.op_type for n in proto.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "LayerNormalization", "Softmax"} <= kinds
        assert entry.info["precision"] == "int8" and q.details["graphs"][role]["per_channel_weights"] > 0
        # every weight layer that is quantized reads an int8 initializer through a DequantizeLinear
        inits = {i.name: i for i in proto.graph.initializer}
        dq_inputs = [n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"]
        assert any(inits[name].data_type == TensorProto.INT8 for name in dq_inputs if name in inits)
        assert entry.file.endswith(".onnx") and entry.size < Manifest.load(float_export).graphs[role].size
    # the manifest section survives a load / save round trip; float manifests do not carry it
    m.save(out)
    assert Manifest.load(out).quantization == q
    assert "quantization" not in json.loads((float_export / "manifest.json").read_text())


def test_calibration_record_identifies_the_images(float_export, calib, tmp_path):
    cfg = Manifest.load(float_export).preprocess
    a = load_calibration_images(calib, cfg, log=lambda _m: None).record()
    other = tmp_path / "c"
    shutil.copytree(calib, other)
    (other / "img0.png").write_bytes((calib / "img1.png").read_bytes())
    b = load_calibration_images(other, cfg, log=lambda _m: None).record()
    assert a["count"] == b["count"] == 12
    assert a["files_sha256"] != b["files_sha256"] and a["data_sha256"] != b["data_sha256"]
    assert load_calibration_images(calib, cfg, limit=5, log=lambda _m: None).images.shape[0] == 5


def test_comparison_gate_passes_a_copy_and_fails_another_model(float_export, calib, tmp_path):
    m = Manifest.load(float_export)
    same = compare_folders(float_export, m, float_export, m, _batches(calib, m), "test", 1.0)
    assert same["passed"] and all(r["max_abs_diff"] == 0 and r["top1_agreement"] == 1 for r in same["rows"])
    other = tmp_path / "other"  # the same architecture, other weights: disagrees
    export_artifacts(make_tiny("sacvit", seed=1), other, ExportOptions(baseline=True), "sacvit")
    mo = Manifest.load(other)
    diff = compare_folders(float_export, m, other, mo, _batches(calib, m), "test", 0.95)
    assert not diff["passed"] and any(not r["passed"] for r in diff["rows"])
    assert diff["rows"][0]["relative_diff"] > 0.1


def test_quantize_refusals_are_one_line_errors(int8, float_export, calib, tmp_path):
    out = int8[0]
    cases = [
        (
            ["quantize", str(out), "--calib-images", str(calib), "--out", str(tmp_path / "a")],
            "already an int8",
        ),
        (["quantize", str(float_export), "--calib-images", str(tmp_path / "none")], "no such folder"),
        (
            ["quantize", str(float_export), "--calib-images", str(calib), "--ops", "Add"],
            "--ops Add: choose among MatMul, Gemm, Conv",
        ),
        (
            ["quantize", str(float_export), "--calib-images", str(calib), "--out", str(float_export)],
            "is the artifact folder",  # the output policy of every command (cli._paths)
        ),
    ]
    for args, text in cases:
        result = runner.invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and lines[-1].startswith("error:") and text in lines[-1], result.output
        assert "Traceback" not in result.output


def test_failed_agreement_writes_nothing(float_export, calib, tmp_path):
    m = Manifest.load(float_export)
    calibration = load_calibration_images(calib, m.preprocess, log=lambda _m: None)

    def strict(staging, manifest):
        report = compare_folders(float_export, m, staging, manifest, _batches(calib, m), "test", 1.0)
        assert report["rows"][0]["max_abs_diff"] > 0  # int8 is not bit-identical to float
        raise QuantizeError("agreement below 100%")

    out = tmp_path / "q"
    with pytest.raises(QuantizeError, match="agreement below"):
        quantize_artifacts(float_export, out, calibration, QuantizeOptions(), verify=strict)
    assert not out.exists()  # the folder it created for the output is gone too (nothing half-written)


# ---- TensorRT: the static check and the fake builds ------------------------------------------------------
def test_check_passes_the_int8_export_on_trt_10_and_11(int8):
    results = check_folder_versions(int8[0], ["8.6", "10", "11"])
    for version, roles in results.items():
        for role, problems in roles.items():
            assert not [p for p in problems if p.is_error], (version, role, problems)
            assert not [p for p in problems if p.rule.startswith("qdq")], (version, role)
    result = runner.invoke(app, ["check", str(int8[0]), "--trt", "10,11"])
    assert result.exit_code == 0, result.output


def _qdq_model(
    zp_type=TensorProto.INT8, zp_value=0, per_channel_activation=False, opset=17, const_scale=True, block=0
):
    """x (activation) -> Q -> DQ -> MatMul with a DQ'd int8 weight (per channel, axis 1)."""
    w = numpy_helper.from_array(np.ones((4, 3), np.int8), "w")
    w_scale = numpy_helper.from_array(np.full(3, 0.1, np.float32), "w_scale")
    w_zp = numpy_helper.from_array(np.zeros(3, np.int8), "w_zp")
    n = 4 if per_channel_activation else None
    scale = numpy_helper.from_array(np.full(n, 0.1, np.float32) if n else np.array(0.1, np.float32), "s")
    zp_np = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}[zp_type]
    zp = numpy_helper.from_array(np.full(n, zp_value, zp_np) if n else np.array(zp_value, zp_np), "zp")
    inits = [w, w_scale, w_zp, zp] + ([scale] if const_scale else [])
    q_attrs = {"axis": 1} if per_channel_activation else {}
    if block:
        q_attrs["block_size"] = block
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q", **q_attrs),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq", **q_attrs),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wd"], name="dqw", axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])]
    if not const_scale:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize(
    ("kwargs", "rule", "text"),
    [
        ({}, None, ""),
        ({"zp_type": TensorProto.UINT8, "zp_value": 128}, "qdq-dtype", "quantizes to UINT8"),
        ({"zp_value": 3}, "qdq-zero-point", "zero point is not 0"),
        ({"per_channel_activation": True}, "qdq-per-channel", "per-channel quantization of an activation"),
        ({"const_scale": False}, "qdq-scale", "computed at run time"),
        ({"opset": 12}, "qdq-per-channel", "needs opset 13+"),
        ({"opset": 21, "block": 2}, "qdq-block", "blocked quantization"),
    ],
)
def test_qdq_rules(kwargs, rule, text):
    model = _qdq_model(**kwargs)
    for version in ("8.5", "8.6", "10", "11"):
        problems = [p for p in check_model(model, version) if p.rule.startswith("qdq")]
        if rule is None:
            assert problems == [], (version, problems)
            continue
        if kwargs.get("opset") == 21 and version in ("8.5", "8.6", "10"):
            continue  # opset 21 is outside those parsers' range anyway (reported as "opset")
        assert any(p.rule == rule and text in p.message and p.is_error for p in problems), (version, problems)


def test_qdq_rules_axis_and_int32_bias():
    model = _qdq_model()
    dqw = next(n for n in model.graph.node if n.name == "dqw")
    dqw.attribute[0].i = 0  # 3 scales for axis 0 of size 4
    assert any(
        p.rule == "qdq-axis" and "3 scales for axis 0 of size 4" in p.message
        for p in check_model(model, "10")
    )
    bias = numpy_helper.from_array(np.zeros(3, np.int32), "b")
    bias_scale = numpy_helper.from_array(np.array(0.01, np.float32), "b_scale")
    model.graph.initializer.extend([bias, bias_scale])
    model.graph.node.append(helper.make_node("DequantizeLinear", ["b", "b_scale"], ["bd"], name="dqb"))
    assert any(p.rule == "qdq-dtype" and "INT32" in p.message for p in check_model(model, "11"))


@pytest.mark.parametrize(
    ("version", "strongly_typed", "int8_flag"),
    [("8.6.1", False, True), ("10.3.0", True, False), ("11.0.0", True, False)],
)
def test_build_engine_builds_the_qdq_graphs(int8, tmp_path, monkeypatch, version, strongly_typed, int8_flag):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, version)
    result = build(int8[0], tmp_path / "engines")
    builds = fake.state.builds
    assert len(builds) == 3 and all(b["qdq"] and b["calibration"] is None for b in builds)
    assert all(b["strongly_typed"] is strongly_typed for b in builds)
    assert all(("INT8" in b["flags"]) is int8_flag and "FP16" not in b["flags"] for b in builds)
    assert not fake.called("Config.int8_calibrator") and not fake.called("Config.set_calibration_profile")
    t = result.manifest.tensorrt
    assert (
        t.precision == "int8-qdq" and t.parity["passed"] and "explicit quantization" in t.build["int8_path"]
    )
    assert result.manifest.quantization == Manifest.load(int8[0]).quantization


def test_build_engine_refuses_int8_or_fp16_on_a_qdq_export(int8, calib, tmp_path, monkeypatch):
    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    with pytest.raises(EngineBuildError, match="already INT8.*without --int8"):
        build(int8[0], tmp_path / "e", int8=True, calib_images=calib)
    with pytest.raises(EngineBuildError, match="already INT8.*without --fp16"):
        build(int8[0], tmp_path / "e", fp16=True)


# ---- the runtime commands on the int8 folder --------------------------------------------------------------
def test_infer_profile_calibrate_run_the_int8_folder(int8, calib, tmp_path):
    out = int8[0]
    result = runner.invoke(app, ["infer", str(calib), "--artifacts", str(out), "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    assert "img0.png" in result.stdout and "onnxruntime" in result.output.lower()

    labelled = tmp_path / "labelled"
    for i, p in enumerate(sorted(calib.glob("*.png"))[:6]):
        (labelled / str(i % 2)).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, labelled / str(i % 2) / p.name)
    result = runner.invoke(
        app,
        [
            *("calibrate", "--images", str(labelled), "--artifacts", str(out), "--backend", "onnxruntime"),
            *("--folder-labels", "index"),
        ],
    )
    assert result.exit_code == 0, result.output

    report = tmp_path / "p.json"
    result = runner.invoke(
        app,
        [
            *("profile", "--artifacts", str(out), "--backend", "onnxruntime", "--batch-sizes", "2"),
            *("--synthetic", "--warmup", "1", "--iters", "2", "--json", str(report)),
        ],
    )
    assert result.exit_code == 0, result.output
    profiled = json.loads(report.read_text())
    # Every report names an int8 folder as such (issue 24 point 5), with the load average beside it.
    assert result.stdout.startswith("precision: INT8 (Q/DQ graphs written by `sacvit-deploy quantize`")
    assert "load average (1 min):" in result.stdout
    assert set(profiled["environment"]["load_average"]) == {"before", "after"}


# ---- the bundled demo model (trained weights) ---------------------------------------------------------------
@pytest.mark.slow
def test_bundled_demo_model_int8_keeps_its_answers_and_exits(tmp_path):
    from sacvit_deploy.demo_assets import demo_model_path, demo_sample_images, sample_label
    from sacvit_deploy.model import load_checkpoint

    model = load_checkpoint(demo_model_path()).model
    export_artifacts(model, tmp_path / "export", ExportOptions(weights=False), "sacvit")
    samples = demo_sample_images()
    m = Manifest.load(tmp_path / "export")
    calibration = load_calibration_images(samples[0].parent, m.preprocess, log=lambda _m: None)
    reports = []

    def verify(staging, manifest):
        batches = _batches(samples[0].parent, m)
        reports.append(compare_folders(tmp_path / "export", m, staging, manifest, batches, "samples", 0.9))
        return reports[-1]

    quantize_artifacts(tmp_path / "export", tmp_path / "int8", calibration, QuantizeOptions(), verify=verify)
    rows = {r["check"]: r for r in reports[0]["rows"]}
    assert reports[0]["passed"] and rows["pipeline@0.610"]["exit_agreement"] == 1.0
    assert rows["stage1"]["relative_diff"] < 0.5  # trained weights: int8 error well under the logit spread

    import torch

    from sacvit_deploy.runtime.loader import open_pipeline

    opened = open_pipeline(tmp_path / "int8", backend="onnxruntime", device="cpu")
    with opened.pipeline as pipe:
        out = pipe.run(torch.from_numpy(calibration.images))
    names = [m.class_names[i] for i in out.logits.argmax(-1).tolist()]
    right = sum(n == sample_label(p) for n, p in zip(names, calibration.paths, strict=True))
    assert right >= 9, names
    expected = [1 if "_easy_" in p.name else 2 for p in calibration.paths]
    assert sum(int(s) == e for s, e in zip(out.stage, expected, strict=True)) >= 9


def test_cli_fails_on_a_broken_quantization_and_writes_nothing(float_export, calib, tmp_path, monkeypatch):
    """A plausible bug (weight scales off by 8x) must be caught by the real comparison."""
    from sacvit_deploy.quantize import artifacts

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
    result = runner.invoke(
        app, ["quantize", str(float_export), "--calib-images", str(calib), "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout and "Traceback" not in result.output
    last = [line for line in result.output.splitlines() if line.strip()][-1]
    assert (
        last.startswith("error: int8 ")
        and "agrees with float on only" in last
        and "nothing was written" in last
    )
    assert not (out / "manifest.json").exists() and not list(out.glob("*.onnx"))


# ---- every calibration method the CLI offers, end to end on the demo-size model -----------------------------
@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    from sacvit_deploy.demo_assets import demo_model_path
    from sacvit_deploy.model import load_checkpoint

    folder = tmp_path_factory.mktemp("demo") / "export"
    export_artifacts(load_checkpoint(demo_model_path()).model, folder, ExportOptions(weights=False), "sacvit")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_cli_method_quantizes_the_demo_model(method, demo_export, tmp_path):
    """The bundled 10 sample images make a short last calibration batch (8 + 2), which broke the
    histogram methods (entropy, percentile) inside onnxruntime.quantization (issue 24 point 14)."""
    from sacvit_deploy.demo_assets import demo_sample_images

    images = demo_sample_images()[0].parent
    out, report = tmp_path / "int8", tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            *("quantize", str(demo_export), "--calib-images", str(images), "--out", str(out)),
            *("--method", method, "--json", str(report)),
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert manifest.quantization.details["method"]["calibration"] == method
    rows = {r["check"]: r for r in json.loads(report.read_text())["rows"]}
    assert rows["pipeline@0.610"]["top1_agreement"] >= 0.9 and rows["pipeline@0.610"]["exit_agreement"] >= 0.9


def test_even_batches_keep_every_sample_once():
    from sacvit_deploy.quantize.qdq import even_batch, feed_batches

    for n, batch in ((10, 8), (12, 8), (7, 8), (13, 8), (3, 1)):
        size = even_batch(n, batch)
        parts = list(feed_batches({"x": np.arange(n)[:, None]}, size, fixed=False))
        assert {p["x"].shape for p in parts} == {(size, 1)} and size <= batch
        assert np.concatenate([p["x"] for p in parts])[:, 0].tolist() == list(range(n))
