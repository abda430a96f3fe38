"""build-engine against a fake TensorRT 8.5 / 8.6 / 10.x / 11.x: the exact builder calls per version.

The fake (tests/fakes/fake_tensorrt.py) records every call and checks its arguments; its engines run
the ONNX graphs with ONNX Runtime, so the parity check at the end of every build is real.
"""

from __future__ import annotations

import json

import onnx
import pytest

from sacvit_deploy.backends.trt_version import TrtVersion, engine_compatibility_problem
from sacvit_deploy.core.manifest import Manifest, Verification, sha256_file
from sacvit_deploy.engine.build import (
    BuildOptions,
    EngineBuildError,
    expected_hard_fraction,
    network_flags,
    stage2_opt_batch,
)
from tests.fakes.fake_tensorrt import fake_plan_header, make_fake_tensorrt
from tests.fakes.fixtures import build, install_fake_tensorrt, shared_export, tiny_export
from tests.fakes.pictures import make_images

VERSIONS = ["8.6.1", "10.3.0", "11.1.0"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return shared_export(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def export85(tmp_path_factory):
    return shared_export(tmp_path_factory, target_trt="8.5")[1]


def capture_plans(fake):
    """Wrap the fake builder so the test sees exactly what build_serialized_network returned."""
    plans = []
    original = fake.Builder.build_serialized_network

    def wrapper(self, network, config):
        plan = original(self, network, config)
        plans.append(plan)
        return plan

    fake.Builder.build_serialized_network = wrapper
    return plans


def onnx_of(plan: bytes):
    header = fake_plan_header(plan)
    blob = json.dumps(header).encode()
    return onnx.load_model_from_string(plan[8 + 4 + len(blob) :])


# ---- per version: flags, profiles, workspace, engines on disk --------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_fp32_build_calls_per_version(export, tmp_path, monkeypatch, version):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, version)
    plans = capture_plans(fake)
    result = build(export, tmp_path / "engines")

    expected_network_flags = {"8.6.1": ("EXPLICIT_BATCH",), "10.3.0": (), "11.1.0": ("STRONGLY_TYPED",)}[
        version
    ]
    assert fake.called("Builder.create_network") == [(expected_network_flags,)] * 3
    assert fake.called("Config.set_flag") == []  # FP32: no precision flags
    assert fake.called("Config.set_memory_pool_limit") == [("WORKSPACE", 4 << 30)] * 3
    assert fake.called("ILayer.precision") == []
    profiles = [p[0] for p in fake.called("Config.add_optimization_profile")]
    assert len(profiles) == 3
    stage1, stage2, baseline = profiles
    assert stage1 == {"image": ((1, 3, 128, 128), (8, 3, 128, 128), (32, 3, 128, 128))}
    # stage 2 is tuned for the expected hard share of the batch: ceil(0.23 * 8) = 2
    assert stage2["image"][1][0] == 2 and stage2["target_index"] == ((1, 8), (2, 8), (32, 8))
    assert set(stage2) == {"image", "target_index", "nontarget_tokens", "target_features"}
    assert baseline == stage1
    # one timing cache object, shared by the three builds
    assert len({args[0] for args in fake.called("Config.set_timing_cache")}) == 1

    # the engine files are exactly what the builder returned, nothing glued on
    out = tmp_path / "engines"
    assert sorted(p.name for p in out.iterdir()) == [
        "baseline.engine",
        "manifest.json",
        "stage1.engine",
        "stage2.engine",
    ]
    for role, plan in zip(("stage1", "stage2", "baseline"), plans, strict=True):
        assert (out / f"{role}.engine").read_bytes() == bytes(plan)
        assert onnx_of(bytes(plan)).SerializeToString() == (export / f"{role}.onnx").read_bytes()
    assert result.manifest.tensorrt.version == version
    assert result.manifest.tensorrt.build["network_flags"] == list(expected_network_flags)


def test_engines_manifest_contents(export, tmp_path, monkeypatch):
    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    out = tmp_path / "engines"
    build(export, out, fp16=True, workspace_gib=2.0, baseline=False)
    m = Manifest.load(out)
    m.verify(out, "engines")
    source = Manifest.load(export)
    assert m.graphs == {} and m.weights is None and set(m.engines) == {"stage1", "stage2"}
    assert m.model == source.model and m.exit_threshold == source.exit_threshold
    assert m.source["graphs"] == {r: source.graphs[r].sha256 for r in ("stage1", "stage2")}
    for role, entry in m.engines.items():
        assert entry.file == f"{role}.engine"
        assert (
            entry.sha256 == sha256_file(out / entry.file) and entry.size == (out / entry.file).stat().st_size
        )
        assert entry.inputs == source.graphs[role].inputs and entry.outputs == source.graphs[role].outputs
        assert entry.info["precision"] == "fp16" and entry.info["onnx_sha256"] == source.graphs[role].sha256
        assert entry.info["profiles"]["image"]["max"] == [32, 3, 128, 128]
    trt = m.tensorrt.to_dict()
    assert trt["gpu"] == "Fake GPU" and trt["compute_capability"] == "8.6" and trt["precision"] == "fp16"
    assert trt["workspace_bytes"] == 2 << 30 and trt["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert trt["version_compatible"] is False and trt["hardware_compat"] == "none" and trt["dla_core"] is None
    assert trt["platform_has_fast_fp16"] is True and trt["strongly_typed"] is False
    assert trt["stage2_opt_batch"]["value"] == 2 and trt["built"] and trt["build_seconds"] >= 0
    parity = trt["parity"]
    assert parity["passed"] and parity["reference"] == "ONNX Runtime (CPU)"
    assert {r["check"] for r in parity["rows"]} >= {"stage1", "stage2"}
    assert all(r["top1_agreement"] == 1.0 for r in parity["rows"])


# ---- FP16 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_fp16_up_to_10_uses_the_flag_and_pins_the_fp32_islands(export, tmp_path, monkeypatch, version):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, version)
    plans = capture_plans(fake)
    result = build(export, tmp_path / "engines", fp16=True)
    assert fake.called("Config.set_flag") == [("FP16",), ("OBEY_PRECISION_CONSTRAINTS",)] * 3
    # the graph stays float32: the engine is built from the exported bytes
    assert onnx_of(bytes(plans[0])).SerializeToString() == (export / "stage1.onnx").read_bytes()

    stage1_nodes = onnx.load(str(export / "stage1.onnx")).graph.node
    stage1_pinned = set(fake_plan_header(bytes(plans[0]))["fp32_layers"])
    must = {
        n.name for n in stage1_nodes if n.op_type in ("LayerNormalization", "Softmax", "ReduceMax", "TopK")
    }
    must |= {"/selector/ArgMax", "/selector/MatMul", "/blocks.1/attn/ReduceMean"}  # token-score path
    assert must <= stage1_pinned
    assert not stage1_pinned & {"/blocks.0/attn/qkv/MatMul", "/blocks.0/mlp/fc1/MatMul", "/head/Gemm"}
    # TopK layers: the float values output is pinned, the int32 indices are left alone
    outputs_typed = {(name, index) for name, index, dtype in fake.called("ILayer.set_output_type")}
    assert ("/selector/ArgMax", 0) in outputs_typed and ("/selector/ArgMax", 1) not in outputs_typed
    assert all(dtype == "FLOAT" for *_, dtype in fake.called("ILayer.set_output_type"))
    info = result.manifest.engines["stage1"].info
    assert info["fp32_layers"] == len(stage1_pinned)
    assert info["fp32_islands"] == {"gate": 2, "layernorm": 9, "softmax": 4, "token-score": 36}
    assert "OBEY_PRECISION_CONSTRAINTS" in result.manifest.tensorrt.build["fp16_path"]


def test_fp16_on_trt11_rewrites_the_onnx_and_builds_strongly_typed(export, tmp_path, monkeypatch):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "11.1.0")
    assert not hasattr(fake.BuilderFlag, "FP16") and not hasattr(
        fake.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS"
    )
    plans = capture_plans(fake)
    result = build(export, tmp_path / "engines", fp16=True)
    assert fake.called("Config.set_flag") == []
    assert fake.called("ILayer.precision") == [] and fake.called("ILayer.set_output_type") == []
    assert fake.called("Builder.create_network") == [(("STRONGLY_TYPED",),)] * 3
    graph = onnx_of(bytes(plans[0])).graph
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in graph.initializer}
    io_types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    assert io_types == {
        "image": onnx.TensorProto.FLOAT,
        "logits": onnx.TensorProto.FLOAT,
        "confidence": onnx.TensorProto.FLOAT,
        "target_index": onnx.TensorProto.INT32,
        "nontarget_tokens": onnx.TensorProto.FLOAT,
        "target_features": onnx.TensorProto.FLOAT,
    }
    info = result.manifest.engines["stage1"].info
    assert info["fp16_onnx"]["fp32_islands"] == {"gate": 2, "layernorm": 9, "softmax": 4, "token-score": 36}
    assert "fp32_layers" not in info
    trt = result.manifest.tensorrt.to_dict()
    assert trt["strongly_typed"] and "STRONGLY_TYPED" in trt["fp16_path"]
    assert trt["platform_has_fast_fp16"] is None  # no such query on 11.x
    assert trt["parity"]["passed"]  # the float16 graph itself ran in the fake engine


def test_no_fast_fp16_warns_and_strict_refuses(export, tmp_path, monkeypatch):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    fake.state.fast_fp16 = False
    result = build(export, tmp_path / "engines", fp16=True, baseline=False)
    assert any("no fast FP16" in w for w in result.warnings)
    assert fake.called("Config.set_flag")[0] == ("FP16",)  # built FP16 anyway, never silently FP32
    with pytest.raises(EngineBuildError, match="no fast FP16.*--strict"):
        build(export, tmp_path / "strict", fp16=True, strict=True)


# ---- INT8 ------------------------------------------------------------------------------------------
def test_int8_calibrates_each_engine_and_reuses_the_cache(export, tmp_path, monkeypatch):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    calib = tmp_path / "calib"
    make_images(calib, count=10)
    out = tmp_path / "engines"
    result = build(export, out, int8=True, fp16=True, calib_images=calib, baseline=False)
    assert fake.called("Config.set_flag")[:3] == [("FP16",), ("INT8",), ("OBEY_PRECISION_CONSTRAINTS",)]
    assert fake.called("Config.int8_calibrator") == [("IInt8EntropyCalibrator2",)] * 2
    # calibration profile: the calibration batch, fixed
    assert fake.called("Config.set_calibration_profile")[0][0] == {"image": ((8, 3, 128, 128),) * 3}
    builds = fake.state.builds
    assert [b["calibration"]["batches"] for b in builds] == [1, 1]  # 10 images, batches of 8
    assert builds[1]["calibration"]["inputs"] == [
        "image",
        "target_index",
        "nontarget_tokens",
        "target_features",
    ]
    caches = result.manifest.tensorrt.calibration["caches"]
    for role in ("stage1", "stage2"):
        assert (out / f"{role}.calib").is_file() and caches[role]["sha256"] == sha256_file(
            out / f"{role}.calib"
        )
        assert not caches[role]["reused"]
    assert result.manifest.tensorrt.precision == "int8+fp16"

    # same graphs, same images: the second build reads the caches instead of calibrating
    again = build(export, out, int8=True, fp16=True, calib_images=calib, baseline=False)
    assert all(c["reused"] for c in again.manifest.tensorrt.calibration["caches"].values())
    assert [b["calibration"]["from_cache"] for b in fake.state.builds[2:]] == [True, True]
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "stage1.calib",
        "stage1.engine",
        "stage2.calib",
        "stage2.engine",
    ]
    # other images: calibrated again
    make_images(tmp_path / "other", count=9, size=(150, 170))
    third = build(export, out, int8=True, calib_images=tmp_path / "other", baseline=False)
    assert not any(c["reused"] for c in third.manifest.tensorrt.calibration["caches"].values())


