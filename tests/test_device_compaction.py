"""Compaction on the device: the early-exit flow of the numpy runtime, on TensorRT runners (fake TensorRT,
fake cuda-python / pycuda memory), counting every transfer.

The real ``EarlyExitPipeline`` (stage 1 on the batch -> ``to_host(confidence)`` -> hard indices on the
host -> ``take_rows`` of each stage-1 output stage 2 reads -> padded to the bucket with ``pad_rows`` ->
stage 2 -> logits scattered on the host) on TensorRT runners whose memory counts every copy.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from sacvit_deploy.backends.device import DeviceArray
from sacvit_deploy.backends.factory import BackendChoice, make_runner
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.runtime.api import Pipeline
from sacvit_deploy.runtime.loader import OpenedPipeline, open_pipeline
from sacvit_deploy.runtime.pipeline import EarlyExitPipeline
from tests.fakes.fake_cuda_python import API_MODULES
from tests.fakes.fake_torch_cuda import FakeCudaTensor, install_cpu_torch_memory
from tests.fakes.fixtures import fake_engines, install_fake_tensorrt, shared_export

TRT = BackendChoice("tensorrt", "cuda", None, "test")
MAX_BATCH = 16  # the engines' profile: 1..16
BUCKET = 8  # stage 2 runs the hard samples padded up to this many rows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model, _, engines = fake_engines(
        tmp_path_factory, "compaction", max_batch=MAX_BATCH, opt_batch=8, baseline=False
    )
    return model, engines


def _runs(index: np.ndarray) -> int:
    """Runs of consecutive values in ``index`` (what take_rows copies in one piece each)."""
    return int(index.size and 1 + np.count_nonzero(np.diff(index) != 1))


def _six_hard(model, x: np.ndarray) -> float:
    """The threshold midway between the 6th and 7th lowest confidences: 6 hard samples."""
    with torch.no_grad():
        c = np.sort(model.forward_stage1(torch.from_numpy(x)).confidence.numpy())
    return float((c[5] + c[6]) / 2)


@pytest.mark.parametrize(
    "cuda", ["bindings", "cudart", None], ids=["cuda-python-new", "cuda-python-old", "pycuda"]
)
def test_the_pipeline_compacts_hard_samples_on_the_device(built, monkeypatch, tmp_path, cuda):
    model, engines = built
    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0", cuda=cuda)
    copies = sys.modules["pycuda.driver" if cuda is None else API_MODULES[cuda]].copies
    m = Manifest.load(engines)
    x = np.random.default_rng(5).standard_normal((11, 3, 128, 128), dtype=np.float32)
    threshold = _six_hard(model, x)  # 6 hard samples, padded to the bucket of 8
    with make_runner(engines, m, "stage1", TRT) as r1, make_runner(engines, m, "stage2", TRT) as r2:
        pipe = EarlyExitPipeline(r1, r2, threshold, buckets=(BUCKET, MAX_BATCH))
        copies.clear()
        got = pipe.run(x)
    hard = np.flatnonzero(got.stage == 2)
    assert hard.size == 6
    # stage-1 outputs other than confidence and logits never left the device: the only device-to-host
    # copies are the confidences (the gate: B floats), stage 1's logits and stage 2's logits (only the 6
    # real rows: the padding rows are sliced off on the device)
    classes = got.logits.shape[1]
    dtoh = sorted(n for k, n in copies if k == "dtoh")
    assert dtoh == sorted([4 * len(x), 4 * classes * len(x), 4 * classes * hard.size])
    # compaction: one device-to-device copy per run of consecutive hard rows, per stage-2 device input,
    # plus the padding from 6 rows to 8 (the body, the last row, then one doubling copy)
    device_inputs = [n for n in r2.input_specs if n != "image"]
    dtod = [n for k, n in copies if k == "dtod"]
    assert len(device_inputs) == 3 and len(dtod) == len(device_inputs) * (_runs(hard) + 3)
    # host-to-device: the batch for stage 1 and the padded hard images for stage 2, nothing else
    assert sorted(n for k, n in copies if k == "htod") == sorted([x.nbytes, BUCKET * x[0].nbytes])
    # and the answer is SACViT.forward's, sample by sample
    with torch.no_grad():
        ref = model(torch.from_numpy(x), threshold)
    np.testing.assert_allclose(got.logits, ref.logits.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(got.stage, ref.stage.numpy())


# ---- torch tensors at the API edge -----------------------------------------------------------------------
def _spy(monkeypatch, pipeline) -> list:
    """The batches ``pipeline.run`` receives."""
    seen, run = [], pipeline.run

    def spying(images, threshold=None, timing=False):
        seen.append(images)
        return run(images, threshold, timing)

    monkeypatch.setattr(pipeline, "run", spying)
    return seen


def _trt_pipeline(engines, threshold) -> OpenedPipeline:
    m = Manifest.load(engines)
    r1, r2 = make_runner(engines, m, "stage1", TRT), make_runner(engines, m, "stage2", TRT)
    return OpenedPipeline(EarlyExitPipeline(r1, r2, threshold, buckets=(BUCKET, MAX_BATCH)), m, engines, TRT)


def test_a_cuda_torch_tensor_goes_to_tensorrt_without_a_host_copy(built, monkeypatch, tmp_path):
    """Pipeline.run(cuda_tensor) on TensorRT: the tensor's memory is wrapped (backends.device.wrap_torch),
    stage 1 reads it where it lies, stage 2's hard images are compacted and padded device to device."""
    model, engines = built
    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0", cuda="bindings")
    copies = sys.modules[API_MODULES["bindings"]].copies
    torch_memory = install_cpu_torch_memory(monkeypatch)
    x = np.random.default_rng(5).standard_normal((11, 3, 128, 128), dtype=np.float32)
    threshold = _six_hard(model, x)
    tensor = FakeCudaTensor(torch.from_numpy(x))
    opened = _trt_pipeline(engines, threshold)
    seen = _spy(monkeypatch, opened.pipeline)
    with Pipeline(opened) as pipe:
        copies.clear()
        got = pipe.run(tensor)
    assert len(seen) == 1 and isinstance(seen[0], DeviceArray) and seen[0].ptr == tensor.data_ptr()
    assert tensor.host_copies == 0  # neither the API, its checks nor the pipeline copied it to the host
    assert [n for k, n in copies if k == "htod"] == []  # and nothing went host to device
    # the 6 hard images: compacted (one copy per run of consecutive rows) and padded to the bucket of 8
    # in the tensor's memory, device to device
    hard = np.flatnonzero(got.stage == 2)
    assert hard.size == 6 and len(torch_memory.copies) == _runs(hard) + 3
    with torch.no_grad():
        ref = model(torch.from_numpy(x), threshold)
    np.testing.assert_allclose(got.logits, ref.logits.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(got.stage, ref.stage.numpy())


def test_a_cuda_torch_tensor_is_copied_to_the_host_for_other_runners(
    built, monkeypatch, tmp_path, tmp_path_factory
):
    """ONNX Runtime (numpy in), TensorRT on another GPU than the tensor's, and a CPU tensor: the
    pipeline gets numpy."""
    model, engines = built
    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0", cuda="bindings")
    install_cpu_torch_memory(monkeypatch, index=1)
    x = np.random.default_rng(5).standard_normal((11, 3, 128, 128), dtype=np.float32)
    threshold = _six_hard(model, x)
    export = shared_export(tmp_path_factory)[1]
    cases = [
        (
            open_pipeline(export, "onnxruntime", "cpu", threshold=threshold),
            FakeCudaTensor(torch.from_numpy(x)),
            1,
        ),
        (_trt_pipeline(engines, threshold), FakeCudaTensor(torch.from_numpy(x), index=1), 1),
        (_trt_pipeline(engines, threshold), torch.from_numpy(x), 0),
    ]
    for opened, tensor, host_copies in cases:
        seen = _spy(monkeypatch, opened.pipeline)
        with Pipeline(opened) as pipe:
            got = pipe.run(tensor)
        assert len(seen) == 1 and isinstance(seen[0], np.ndarray), (opened.choice, seen)
        if isinstance(tensor, FakeCudaTensor):
            assert tensor.host_copies == host_copies
        else:  # a CPU tensor reaches the pipeline as its own memory (tensor.numpy()), not a copy
            assert np.shares_memory(seen[0], tensor.numpy())
        with torch.no_grad():
            ref = model(torch.from_numpy(x), threshold)
        np.testing.assert_allclose(got.logits, ref.logits.numpy(), atol=1e-4, rtol=1e-4)
