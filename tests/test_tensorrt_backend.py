"""The TensorRT runner against the fake TensorRT: compatibility checks, device memory, the backend contract.

The fake's engines run the ONNX graphs with ONNX Runtime, reading and writing the addresses the
runner gives ``set_tensor_address``: device memory from the fake cuda-python (both APIs) or the fake
pycuda (host memory; both held against the real surfaces, tests/test_cuda_memory.py and
tests/test_trt_conformance.py), so the buffer handling is exercised for real, through the production
``buffers`` paths.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sacvit_deploy.backends.base import BackendError
from sacvit_deploy.backends.device import DeviceArray, DeviceError
from sacvit_deploy.backends.factory import BackendChoice, choose_backend, make_runner
from sacvit_deploy.backends.gpu import GpuInfo
from sacvit_deploy.backends.tensorrt_backend import TensorRTRunner
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.runtime.pipeline import EarlyExitPipeline, mixed_threshold
from tests.backend_contract import check_runner_contract
from tests.fakes.fake_pycuda import is_freed
from tests.fakes.fixtures import build, fake_engines, install_fake_tensorrt

TRT = BackendChoice("tensorrt", "cuda", None, "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny model, its export, and FP32 engines built with a fake TensorRT 10.3 (max batch 4)."""
    return fake_engines(tmp_path_factory, "trt", max_batch=4, opt_batch=2)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    return install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")


def runner(folder, role, **options):
    return make_runner(folder, Manifest.load(folder), role, TRT, **options)