def test_int8_errors(export, tmp_path, monkeypatch):
    install_fake_tensorrt(monkeypatch, tmp_path, "11.1.0")
    make_images(tmp_path / "calib", count=2)
    with pytest.raises(EngineBuildError, match=r"--int8 is not supported on TensorRT 11.1.0: .*Q/DQ"):
        build(export, tmp_path / "e", int8=True, calib_images=tmp_path / "calib")
    with pytest.raises(EngineBuildError, match="--int8 needs --calib-images DIR"):
        build(export, tmp_path / "e", int8=True)


# ---- timing cache, profiles ----------------------------------------------------------------------
def test_timing_cache_is_loaded_and_saved(export, tmp_path, monkeypatch):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    cache = tmp_path / "caches" / "sacvit.timing"
    build(export, tmp_path / "engines", timing_cache=cache, baseline=False)
    assert cache.is_file() and fake.called("Config.create_timing_cache") == [(0,)]
    assert [b["timing_cache_hit"] for b in fake.state.builds] == [False, False]
    build(export, tmp_path / "engines", timing_cache=cache, baseline=False)
    assert fake.called("Config.create_timing_cache")[1][0] == cache.stat().st_size > 0
    assert [b["timing_cache_hit"] for b in fake.state.builds[2:]] == [True, True]
    cache.write_bytes(b"not a cache")  # from another TensorRT: ignored with a note, and replaced
    build(export, tmp_path / "engines", timing_cache=cache, baseline=False)
    assert cache.read_bytes().startswith(b"FAKETC")
    with pytest.raises(EngineBuildError, match="keep the timing cache outside the engines folder"):
        build(export, tmp_path / "engines", timing_cache=tmp_path / "engines" / "t.cache")


