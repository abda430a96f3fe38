"""The OpenVINO backend, held against the real openvino package (skipped where it is not installed):
the runner contract, the pipeline against the eager model, int8 Q/DQ folders, the compiled-model
cache, device selection, ``auto``, and the CLI (``infer``/``check --run --backend openvino``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sacvit_deploy.backends.base import BackendError
from sacvit_deploy.backends.factory import BackendChoice, choose_backend, make_runner
from sacvit_deploy.cli import app
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.runtime.loader import open_pipeline
from sacvit_deploy.runtime.pipeline import mixed_threshold
from tests.backend_contract import check_runner_contract
from tests.conftest import make_tiny, trained_scale

pytest.importorskip("openvino")
ov_backend = pytest.importorskip("sacvit_deploy.backends.openvino_backend")

runner = CliRunner()
CPU = BackendChoice("openvino", "cpu", "CPU", "test")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    # The default cache lives under $XDG_CACHE_HOME: keep the tests' out of the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    model = trained_scale(make_tiny("sacvit"))  # logits at a trained model's scale (std ~4)
    folder = tmp_path_factory.mktemp("ov") / "export"
    export_artifacts(model, folder, ExportOptions(baseline=True), "sacvit")
    return model, folder


def test_contract(artifacts, tmp_path):
    model, folder = artifacts
    m = Manifest.load(folder)
    stage1 = make_runner(folder, m, "stage1", CPU, ov_cache=tmp_path)
    stage2 = make_runner(folder, m, "stage2", CPU, ov_cache=tmp_path)
    check_runner_contract(stage1, stage2, m.graphs["stage1"].outputs, model)


@pytest.mark.parametrize("hint", ["LATENCY", "THROUGHPUT"])
@torch.no_grad()
def test_pipeline_equals_reference_for_every_exit_pattern(artifacts, hint):
    model, folder = artifacts
    opened = open_pipeline(folder, backend="openvino", hint=hint)
    assert opened.choice.backend == "openvino"
    assert opened.pipeline.stage1.describe()["hint"] == hint
    x = torch.randn(9, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    conf = model.forward_stage1(x).confidence
    with opened.pipeline as pipe:
        if hint == "THROUGHPUT":  # the batch really is split over several infer requests here
            assert pipe.stage1.describe()["requests"] >= 1
        for th in (0.0, mixed_threshold(conf), 1.01):
            ref = model(x, th)
            got = pipe.run(x.numpy(), th)  # numpy in, numpy out
            limit = 1e-4 + 1e-4 * float(ref.logits.abs().max())  # the comparator's per-tensor limit
            assert float(np.abs(got.logits - ref.logits.numpy()).max()) <= limit
            np.testing.assert_array_equal(got.stage, ref.stage.numpy())


def test_python_api(artifacts, tmp_path):
    from sacvit_deploy import Pipeline
    from sacvit_deploy.runtime.images import sample_images

    _, folder = artifacts
    with Pipeline.from_artifacts(
        folder, backend="openvino", provider="CPU", hint="THROUGHPUT", threads=1, ov_cache=tmp_path / "c"
    ) as pipe:
        assert pipe.backend.backend == "openvino" and pipe.backend.provider == "CPU"
        preds = pipe.predict(sample_images()[:2], topk=1)
    assert len(preds) == 2 and any((tmp_path / "c").iterdir())  # compiled into the cache asked for


def test_numpy_inside(artifacts):
    _model, folder = artifacts
    m = Manifest.load(folder)
    x = np.random.default_rng(0).standard_normal((3, 3, 128, 128)).astype(np.float32)
    with make_runner(folder, m, "baseline", CPU) as r:
        out = r.infer({"image": x})
        assert isinstance(out["logits"], np.ndarray) and out["logits"].dtype == np.float32
        again = r.infer({"image": x})
        assert out["logits"] is not again["logits"]  # fresh arrays, not the request's reused memory
        np.testing.assert_array_equal(out["logits"], again["logits"])
        with pytest.raises(BackendError, match="expected float32"):
            r.infer({"image": x.astype(np.float64)})


def test_compiled_model_cache(artifacts, tmp_path):
    _, folder = artifacts
    m = Manifest.load(folder)
    cache = tmp_path / "cache"
    before = sorted(p.name for p in folder.iterdir())
    first = make_runner(folder, m, "stage1", CPU, ov_cache=cache)
    with first:
        assert first.loaded_from_cache is False and first.compile_seconds > 0
    assert any(cache.iterdir()), "OpenVINO wrote no compiled blob"
    second = make_runner(folder, m, "stage1", CPU, ov_cache=cache)
    with second:
        assert second.loaded_from_cache is True
        assert second.describe()["cache_dir"] == str(cache)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written into the artifacts
    off = make_runner(folder, m, "stage1", CPU, ov_cache=None)
    with off:
        assert off.describe()["cache_dir"] is None
    # The default cache is under $XDG_CACHE_HOME (set by the autouse fixture), never the folder.
    assert str(ov_backend.default_cache_dir()).endswith("sacvit-deploy/openvino")


def test_devices_hints_and_auto(artifacts):
    _, folder = artifacts
    m = Manifest.load(folder)
    found = ov_backend.available_devices()
    assert "CPU" in found
    absent = next(d for d in ("NPU", "GPU") if not any(f.startswith(d) for f in found))
    with pytest.raises(BackendError, match=rf"OpenVINO finds no {absent} device here \(available: "):
        choose_backend(m, "openvino", None, absent)
    with pytest.raises(BackendError, match="unknown OpenVINO device 'TPU'"):
        choose_backend(m, "openvino", None, "TPU")
    with pytest.raises(BackendError, match="does not run on CUDA GPUs"):
        choose_backend(m, "openvino", "cuda")
    with pytest.raises(BackendError, match="unknown OpenVINO performance hint"):
        make_runner(folder, m, "stage1", CPU, hint="FAST")
    auto = choose_backend(m, "auto", "cpu")
    assert auto.backend == "openvino" and auto.provider == "CPU"
    assert "OpenVINO is installed; on a CPU it ran float graphs faster than ONNX Runtime" in auto.describe()


def test_swapped_graph_is_named(artifacts, tmp_path):
    """A graph that is not the manifest's (the baseline in stage 1's place) fails naming the file."""
    import shutil

    _, folder = artifacts
    copy = tmp_path / "export"
    shutil.copytree(folder, copy)
    m = Manifest.load(copy)
    shutil.copyfile(copy / "baseline.onnx", copy / "stage1.onnx")
    entry = m.graphs["stage1"]
    r = ov_backend.OpenVinoRunner(copy / "stage1.onnx", entry.inputs, entry.outputs, cache_dir=None)
    with pytest.raises(BackendError, match=r"stage1\.onnx: the graph's outputs .* re-export the folder"):
        r.activate()
    (copy / "stage2.onnx").write_bytes(b"not an onnx file")
    e2 = m.graphs["stage2"]
    r2 = ov_backend.OpenVinoRunner(copy / "stage2.onnx", e2.inputs, e2.outputs, cache_dir=None)
    with pytest.raises(BackendError, match=r"stage2\.onnx: OpenVINO cannot compile it for CPU \("):
        r2.activate()


def test_cli_infer_and_check_run(artifacts, tmp_path):
    from sacvit_deploy.runtime.images import sample_images

    _, folder = artifacts
    images = [str(p) for p in sample_images()[:3]]
    out = tmp_path / "r.jsonl"
    result = runner.invoke(
        app,
        [
            "infer",
            *images,
            "--artifacts",
            str(folder),
            "--backend",
            "openvino",
            "--ov-hint",
            "THROUGHPUT",
            "--format",
            "jsonl",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "openvino (CPU device)" in result.output
    assert len(out.read_text().splitlines()) == 3
    bad = runner.invoke(app, ["infer", *images, "--artifacts", str(folder), "--ov-device", "GPU"])
    assert bad.exit_code == 1 and "apply to --backend openvino" in bad.output
    result = runner.invoke(app, ["check", str(folder), "--trt", "10", "--run", "--backend", "openvino"])
    assert result.exit_code == 0, result.output
    assert "OpenVINO (CPU) vs PyTorch" in result.output and "FAIL" not in result.output


@pytest.fixture(scope="module")
def int8(artifacts, tmp_path_factory):
    """An int8 (Q/DQ) folder made by ``quantize`` from the float export."""
    from tests.fakes.pictures import make_images

    _, folder = artifacts
    calib = tmp_path_factory.mktemp("calib")
    make_images(calib, count=12)
    q = tmp_path_factory.mktemp("int8") / "export-int8"
    result = runner.invoke(
        app,
        ["quantize", str(folder), "--calib-images", str(calib), "--out", str(q), "--min-agreement", "0.5"],
    )
    assert result.exit_code == 0, result.output
    return q


def test_check_run_int8_folder(int8, monkeypatch):
    """An int8 (Q/DQ) folder from quantize runs on OpenVINO and agrees with ONNX Runtime int8, on the
    path an AMX int8 CPU takes (static shapes, openvino#37577) whatever CPU runs the test."""
    monkeypatch.setattr(ov_backend, "cpu_has_amx_int8", lambda: True)
    q = int8
    result = runner.invoke(app, ["check", str(q), "--trt", "10", "--run", "--backend", "openvino"])
    assert "OpenVINO (CPU) vs ONNX Runtime int8" in result.output, result.output
    assert "quantize's rule" in result.output
    from sacvit_deploy.quantize.openvino_parity import check_openvino_parity

    m = Manifest.load(q)
    from sacvit_deploy.runtime.image_folder import verification_images

    rep = check_openvino_parity(
        q, m, verification_images(None, m.model.preprocess)
    )  # the images check --run uses
    assert rep["int8"] and rep["min_agreement"] == 0.95 and rep["atol"] is None  # numbers not gated
    assert {r["check"].split("@")[0] for r in rep["rows"]} == {"stage1", "stage2", "pipeline", "baseline"}
    # Every row at the manifest's threshold passes (top-1 and exits, as quantize's rule). The tiny
    # model's mixed-threshold row may flip one of 5-8 samples sitting near the threshold it splits.
    at_manifest = [
        r for r in rep["rows"] if "@" not in r["check"] or r["check"].endswith(f"@{m.exit_threshold:.3f}")
    ]
    assert all(r["passed"] for r in at_manifest), at_manifest
    assert result.exit_code == (0 if rep["passed"] else 2), result.output


SAPPHIRE_RAPIDS_FLAGS = (  # /proc/cpuinfo of a Xeon with AMX (abridged: the AMX and AVX-512 flags)
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
    "sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc avx512f avx512dq avx512cd avx512bw avx512vl "
    "avx512_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities"
)


def test_amx_int8_is_read_from_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: {SAPPHIRE_RAPIDS_FLAGS}\n"
    )
    assert ov_backend.cpu_has_amx_int8(cpuinfo)
    cpuinfo.write_text(
        "model name\t: AMD EPYC 9V74 (amx_int8 in a name is not a flag)\nflags\t\t: fpu avx2 amx_tile\n"
    )
    assert not ov_backend.cpu_has_amx_int8(cpuinfo)
    assert not ov_backend.cpu_has_amx_int8(tmp_path / "absent")  # not Linux: no /proc/cpuinfo
    assert [ov_backend.bucket(b) for b in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]


