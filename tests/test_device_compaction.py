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

from sacvit_deploy.backends.factory import BackendChoice, make_runner
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.runtime.pipeline import EarlyExitPipeline
from tests.fakes.fake_cuda_python import API_MODULES
from tests.fakes.fixtures import build, install_fake_tensorrt, shared_export

TRT = BackendChoice("tensorrt", "cuda", None, "test")
MAX_BATCH = 16  # the engines' profile: 1..16
BUCKET = 8  # stage 2 runs the hard samples padded up to this many rows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("compaction")
    model, export = shared_export(tmp_path_factory)
    with pytest.MonkeyPatch.context() as mp:
        install_fake_tensorrt(mp, root, "10.3.0")
        build(export, root / "engines", max_batch=MAX_BATCH, opt_batch=8, baseline=False)
    return model, root / "engines"


def _runs(index: np.ndarray) -> int:
    """Runs of consecutive values in ``index`` (what take_rows copies in one piece each)."""
    return int(index.size and 1 + np.count_nonzero(np.diff(index) != 1))


@pytest.mark.parametrize(
    "cuda", ["bindings", "cudart", None], ids=["cuda-python-new", "cuda-python-old", "pycuda"]
)
def test_the_pipeline_compacts_hard_samples_on_the_device(built, monkeypatch, tmp_path, cuda):
    model, engines = built
    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0", cuda=cuda)
    copies = sys.modules["pycuda.driver" if cuda is None else API_MODULES[cuda]].copies
    m = Manifest.load(engines)
    x = np.random.default_rng(5).standard_normal((11, 3, 128, 128), dtype=np.float32)
    with torch.no_grad():
        conf = model.forward_stage1(torch.from_numpy(x)).confidence.numpy()
    c = np.sort(conf)
    threshold = float((c[5] + c[6]) / 2)  # 6 hard samples, padded to the bucket of 8
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