def test_stage2_opt_batch_follows_the_hard_fraction(export, tmp_path):
    m = Manifest.load(export)
    assert expected_hard_fraction(m)[0] == pytest.approx(0.23)
    assert stage2_opt_batch(BuildOptions(opt_batch=8), 0.23) == 2
    assert stage2_opt_batch(BuildOptions(opt_batch=32), 0.23) == 8
    assert stage2_opt_batch(BuildOptions(opt_batch=1), 0.23) == 1
    assert stage2_opt_batch(BuildOptions(opt_batch=8, stage2_opt_batch=5), 0.23) == 5
    m.verification = Verification(passed=True, rows=[{"check": "pipeline", "exit_rate": 0.6}])
    fraction, source = expected_hard_fraction(m)
    assert fraction == pytest.approx(0.4) and "verification" in source
    assert stage2_opt_batch(BuildOptions(opt_batch=8), fraction) == 4
    with pytest.raises(EngineBuildError, match="--min-batch .* <= --opt-batch"):
        BuildOptions(min_batch=4, opt_batch=2).validate()
    with pytest.raises(EngineBuildError, match="--stage2-opt-batch 64 must be within"):
        BuildOptions(stage2_opt_batch=64).validate()


# ---- portability: version / hardware compatibility, DLA ---------------------------------------------
def test_version_and_hardware_compatible_build(export, tmp_path, monkeypatch):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.9.0")
    result = build(
        export, tmp_path / "engines", version_compatible=True, hardware_compat="same-cc", baseline=False
    )
    assert ("VERSION_COMPATIBLE",) in fake.called("Config.set_flag")
    assert fake.called("Config.hardware_compatibility_level") == [("SAME_COMPUTE_CAPABILITY",)] * 2
    trt = result.manifest.tensorrt.to_dict()
    assert trt["version_compatible"] is True and trt["hardware_compat"] == "same-cc"
    assert (
        fake_plan_header((tmp_path / "engines" / "stage1.engine").read_bytes())["hardware"]
        == "SAME_COMPUTE_CAPABILITY"
    )