@pytest.mark.parametrize("hint", ["LATENCY", "THROUGHPUT"])
def test_static_shapes_pad_to_buckets_and_agree_with_dynamic(int8, hint):
    """Static shapes (openvino#37577's workaround) give the dynamic graph's outputs, row for row, with
    one compiled model per power-of-two bucket. The dynamic int8 side is what crashes an AMX CPU: it
    runs only where the CPU has no AMX."""
    m = Manifest.load(int8)
    runners = {
        (role, static): ov_backend.OpenVinoRunner(
            int8 / m.graphs[role].file,
            m.graphs[role].inputs,
            m.graphs[role].outputs,
            hint=hint,
            cache_dir=None,
            static_shapes=static,
        )
        for role in ("stage1", "stage2")
        for static in (True, False)
    }
    compare = not ov_backend.cpu_has_amx_int8()
    rng = np.random.default_rng(3)
    with runners["stage1", True] as s1, runners["stage2", True] as s2:
        assert s1.fixed_batch is None and s1.describe()["static_shapes"] == "asked for"
        for batch in (3, 1, 5, 8, 4):
            image = rng.standard_normal((batch, 3, 128, 128)).astype(np.float32)
            out1 = s1.infer({"image": image})
            feed2 = {"image": image, **{k: out1[k] for k in s2.input_specs if k != "image"}}
            out2 = s2.infer(feed2)
            for out in (out1, out2):
                assert {k: v.shape[0] for k, v in out.items()} == dict.fromkeys(out, batch)
            if compare:
                for role, feed, got in (("stage1", {"image": image}, out1), ("stage2", feed2, out2)):
                    with runners[role, False] as dynamic:
                        want = dynamic.infer(feed)
                    for name in want:
                        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4, err_msg=name)
        buckets = s1.describe()["buckets"]
        assert s2.describe()["buckets"] == buckets
        if hint == "LATENCY":  # batches 3, 1, 5, 8, 4: one request each, padded to 4, 1, 8, 8, 4
            assert buckets == [1, 4, 8]
        else:  # the batch is split over the requests first: smaller slices, smaller buckets
            assert set(buckets) <= {1, 2, 4, 8} and s1.describe()["requests"] is None
            # The split is known from activation on: a call repeated meets no new bucket.
            again = rng.standard_normal((8, 3, 128, 128)).astype(np.float32)
            s1.infer({"image": again})
            assert s1.describe()["buckets"] == buckets
    assert s1.describe()["buckets"] is None  # freed with the runner


