"""Backend contract (run against every available backend) and the early-exit pipeline."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from sacvit_deploy.backends.base import BackendError
from sacvit_deploy.backends.factory import BackendChoice, choose_backend, cpu_reference, make_runner
from sacvit_deploy.backends.torch_backend import TorchRunner
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.model.graphs import graph_module, graph_specs
from sacvit_deploy.runtime.loader import open_pipeline
from sacvit_deploy.runtime.pipeline import EarlyExitPipeline, bucket_for, mixed_threshold
from tests.backend_contract import check_runner_contract
from tests.conftest import make_tiny
from tests.fakes.fixtures import shared_export

CHOICES = {
    "torch": BackendChoice("torch", "cpu", None, "test"),
    "onnxruntime": cpu_reference("test"),
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return shared_export(tmp_path_factory)  # read-only here


@pytest.fixture(scope="module")
def fixed_artifacts(tmp_path_factory):
    model = make_tiny("lf-vit")
    folder = tmp_path_factory.mktemp("fixed")
    export_artifacts(model, folder, ExportOptions(batch=4), "lf-vit")
    return model, folder


# ---- the contract every backend meets ----------------------------------------------------------------
@pytest.mark.parametrize("backend", sorted(CHOICES))
def test_backend_contract(artifacts, backend):
    model, folder = artifacts
    m = Manifest.load(folder)
    stage1 = make_runner(folder, m, "stage1", CHOICES[backend])
    stage2 = make_runner(folder, m, "stage2", CHOICES[backend])
    check_runner_contract(stage1, stage2, m.graphs["stage1"].outputs, model)


@pytest.mark.parametrize("backend", sorted(CHOICES))
@torch.no_grad()
def test_pipeline_equals_reference_for_every_exit_pattern(artifacts, backend):
    model, folder = artifacts
    opened = open_pipeline(folder, backend=backend, device="cpu")
    torch.manual_seed(7)
    xt = torch.randn(9, 3, 128, 128)
    x = xt.numpy()  # the runner currency: numpy in, numpy out
    conf = model.forward_stage1(xt).confidence
    with opened.pipeline as pipe:
        for th in (0.0, mixed_threshold(conf.numpy()), 1.01, None):
            ref = model(xt, th)
            got = pipe.run(x, th)
            assert isinstance(got.logits, np.ndarray) and got.logits.dtype == np.float32
            assert got.stage.dtype == np.int64 and got.confidence.dtype == np.float32
            np.testing.assert_allclose(got.logits, ref.logits.numpy(), atol=1e-4, rtol=1e-4)
            np.testing.assert_array_equal(got.stage, ref.stage.numpy())
            np.testing.assert_allclose(got.confidence, ref.confidence.numpy(), atol=1e-5, rtol=1e-5)
        assert pipe.run(x, 0.0).exit_rate == 1.0 and pipe.run(x, 1.01).exit_rate == 0.0
        one = pipe.run(x[:1], float(conf[0]) + 1e-3)  # batch of 1 that goes to stage 2
        assert one.stage.tolist() == [2]
        np.testing.assert_allclose(
            one.logits, model(xt[:1], float(conf[0]) + 1e-3).logits.numpy(), atol=1e-4, rtol=1e-4
        )
        th = mixed_threshold(conf)
        timed = pipe.run(x, th, timing=True)
        assert set(timed.timings) == {"stage1", "gate", "stage2", "total"}
        assert timed.timings["total"] >= timed.timings["stage1"] > 0
        # the timed path is its own copy of the gate and compaction: it answers as the model does too
        ref = model(xt, th)
        assert 0 < int((ref.stage == 2).sum()) < len(x)
        np.testing.assert_allclose(timed.logits, ref.logits.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(timed.stage, ref.stage.numpy())
        np.testing.assert_allclose(timed.confidence, ref.confidence.numpy(), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_fixed_batch_graphs_are_padded_and_chunked(fixed_artifacts):
    model, folder = fixed_artifacts
    opened = open_pipeline(folder, backend="onnxruntime", device="cpu")
    assert opened.pipeline.buckets == (4,)
    xt = torch.randn(11, 3, 128, 128)  # 3 chunks of stage 1, last one partial
    conf = model.forward_stage1(xt).confidence
    with opened.pipeline as pipe:
        for th in (0.0, mixed_threshold(conf), 1.01):  # 0, some, all 11 hard samples for stage 2
            got = pipe.run(xt.numpy(), th)
            ref = model(xt, th)
            np.testing.assert_allclose(got.logits, ref.logits.numpy(), atol=1e-4, rtol=1e-4)
            np.testing.assert_array_equal(got.stage, ref.stage.numpy())


class CountingRunner(TorchRunner):
    """A torch runner that records batch sizes and accepts at most max_batch samples."""

    def __init__(self, *args, limit=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.limit = limit
        self.seen: list[int] = []

    @property
    def max_batch(self):
        return self.limit

    def _infer(self, feed):
        self.seen.append(next(iter(feed.values())).shape[0])
        return super()._infer(feed)


@torch.no_grad()
def test_buckets_pad_stage2_and_max_batch_chunks_it():
    model = make_tiny("cf-vit")
    cfg = model.cfg
    s1 = CountingRunner("s1", graph_module(model, "stage1"), *graph_specs(cfg, "stage1"))
    s2 = CountingRunner("s2", graph_module(model, "stage2"), *graph_specs(cfg, "stage2"), limit=4)
    x = torch.randn(7, 3, 128, 128)
    with EarlyExitPipeline(s1, s2, threshold=1.01, buckets=(1, 2, 4)) as pipe:
        got = pipe.run(x.numpy())
    assert s1.seen == [7] and s2.seen == [4, 4]  # 7 hard samples: chunks of 4 and 3, the 3 padded to 4
    np.testing.assert_allclose(got.logits, model(x, 1.01).logits.numpy(), atol=1e-5, rtol=1e-5)
    assert [bucket_for(n, (1, 2, 4)) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 5]


def test_auto_backend_choice_says_why(artifacts):
    _, folder = artifacts
    m = Manifest.load(folder)
    choice = choose_backend(m, "auto", "cpu")
    if importlib.util.find_spec("openvino") is not None:  # on a CPU, auto prefers OpenVINO
        assert choice.backend == "openvino" and choice.provider == "CPU"
        assert "faster than ONNX Runtime" in choice.describe()
    else:
        assert choice.backend == "onnxruntime" and choice.provider == "cpu"
        assert "onnxruntime" in choice.describe()
    with pytest.raises(BackendError, match="needs engines"):
        choose_backend(m, "tensorrt")
    with pytest.raises(BackendError, match="no CUDA provider"):
        choose_backend(m, "auto", "cuda")


def test_missing_provider_fails_clearly(artifacts):
    _, folder = artifacts
    m = Manifest.load(folder)
    runner = make_runner(folder, m, "stage1", BackendChoice("onnxruntime", "cuda", "cuda", "test"))
    with pytest.raises(BackendError, match="no CUDAExecutionProvider here"):
        runner.activate()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_graph_that_is_not_the_manifests_fails_naming_the_file(artifacts, backend):
    """The real runtimes' view of a graph, held against the manifest (base.check_graph_io): the
    baseline in stage 1's place, and a manifest that says 96 px for a 128 px graph."""
    import dataclasses

    if backend == "openvino":
        pytest.importorskip("openvino")
        from sacvit_deploy.backends.openvino_backend import OpenVinoRunner

        def runner(path, inputs, outputs):
            return OpenVinoRunner(path, inputs, outputs, cache_dir=None)
    else:
        from sacvit_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner as runner

    _, folder = artifacts
    entry = Manifest.load(folder).graphs["stage1"]
    with pytest.raises(
        BackendError,
        match=r"baseline\.onnx: the graph's outputs \['logits'\] are not the manifest's \[.*'confidence'.*\]; "
        "the file belongs to another export: re-export the folder",
    ):
        runner(folder / "baseline.onnx", entry.inputs, entry.outputs).activate()
    small = [dataclasses.replace(t, shape=(*t.shape[:2], 96, 96)) for t in entry.inputs]
    with pytest.raises(
        BackendError,
        match=r"stage1\.onnx: input 'image' is float32 \((batch|\?), 3, 128, 128\) in the graph but "
        r"float32 \(batch, 3, 96, 96\) in the manifest; re-export the folder",
    ):
        runner(folder / "stage1.onnx", small, entry.outputs).activate()
    runner(folder / "stage1.onnx", entry.inputs, entry.outputs).activate().deactivate()  # the real one loads