@pytest.mark.parametrize(
    ("version", "options", "message"),
    [
        (
            "8.5.2",
            {"version_compatible": True},
            "--version-compatible needs TensorRT 8.6 or later; this is TensorRT 8.5.2",
        ),
        ("8.5.2", {"hardware_compat": "ampere+"}, "--hardware-compat ampere\\+ needs TensorRT 8.6 or later"),
        ("10.3.0", {"hardware_compat": "same-cc"}, "--hardware-compat same-cc needs TensorRT 10.9 or later"),
    ],
)
def test_unsupported_options_on_the_installed_version(
    export85, tmp_path, monkeypatch, version, options, message
):
    install_fake_tensorrt(monkeypatch, tmp_path, version)
    with pytest.raises(EngineBuildError, match=message):
        build(export85, tmp_path / "engines", **options)
    assert not (tmp_path / "engines").exists()  # refused before touching the output folder


def test_ampere_plus_needs_an_ampere_gpu(export, tmp_path, monkeypatch):
    from sacvit_deploy.backends.gpu import GpuInfo

    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0", gpu=GpuInfo("Tesla T4", "7.5"))
    with pytest.raises(
        EngineBuildError, match="built on an Ampere or newer GPU; Tesla T4 has compute capability 7.5"
    ):
        build(export, tmp_path / "engines", hardware_compat="ampere+")


def test_layernorm_graphs_need_trt86_and_the_decomposed_export_builds_on_85(
    export, export85, tmp_path, monkeypatch
):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "8.5.2")
    with pytest.raises(EngineBuildError, match="re-export with: sacvit-deploy export CKPT --target-trt 8.5"):
        build(export, tmp_path / "a")
    result = build(export85, tmp_path / "b", fp16=True)
    assert result.manifest.tensorrt.parity["passed"]
    assert fake.called("Builder.create_network")[0] == (("EXPLICIT_BATCH",),)
    # decomposed LayerNorm: its ReduceMean/Sub/Mul/.../Add nodes are pinned to FP32 by name
    assert result.manifest.engines["stage1"].info["fp32_islands"]["layernorm"] == 9 * 9