def ort_outputs(export, role, feed):
    session = ort.InferenceSession(str(export / f"{role}.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feed)), strict=True))


# ---- the contract every backend meets (as tests/test_pipeline.py::test_backend_contract) ----------------
def test_backend_contract(built, fake):
    model, _, engines = built
    m = Manifest.load(engines)

    def engine_specific(r):
        assert r.max_batch == 4 and r.fixed_batch is None
        with pytest.raises(BackendError, match=r"batch 5 is outside the engine's profile \(1..4\)"):
            r.infer({"image": np.zeros((5, 3, 128, 128), np.float32)})
        d = r.describe()
        assert d["backend"] == "tensorrt" and d["tensorrt"] == "10.3.0" and d["gpu"] == "Fake GPU"
        assert d["precision"] == "fp32"

    check_runner_contract(
        runner(engines, "stage1"),
        runner(engines, "stage2"),
        m.engines["stage1"].outputs,
        model,
        engine_specific,
    )


@torch.no_grad()
def test_pipeline_on_engines_equals_the_reference_for_every_exit_pattern(built, fake):
    model, _, engines = built
    # above the engines' max batch 4: the pipeline splits it
    x = np.random.default_rng(7).standard_normal((9, 3, 128, 128), dtype=np.float32)
    conf = model.forward_stage1(torch.from_numpy(x)).confidence.numpy()
    with EarlyExitPipeline(runner(engines, "stage1"), runner(engines, "stage2"), 0.5) as pipe:
        for th in (0.0, mixed_threshold(conf), 1.01):
            ref = model(torch.from_numpy(x), th)
            got = pipe.run(x, th)
            np.testing.assert_allclose(got.logits, ref.logits.numpy(), atol=1e-4, rtol=1e-4)
            np.testing.assert_array_equal(got.stage, ref.stage.numpy())
    assert max(e["shapes"]["image"][0] for e in fake.state.executions) == 4


def test_factory_picks_tensorrt_for_an_engines_folder(built, fake):
    _, _, engines = built
    m = Manifest.load(engines)
    assert choose_backend(m, "tensorrt").backend == "tensorrt"
    with pytest.raises(BackendError, match="TensorRT runs on the GPU only"):
        choose_backend(m, "tensorrt", "cpu")
    r = make_runner(engines, m, "stage1", TRT, threads=2)  # ORT-only options are ignored
    assert isinstance(r, TensorRTRunner)


# ---- the protocol: numpy / device arrays in, device arrays out, on each device-memory implementation ----
MEMORIES = [
    pytest.param("bindings", "cuda-python", id="cuda-python-new-api"),
    pytest.param("cudart", "cuda-python", id="cuda-python-old-api"),
    pytest.param(None, "pycuda", id="pycuda"),
]


def install(monkeypatch, tmp_path, cuda):
    """Fake TensorRT + the fake memory library under test; returns (trt, copies list, sync counter of a runner)."""
    trt = install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0", cuda=cuda)
    if cuda is None:
        return trt, sys.modules["pycuda.driver"].copies, lambda r: r._memory.stream._synchronized
    rt = sys.modules["cuda.bindings.runtime" if cuda == "bindings" else "cuda.cudart"]
    return trt, rt.copies, lambda _r: rt.syncs


def stage2_feed(export, x):
    s1 = ort_outputs(export, "stage1", {"image": x})
    return {"image": x, **{k: s1[k] for k in ("target_index", "nontarget_tokens", "target_features")}}


@pytest.mark.parametrize(("cuda", "memory"), MEMORIES)
def test_numpy_in_device_arrays_out(built, monkeypatch, tmp_path, cuda, memory):
    _, export, engines = built
    trt, copies, syncs = install(monkeypatch, tmp_path, cuda)
    rng = np.random.default_rng(0)
    with runner(engines, "stage1") as r:
        assert r.buffers == memory and r.describe()["buffers"] == memory
        assert r.device == "cuda:0"
        x = rng.standard_normal((3, 3, 128, 128), dtype=np.float32)
        before = syncs(r)
        out = r.infer({"image": x})
        assert syncs(r) - before == 1  # one stream synchronization per call
        assert list(out) == list(r.output_specs)
        assert all(isinstance(a, DeviceArray) for a in out.values())
        # the image went to the device once; nothing came back before to_host
        assert [k for k, _ in copies] == ["htod"] and copies[0][1] == x.nbytes
        expected = ort_outputs(export, "stage1", {"image": x})
        for name, value in expected.items():
            assert out[name].shape == value.shape and out[name].dtype == value.dtype
            np.testing.assert_allclose(out[name].to_host(), value, atol=1e-6)
        with pytest.raises(BackendError, match="input 'image' is float64, expected float32"):
            r.infer({"image": x.astype(np.float64)})
        with pytest.raises(
            BackendError, match=r"has shape \(3, 3, 64, 64\), expected \(batch, 3, 128, 128\)"
        ):
            r.infer({"image": x[:, :, :64, :64]})
        kept = out["logits"]
    # deactivate freed everything, the outputs still referenced included
    with pytest.raises(DeviceError, match="runner was deactivated"):
        kept.to_host()
    if cuda is None:
        driver = sys.modules["pycuda.driver"]
        assert all(is_freed(a) for a in driver.allocations) and driver.contexts == []
    else:
        rt = sys.modules["cuda.bindings.runtime" if cuda == "bindings" else "cuda.cudart"]
        assert all(a.freed for a in rt.allocations) and rt.streams == []
    assert trt.state.executions[-1]["stream"] != 0


@pytest.mark.parametrize(("cuda", "memory"), MEMORIES)
def test_device_array_inputs_are_bound_without_a_copy(built, monkeypatch, tmp_path, cuda, memory):
    _, export, engines = built
    trt, copies, _ = install(monkeypatch, tmp_path, cuda)
    x = np.random.default_rng(1).standard_normal((2, 3, 128, 128), dtype=np.float32)
    with runner(engines, "stage1") as r1, runner(engines, "stage2") as r2:
        out1 = r1.infer({"image": x})
        copies.clear()
        feed = {"image": x, **{k: out1[k] for k in ("target_index", "nontarget_tokens", "target_features")}}
        out2 = r2.infer(feed)
        bound = trt.state.executions[-1]["addresses"]
        for k in ("target_index", "nontarget_tokens", "target_features"):
            assert bound[k] == out1[k].ptr  # TensorRT reads stage 1's buffer itself
        assert copies == [("htod", x.nbytes)]  # only the host image was copied
        expected = ort_outputs(export, "stage2", stage2_feed(export, x))
        np.testing.assert_allclose(out2["logits"].to_host(), expected["logits"], atol=1e-5)


@pytest.mark.parametrize(("cuda", "memory"), MEMORIES)
def test_outputs_are_fresh_per_call_and_memory_is_pooled(built, monkeypatch, tmp_path, cuda, memory):
    _, export, engines = built
    install(monkeypatch, tmp_path, cuda)
    allocations = (
        sys.modules["pycuda.driver"].allocations
        if cuda is None
        else sys.modules["cuda.bindings.runtime" if cuda == "bindings" else "cuda.cudart"].allocations
    )
    rng = np.random.default_rng(2)
    with runner(engines, "stage1") as r:
        x0 = rng.standard_normal((2, 3, 128, 128), dtype=np.float32)
        first = r.infer({"image": x0})
        for batch in (2, 1, 4, 3):  # later calls do not overwrite what an earlier call returned
            r.infer({"image": rng.standard_normal((batch, 3, 128, 128), dtype=np.float32)})
        np.testing.assert_allclose(
            first["logits"].to_host(),
            ort_outputs(export, "stage1", {"image": x0})["logits"],
            atol=1e-6,
        )
        del first
        # steady state: the same batch again allocates nothing (the dropped outputs went back to the pool)
        r.infer({"image": x0})
        count = len(allocations)
        for _ in range(3):
            out = r.infer({"image": x0})
            del out
        assert len(allocations) == count


def test_no_memory_library_says_what_to_install(built, monkeypatch, tmp_path):
    _, _, engines = built
    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0", cuda=None)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    r = runner(engines, "stage1")
    assert r.buffers == "auto"
    with pytest.raises(BackendError, match=r"no library for GPU memory is installed: install cuda-python"):
        r.activate()


def test_unknown_buffers(built, fake):
    _, _, engines = built
    with pytest.raises(BackendError, match="unknown TensorRT buffers 'cupy'; use one of auto, cuda-python"):
        runner(engines, "stage1", buffers="cupy")


def test_pycuda_missing_is_a_clear_error(built, fake, monkeypatch):
    _, _, engines = built
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(
        BackendError, match=r"buffers='pycuda' needs pycuda .*: pip install 'sacvit-deploy\[pycuda\]'"
    ):
        runner(engines, "stage1", buffers="pycuda").activate()


# ---- compatibility checks: rebuild, clearly -----------------------------------------------------------
def test_engine_from_another_tensorrt_version_says_rebuild(built, monkeypatch, tmp_path):
    _, _, engines = built
    install_fake_tensorrt(monkeypatch, tmp_path, "10.8.0")
    with pytest.raises(
        BackendError,
        match=r"built with TensorRT 10.3.0, but this machine has TensorRT 10.8.0 \(an engine loads only on the "
        r"exact release that built it, unless built --version-compatible\); rebuild the engines on this "
        r"device: sacvit-deploy build-engine",
    ):
        runner(engines, "stage1").activate()


def test_a_patch_release_apart_says_rebuild_before_tensorrt_fails(built, monkeypatch, tmp_path):
    _, _, engines = built
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.3.1")
    with pytest.raises(
        BackendError, match=r"built with TensorRT 10.3.0, but this machine has TensorRT 10.3.1"
    ):
        runner(engines, "stage1").activate()
    assert not fake.called("Runtime.deserialize_cuda_engine")  # said before TensorRT's own failure


def test_engine_for_another_gpu_says_rebuild(built, monkeypatch, tmp_path):
    _, _, engines = built
    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0", gpu=GpuInfo("Jetson Orin", "8.7"))
    with pytest.raises(
        BackendError,
        match=r"built for compute capability 8.6 \(Fake GPU\), but this GPU has compute capability 8.7; rebuild",
    ):
        runner(engines, "stage1").activate()


def test_version_compatible_engine_loads_on_a_later_tensorrt(built, tmp_path, monkeypatch):
    _, export, _ = built
    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    build(export, tmp_path / "engines", version_compatible=True, hardware_compat="ampere+", baseline=False)
    fake = install_fake_tensorrt(monkeypatch, tmp_path, "10.9.0", gpu=GpuInfo("RTX 4090", "8.9"))
    with runner(tmp_path / "engines", "stage1") as r:
        r.infer({"image": np.zeros((1, 3, 128, 128), np.float32)})
    assert fake.called("Runtime.deserialize_cuda_engine")  # engine_host_code_allowed was set


def test_an_engine_tensorrt_refuses_says_rebuild(built, fake, tmp_path):
    _, _, engines = built
    m = Manifest.load(engines)
    bad = tmp_path / "stage1.engine"
    bad.write_bytes(b"not an engine")
    r = TensorRTRunner(bad, m.engines["stage1"], m.tensorrt.to_dict())
    # TensorRT's own error comes through our logger into the one line (a trt.Logger would print it
    # raw to stderr and the line would say "see above")
    with pytest.raises(
        BackendError,
        match=r"TensorRT 10.3.0 cannot load this engine \(IRuntime::deserializeCudaEngine: magic tag does "
        r"not match\); rebuild the engines",
    ):
        r.activate()


def test_tensorrt_not_installed(built, monkeypatch):
    _, _, engines = built
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(
        BackendError, match=r"TensorRT is not installed: pip install 'sacvit-deploy\[tensorrt\]'"
    ):
        runner(engines, "stage1").activate()


@pytest.mark.parametrize(
    "profiles",
    [
        {"image": {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64]}},  # no max
        {"image": {"min": ["1", 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}},  # a string
        {"image": {"min": [8, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}},  # min > opt
        {"image": {"min": [1, 3], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}},  # ranks differ
        ["not", "a", "mapping"],
    ],
)
def test_malformed_recorded_profiles_are_one_line_at_construction(built, profiles):
    """The manifest is untrusted: the profiles build-engine recorded (max_batch before the engine
    loads) are checked when the runner is made, not met as a TypeError in min() later."""
    _, _, engines = built
    m = Manifest.load(engines)
    entry = m.engines["stage1"]
    good = TensorRTRunner(engines / entry.file, entry, m.tensorrt.to_dict())
    assert good.max_batch == 4 and good.min_batch == 1  # read from the manifest, before activate()
    entry.info = {**entry.info, "profiles": profiles}
    with pytest.raises(BackendError, match=r"stage1.engine: the manifest's profiles .* rebuild the engines"):
        TensorRTRunner(engines / entry.file, entry, m.tensorrt.to_dict())