def test_static_shapes_use_the_compiled_model_cache(int8, tmp_path):
    m = Manifest.load(int8)
    entry = m.graphs["stage1"]
    image = np.zeros((3, 3, 128, 128), np.float32)
    for expected in (False, True):  # compiled, then loaded: per bucket, keyed on the reshaped graph
        r = ov_backend.OpenVinoRunner(
            int8 / entry.file, entry.inputs, entry.outputs, cache_dir=tmp_path, static_shapes=True
        )
        with r:
            assert r.loaded_from_cache is expected and r.describe()["buckets"] == [1]  # at activation
            r.infer({"image": image})
            assert r.loaded_from_cache is expected and r.describe()["buckets"] == [1, 4]


def test_static_shapes_are_chosen_for_int8_on_amx_only(artifacts, int8, monkeypatch):
    _, folder = artifacts
    real_amx = ov_backend.cpu_has_amx_int8()
    monkeypatch.setattr(ov_backend, "cpu_has_amx_int8", lambda: True)
    for path, want in ((int8, ov_backend.AMX_INT8_BUG), (folder, None)):
        m = Manifest.load(path)
        with make_runner(path, m, "stage1", CPU, ov_cache=None) as r:
            reason = r.describe()["static_shapes"]
            assert (reason is None) if want is None else (want in reason), (path, reason)
    opened = open_pipeline(folder, backend="openvino", ov_cache=None, ov_static_shapes=True)
    with opened.pipeline as pipe:  # forced on a float folder
        assert pipe.stage2.describe()["static_shapes"] == "asked for"
    if real_amx:  # the rest compiles a dynamic int8 graph: what openvino#37577 crashes on an AMX CPU
        return
    off = make_runner(int8, Manifest.load(int8), "stage1", CPU, ov_cache=None, ov_static_shapes=False)
    with off:
        assert off.describe()["static_shapes"] is None  # turned off (the Python API's option)
    monkeypatch.setattr(ov_backend, "cpu_has_amx_int8", lambda: False)
    with make_runner(int8, Manifest.load(int8), "stage1", CPU, ov_cache=None) as r:
        assert r.describe()["static_shapes"] is None  # no AMX: the dynamic graph