def test_dla(export, tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", "sacvit_deploy.engine")
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    with pytest.raises(EngineBuildError, match="this device has no DLA \\(builder.num_DLA_cores is 0\\)"):
        build(export, tmp_path / "e", fp16=True, dla_core=0)
    with pytest.raises(EngineBuildError, match="--dla-core needs --fp16 or --int8"):
        build(export, tmp_path / "e", dla_core=0)
    fake.state.dla_cores = 2
    with pytest.raises(EngineBuildError, match="--dla-core 2: this device has 2 DLA core\\(s\\), 0..1"):
        build(export, tmp_path / "e", fp16=True, dla_core=2)
    result = build(export, tmp_path / "e", fp16=True, dla_core=1, baseline=False, opt_batch=4)
    assert fake.called("Config.default_device_type") == [("DLA",)] * 2
    assert fake.called("Config.DLA_core") == [(1,)] * 2
    assert ("GPU_FALLBACK",) in fake.called("Config.set_flag")
    assert result.manifest.tensorrt.dla_core == 1
    # DLA runs no dynamic dimension: static profiles at each engine's opt batch (stage 2: ceil(0.23*4) = 1),
    # else every layer would silently fall back to the GPU
    profiles = [p[0] for p in fake.called("Config.add_optimization_profile")]
    assert profiles[0]["image"] == ((4, 3, 128, 128),) * 3 and profiles[1]["image"] == ((1, 3, 128, 128),) * 3
    assert not any("fall back to GPU" in msg for _, msg in fake.state.logged)
    for role, header in zip(("stage1", "stage2"), fake.state.builds, strict=True):
        counted = result.manifest.engines[role].info["dla_layers"]
        assert counted["dla"] == header["dla_layers"] > 0 and counted["layers"] > counted["dla"]
    assert any("layers can run on DLA core 1" in r.getMessage() for r in caplog.records)
    # the runtime pads to the static batch and splits larger ones
    from sacvit_deploy.backends.factory import BackendChoice, make_runner

    folder = tmp_path / "e"
    choice = BackendChoice("tensorrt", "cuda", None, "test")
    with make_runner(folder, Manifest.load(folder), "stage1", choice) as r:
        assert r.fixed_batch == 4 and r.max_batch == 4
    from sacvit_deploy.runtime.pipeline import EarlyExitPipeline

    with EarlyExitPipeline(
        make_runner(folder, Manifest.load(folder), "stage1", choice),
        make_runner(folder, Manifest.load(folder), "stage2", choice),
        0.5,
    ) as pipe:
        import torch

        assert pipe.run(torch.randn(6, 3, 128, 128), 1.01).logits.shape == (6, 10)
    assert {e["shapes"]["image"][0] for e in fake.state.executions} <= {1, 4}


# ---- parser errors, parity failures, folders --------------------------------------------------------
@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_every_parser_error_is_reported_with_its_node(export, tmp_path, monkeypatch, caplog, version):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, version)
    fake.state.fail_nodes = {"/blocks.0/attn/Softmax", "/head/Gemm"}
    from sacvit_deploy.engine.build import BuildOptions, build_engines

    with pytest.raises(EngineBuildError) as info:
        build_engines(export, tmp_path / "engines", BuildOptions())
    lines = [r.getMessage() for r in caplog.records if r.name == "sacvit_deploy.engine.build"]
    message = str(info.value)
    assert (
        "stage1.onnx: TensorRT" in message
        and "'/blocks.0/attn/Softmax' (Softmax): UNSUPPORTED_NODE" in message
    )
    assert "(and 1 more, listed above)" in message and "\n" not in message
    parser_lines = [line for line in lines if "parser:" in line]
    assert len(parser_lines) == 2 and "'/head/Gemm' (Gemm)" in parser_lines[1]
    # 8.6's ParserError has no node_name(): the name comes from the graph, by node index
    assert hasattr(fake.ParserError, "node_name") == (version != "8.6.1")
    assert not (tmp_path / "engines" / "manifest.json").exists()


