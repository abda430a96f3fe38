"""The TensorRT runner against the fake TensorRT: compatibility checks, buffers, the backend contract.

The fake's engines run the ONNX graphs with ONNX Runtime, reading and writing the addresses the
runner gives ``set_tensor_address`` (host memory here: ``device="cpu"``), so the buffer handling is
exercised for real. pycuda is faked the same way (tests/fakes/fake_pycuda.py).
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sacvit_deploy.backends.base import BackendError
from sacvit_deploy.backends.factory import BackendChoice, choose_backend, make_runner
from sacvit_deploy.backends.gpu import GpuInfo
from sacvit_deploy.backends.tensorrt_backend import TensorRTRunner
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.runtime.pipeline import EarlyExitPipeline, mixed_threshold
from tests.backend_contract import check_runner_contract
from tests.fakes.fake_pycuda import install_fake_pycuda
from tests.fakes.fixtures import build, install_fake_tensorrt, shared_export

TRT = BackendChoice("tensorrt", "cuda", None, "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny model, its export, and FP32 engines built with a fake TensorRT 10.3 (max batch 4)."""
    root = tmp_path_factory.mktemp("trt")
    model, export = shared_export(tmp_path_factory)
    with pytest.MonkeyPatch.context() as mp:
        install_fake_tensorrt(mp, root, "10.3.0")
        build(export, root / "engines", max_batch=4, opt_batch=2)
    return model, export, root / "engines"


@pytest.fixture
def fake(monkeypatch, tmp_path):
    return install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0")


def runner(folder, role, **options):
    options.setdefault("device", "cpu")
    return make_runner(folder, Manifest.load(folder), role, TRT, **options)


def ort_outputs(export, role, feed):
    session = ort.InferenceSession(str(export / f"{role}.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v.numpy() for k, v in feed.items()}), strict=True))


# ---- the contract every backend meets (as tests/test_pipeline.py::test_backend_contract) ----------------
def test_backend_contract(built, fake):
    model, _, engines = built
    m = Manifest.load(engines)

    def engine_specific(r):
        assert r.max_batch == 4 and r.fixed_batch is None
        with pytest.raises(BackendError, match=r"batch 5 is outside the engine's profile \(1..4\)"):
            r.infer({"image": torch.randn(5, 3, 128, 128)})
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
    torch.manual_seed(7)
    x = torch.randn(9, 3, 128, 128)  # above the engines' max batch 4: the pipeline splits it
    conf = model.forward_stage1(x).confidence
    with EarlyExitPipeline(runner(engines, "stage1"), runner(engines, "stage2"), 0.5) as pipe:
        for th in (0.0, mixed_threshold(conf), 1.01):
            ref = model(x, th)
            got = pipe.run(x, th)
            torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
            assert torch.equal(got.stage, ref.stage)
    assert max(e["shapes"]["image"][0] for e in fake.state.executions) == 4


def test_factory_picks_tensorrt_for_an_engines_folder(built, fake):
    _, _, engines = built
    m = Manifest.load(engines)
    assert choose_backend(m, "tensorrt").backend == "tensorrt"
    with pytest.raises(BackendError, match="TensorRT runs on the GPU only"):
        choose_backend(m, "tensorrt", "cpu")
    r = make_runner(engines, m, "stage1", TRT, device="cpu", threads=2)  # ORT-only options are ignored
    assert isinstance(r, TensorRTRunner)


# ---- buffers -----------------------------------------------------------------------------------------
@torch.no_grad()
def test_output_buffers_grow_only_and_results_are_fresh_tensors(built, fake):
    _, export, engines = built
    addresses = []
    results = []
    with runner(engines, "stage1") as r:
        for batch in (2, 1, 2, 4, 3):
            x = torch.randn(batch, 3, 128, 128)
            out = r.infer({"image": x})
            results.append((x, out))
            addresses.append(fake.state.executions[-1]["addresses"]["logits"])
            expected = ort_outputs(export, "stage1", {"image": x})
            for name, value in expected.items():
                np.testing.assert_allclose(out[name].numpy(), value, atol=1e-6)
        capacity = r._io._storage["logits"].numel()
    # the same buffer for the same or a smaller batch; it grew once, for batch 4, and stayed
    assert addresses[0] == addresses[1] == addresses[2] and addresses[3] == addresses[4]
    assert capacity == 4 * 10
    # earlier results are not views of the reused buffers
    x0, out0 = results[0]
    np.testing.assert_allclose(
        out0["logits"].numpy(), ort_outputs(export, "stage1", {"image": x0})["logits"], atol=1e-6
    )


@torch.no_grad()
def test_pycuda_buffers(built, fake, monkeypatch):
    _, export, engines = built
    driver = install_fake_pycuda(monkeypatch)
    with runner(engines, "stage2", device="cuda") as r:
        assert r.buffers == "pycuda"  # "auto": torch has no CUDA here, pycuda is "installed"
        assert r.device == torch.device("cpu")  # the currency stays torch CPU tensors
        assert len(driver.contexts) == 1  # the primary context is current while active
        for batch in (3, 2):
            x = torch.randn(batch, 3, 128, 128)
            s1 = ort_outputs(export, "stage1", {"image": x})
            feed = {
                "image": x,
                **{
                    k: torch.from_numpy(s1[k])
                    for k in ("target_index", "nontarget_tokens", "target_features")
                },
            }
            out = r.infer(feed)
            np.testing.assert_allclose(
                out["logits"].numpy(), ort_outputs(export, "stage2", feed)["logits"], atol=1e-6
            )
        # one allocation per tensor, reused for the smaller batch
        assert len(driver.allocations) == 5
        assert fake.state.executions[-1]["stream"] != 0
    assert driver.contexts == [] and all(a.freed for a in driver.allocations)
    assert {kind for kind, _ in driver.copies} == {"htod", "dtoh"}


def test_pycuda_missing_is_a_clear_error(built, fake, monkeypatch):
    _, _, engines = built
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(
        BackendError, match=r"buffers='pycuda' needs pycuda: pip install 'sacvit-deploy\[pycuda\]'"
    ):
        runner(engines, "stage1", device="cuda", buffers="pycuda").activate()


# ---- compatibility checks: rebuild, clearly -----------------------------------------------------------
def test_engine_from_another_tensorrt_version_says_rebuild(built, monkeypatch, tmp_path):
    _, _, engines = built
    install_fake_tensorrt(monkeypatch, tmp_path, "10.8.0")
    with pytest.raises(
        BackendError,
        match=r"built with TensorRT 10.3.0, but this machine has TensorRT 10.8.0; rebuild the engines on this "
        r"device: sacvit-deploy build-engine",
    ):
        runner(engines, "stage1").activate()


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
        r.infer({"image": torch.randn(1, 3, 128, 128)})
    assert fake.called("Runtime.deserialize_cuda_engine")  # engine_host_code_allowed was set


def test_an_engine_tensorrt_refuses_says_rebuild(built, fake, tmp_path):
    _, _, engines = built
    m = Manifest.load(engines)
    bad = tmp_path / "stage1.engine"
    bad.write_bytes(b"not an engine")
    r = TensorRTRunner(bad, m.engines["stage1"], m.tensorrt.to_dict(), device="cpu")
    with pytest.raises(BackendError, match="TensorRT 10.3.0 cannot load this engine .*; rebuild the engines"):
        r.activate()


def test_tensorrt_not_installed(built, monkeypatch):
    _, _, engines = built
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(
        BackendError, match=r"TensorRT is not installed: pip install 'sacvit-deploy\[tensorrt\]'"
    ):
        runner(engines, "stage1").activate()