def test_silent_provider_fallback_is_detected(artifacts, monkeypatch):
    """ONNX Runtime may create a session on the CPU when the CUDA libraries are missing."""
    import onnxruntime as ort

    _, folder = artifacts
    m = Manifest.load(folder)
    runner = make_runner(folder, m, "stage1", BackendChoice("onnxruntime", "cuda", "cuda", "test"))
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    real_session = ort.InferenceSession

    def cpu_only_session(path, sess_options=None, providers=None):
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", cpu_only_session)
    with pytest.raises(BackendError, match="fell back to CPUExecutionProvider"):
        runner.activate()


def test_onnxruntime_sessions_do_not_spin_by_default(artifacts):
    # Two sessions alternate in the pipeline: an idle one's busy-waiting workers would steal the cores.
    _, folder = artifacts
    m = Manifest.load(folder)
    with make_runner(folder, m, "stage1", CHOICES["onnxruntime"]) as runner:
        options = runner._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert runner.describe()["spinning"] is False
    with make_runner(folder, m, "stage1", CHOICES["onnxruntime"], spinning=True) as runner:
        with pytest.raises(RuntimeError):  # ORT's default (spinning) is left alone
            runner._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        assert runner.describe()["spinning"] is True


def test_a_bad_threshold_is_refused_on_every_call(artifacts):
    _, folder = artifacts
    opened = open_pipeline(folder, backend="onnxruntime", device="cpu")
    x = np.zeros((2, 3, 128, 128), np.float32)
    with opened.pipeline as pipe:
        for bad in (-1.0, float("nan"), float("inf")):
            with pytest.raises(SacvitError, match="finite number >= 0"):
                pipe.run(x, bad)
        assert pipe.run(x, 0.0).exit_rate == 1.0
        with pytest.raises(SacvitError, match="finite number >= 0"):
            pipe.run(x, -1.0)  # still refused after a good threshold was cached