def test_low_parity_warns_and_strict_writes_nothing(export, tmp_path, monkeypatch):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")

    def scramble(name, value):  # an engine that gets the class wrong
        return value[:, ::-1].copy() if name == "logits" else value

    fake.state.perturb = scramble
    result = build(export, tmp_path / "engines", fp16=True, baseline=False)
    parity = result.manifest.tensorrt.parity
    assert not parity["passed"] and parity["worst_top1_agreement"] < 0.99
    assert any("top-1 class of only" in w for w in result.warnings)
    assert Manifest.load(tmp_path / "engines").tensorrt.parity["passed"] is False
    with pytest.raises(EngineBuildError, match="--strict: nothing was written"):
        build(export, tmp_path / "strict", fp16=True, strict=True)
    assert not (tmp_path / "strict").exists()  # the folder it created is removed again, not left empty


def test_output_folder_rules(export, tmp_path, monkeypatch):
    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    for out in (export, export / "engines"):  # the export itself, or a folder inside it
        with pytest.raises(EngineBuildError, match="not into the export folder"):
            build(export, out)
    assert not (export / "engines").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(
        EngineBuildError, match=r"holds other files \(notes.txt\); build into an empty folder"
    ):
        build(export, tmp_path / "busy")
    out = tmp_path / "engines"
    build(export, out)
    build(export, out, baseline=False)  # a previous engines folder is replaced, the stale baseline removed
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "stage1.engine", "stage2.engine"]
    with pytest.raises(EngineBuildError, match="has no baseline.onnx; re-export with --baseline"):
        no_baseline = tmp_path / "nb"
        tiny_export(no_baseline)
        (no_baseline / "baseline.onnx").unlink()
        data = json.loads((no_baseline / "manifest.json").read_text())
        del data["graphs"]["baseline"]
        (no_baseline / "manifest.json").write_text(json.dumps(data))
        build(no_baseline, tmp_path / "x", baseline=True)


# ---- version handling in one place --------------------------------------------------------------------
def test_version_queries_and_network_flags():
    v86, v103, v11 = (TrtVersion.parse(s) for s in ("8.6.1.post1", "10.3.0.26", "11.0.0"))
    assert str(v103) == "10.3.0" and v103.short == "10.3" and TrtVersion.parse("10.15") == TrtVersion(10, 15)
    assert [v.needs_explicit_batch_flag() for v in (v86, v103, v11)] == [True, False, False]
    assert [v.has_precision_flags() for v in (v86, v103, v11)] == [True, True, False]
    assert [v.strongly_typed_only() for v in (v86, v103, v11)] == [False, False, True]
    assert [v.max_onnx_opset() for v in (v86, v103, TrtVersion(10, 15), v11)] == [17, 20, 24, 24]
    assert v103.known_fp16_issue() and not TrtVersion(10, 8).known_fp16_issue()
    for version, names in (("8.6.1", ["EXPLICIT_BATCH"]), ("10.3.0", []), ("11.0.0", ["STRONGLY_TYPED"])):
        fake = make_fake_tensorrt(version)
        bits, got = network_flags(fake, TrtVersion.parse(version))
        assert got == names
        assert bits == sum(1 << int(getattr(fake.NetworkDefinitionCreationFlag, n)) for n in names)


def test_engine_compatibility_rules():
    built = {"version": "10.3.0", "compute_capability": "8.7", "gpu": "Orin"}
    assert engine_compatibility_problem(built, TrtVersion(10, 3, 0), "8.7") is None
    # an ordinary engine needs the exact release: a patch mismatch is refused (8.x: "expecting library
    # version 8.5.1.7 got 8.5.3.1"), before TensorRT's own cryptic deserialize failure
    assert "this machine has TensorRT 10.3.1" in engine_compatibility_problem(
        built, TrtVersion(10, 3, 1), "8.7"
    )
    assert "this machine has TensorRT 8.5.3" in engine_compatibility_problem(
        {"version": "8.5.1"}, TrtVersion(8, 5, 3), None
    )
    assert "compute capability 8.7 (Orin)" in engine_compatibility_problem(built, TrtVersion(10, 3), "8.9")
    compatible = {**built, "version_compatible": True, "hardware_compat": "ampere+"}
    assert engine_compatibility_problem(compatible, TrtVersion(10, 8), "8.9") is None
    assert "cannot load" in engine_compatibility_problem(compatible, TrtVersion(10, 2), "8.9")
    assert "Ampere and later" in engine_compatibility_problem(compatible, TrtVersion(10, 3), "7.5")
    # across majors only 8 -> 10 and 10 -> 11 (Support Matrix)
    v86 = {"version": "8.6.1", "version_compatible": True}
    assert engine_compatibility_problem(v86, TrtVersion(10, 3), None) is None
    assert "only from 8 to 10 and from 10 to 11" in engine_compatibility_problem(v86, TrtVersion(11, 1), None)
    assert (
        engine_compatibility_problem({**compatible, "compute_capability": None}, TrtVersion(11, 4), None)
        is None
    )
    assert "only from 8 to 10" in engine_compatibility_problem(
        {"version": "11.1.0", "version_compatible": True}, TrtVersion(12, 0), None
    )


def test_the_fake_runtime_loads_what_the_support_matrix_says(tmp_path):
    """The fake's own deserialize rule (written from the Support Matrix, not from trt_version.py)."""
    from tests.fakes.fake_tensorrt import MAGIC

    def plan(version, flags=()):
        header = json.dumps(
            {"version": version, "flags": list(flags), "inputs": [], "outputs": [], "profiles": []}
        )
        return MAGIC + len(header).to_bytes(4, "little") + header.encode()

    def loads(runtime_version, plan_bytes, host_code=True):
        fake = make_fake_tensorrt(runtime_version)
        runtime = fake.Runtime(fake.Logger())
        if hasattr(runtime, "engine_host_code_allowed"):
            runtime.engine_host_code_allowed = host_code
        return runtime.deserialize_cuda_engine(plan_bytes) is not None

    assert loads("10.3.0", plan("10.3.0")) and not loads("10.3.1", plan("10.3.0"))
    assert not loads("8.5.3", plan("8.5.1"))
    vc = ("VERSION_COMPATIBLE",)
    assert loads("10.9.0", plan("10.3.0", vc)) and not loads("10.2.0", plan("10.3.0", vc))
    assert loads("10.3.0", plan("8.6.1", vc)) and loads("11.1.0", plan("10.3.0", vc))
    assert not loads("11.1.0", plan("8.6.1", vc)) and not loads("10.9.0", plan("10.3.0", vc), host_code=False)


# ---- the fake itself: removed APIs are absent, bad profiles fail the build ------------------------
@pytest.mark.parametrize("version", ["8.5.2", "8.6.1", "10.3.0", "11.1.0"])
def test_fake_has_each_versions_api_surface(version):
    fake = make_fake_tensorrt(version)
    major = int(version.split(".")[0])
    builder = fake.Builder(fake.Logger())
    config = builder.create_builder_config()
    for gone in ("build_engine", "max_batch_size"):  # removed in 10.0 (and never used here)
        assert not hasattr(builder, gone)
    assert not hasattr(config, "max_workspace_size")
    assert not hasattr(fake.ICudaEngine, "num_bindings") and not hasattr(
        fake.IExecutionContext, "execute_async_v2"
    )
    assert hasattr(fake.IExecutionContext, "execute_async_v3") and hasattr(
        fake.ICudaEngine, "get_tensor_profile_shape"
    )
    assert hasattr(fake.BuilderFlag, "FP16") == (major <= 10)
    assert hasattr(fake.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS") == (major <= 10)
    assert hasattr(fake, "IInt8EntropyCalibrator2") == (major <= 10)
    assert hasattr(config, "int8_calibrator") == (major <= 10)
    assert hasattr(builder, "platform_has_fast_fp16") == (major <= 10)
    assert hasattr(fake.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") == (major <= 10)
    assert hasattr(fake.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") == (major >= 10)
    assert hasattr(fake, "HardwareCompatibilityLevel") == (version != "8.5.2")
    assert hasattr(fake.BuilderFlag, "STRICT_TYPES") == (major < 10)
    with pytest.raises(TypeError, match="expected tensorrt.MemoryPoolType"):
        config.set_memory_pool_limit(0, 1 << 30)  # an int where the enum member belongs
    with pytest.raises(TypeError, match="expected tensorrt.BuilderFlag"):
        config.set_flag(3)


def test_a_profile_missing_a_dynamic_input_fails_the_build(export, tmp_path, monkeypatch):
    from sacvit_deploy.engine.build import (
        build_serialized,
        config_for,
        make_logger,
        network_from_onnx,
        profile_shapes,
    )

    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    logger = make_logger(fake)
    builder = fake.Builder(logger)
    network, _ = network_from_onnx(
        fake, builder, logger, (export / "stage2.onnx").read_bytes(), export / "stage2.onnx", 0
    )
    inputs = Manifest.load(export).graphs["stage2"].inputs
    shapes = profile_shapes([t for t in inputs if t.name != "target_index"], 1, 2, 4)
    config, _ = config_for(fake, TrtVersion(10, 3), builder, BuildOptions(), shapes)
    with pytest.raises(EngineBuildError, match="no shape for dynamic input target_index"):
        build_serialized(builder, network, config, logger, "stage2.onnx")
    with pytest.raises(ValueError, match="need 0 < min <= opt <= max"):
        builder.create_optimization_profile().set_shape(
            "image", (4, 3, 128, 128), (2, 3, 128, 128), (8, 3, 128, 128)
        )


# ---- TensorRT 10.12+: weak typing deprecated ---------------------------------------------------------
def test_fp16_from_10_12_builds_strongly_typed_without_deprecated_calls(export, tmp_path, monkeypatch):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.16.1")
    plans = capture_plans(fake)
    result = build(export, tmp_path / "engines", fp16=True, baseline=False)
    assert fake.state.deprecated == []  # no BuilderFlag.FP16, no layer precision, no set_output_type
    assert fake.called("Builder.create_network") == [(("STRONGLY_TYPED",),)] * 2
    assert fake.called("Config.set_flag") == [] and fake.called("ILayer.precision") == []
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in onnx_of(bytes(plans[0])).graph.initializer}
    assert result.manifest.tensorrt.build["strongly_typed"] and result.manifest.tensorrt.parity["passed"]


def test_int8_from_10_12_stays_weakly_typed_and_says_so(export, tmp_path, monkeypatch, caplog):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.16.1")
    make_images(tmp_path / "calib", count=4)
    with pytest.warns(DeprecationWarning) as deprecations:  # the weakly typed INT8 path (expected)
        result = build(
            export, tmp_path / "e", int8=True, calib_images=tmp_path / "calib", opt_batch=2, baseline=False
        )
    assert "BuilderFlag.INT8 is deprecated since TensorRT 10.12" in {str(w.message) for w in deprecations}
    assert ("INT8",) in fake.called("Config.set_flag") and not result.manifest.tensorrt.build[
        "strongly_typed"
    ]
    assert any("deprecates weak typing" in r.getMessage() for r in caplog.records)


# ---- return values TensorRT reports failures with -----------------------------------------------------
def test_a_refused_optimization_profile_is_an_error(export, tmp_path, monkeypatch):
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    fake.state.reject_profiles = True
    with pytest.raises(EngineBuildError, match="TensorRT refused the optimization profile image batch 1..32"):
        build(export, tmp_path / "e")
    make_images(tmp_path / "calib", count=4)
    from sacvit_deploy.engine.build import config_for, make_logger, profile_shapes

    builder = fake.Builder(make_logger(fake))
    shapes = profile_shapes(Manifest.load(export).graphs["stage1"].inputs, 1, 2, 4)
    fake.state.reject_profiles = False
    calibrator = fake.IInt8EntropyCalibrator2()
    original = fake.IBuilderConfig.set_calibration_profile
    fake.IBuilderConfig.set_calibration_profile = lambda self, profile: False
    try:
        with pytest.raises(EngineBuildError, match="refused the INT8 calibration profile"):
            config_for(fake, TrtVersion(10, 3), builder, BuildOptions(int8=True), shapes, None, calibrator, 2)
    finally:
        fake.IBuilderConfig.set_calibration_profile = original


# ---- the opset ceiling is our policy, not TensorRT's refusal ---------------------------------------------
def test_opset_above_the_documented_one_warns_and_strict_refuses(export, tmp_path, monkeypatch):
    from sacvit_deploy.engine.build import check_options
    from tests.fakes.fixtures import FAKE_GPU

    fake = make_fake_tensorrt("10.3.0")
    manifest = Manifest.load(export)
    manifest.exporter.opset = 21
    warnings = check_options(fake, TrtVersion(10, 3), BuildOptions(), FAKE_GPU, manifest)
    assert (
        len(warnings) == 1 and "sacvit-deploy's policy" in warnings[0] and "TensorRT will try" in warnings[0]
    )
    with pytest.raises(EngineBuildError, match="opset 21, above 20.*--strict refuses it"):
        check_options(fake, TrtVersion(10, 3), BuildOptions(strict=True), FAKE_GPU, manifest)


def test_profile_batch_sizes_are_bounded():
    with pytest.raises(EngineBuildError, match="--max-batch 1000000: at most 1024"):
        BuildOptions(max_batch=1_000_000).validate()
