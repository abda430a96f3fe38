"""Compaction on the device: the early-exit flow of the numpy runtime, on TensorRT runners (fake TensorRT,
fake cuda-python / pycuda memory), counting every transfer.

STANDALONE COPY OF THE PIPELINE FLOW. The pipeline (runtime/pipeline.py) is being rewritten to the
issue-20 protocol by helper ``rt`` (numpy + duck-typed device arrays through backends/arrays.py); this
branch's pipeline still speaks torch. ``_early_exit_flow`` below is a minimal copy of that flow as
PROTOCOL.md describes it (stage 1 on the batch -> ``to_host(confidence)`` -> hard indices on the host ->
``take_rows`` of each stage-1 output stage 2 reads -> chunks of the engines' max batch, the last padded
with ``pad_rows`` -> stage 2 -> logits scattered on the host). INTEGRATOR: after merging, replace the
call to ``_early_exit_flow`` with the real ``EarlyExitPipeline(r1, r2, th).run(x)`` (keeping the
transfer assertions; the chunk/pad counts then follow the pipeline's buckets) and delete the copy.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from sacvit_deploy.backends import tensorrt_backend
from sacvit_deploy.backends.device import DeviceArray
from sacvit_deploy.backends.factory import BackendChoice, make_runner
from sacvit_deploy.core.exit_rule import exit_mask
from sacvit_deploy.core.manifest import Manifest
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


def _early_exit_flow(r1, r2, x: np.ndarray, threshold: float, copies: list) -> dict:
    """A minimal copy of the protocol pipeline (see the module docstring); returns what it did."""
    out1 = r1.infer({"image": x})
    assert all(isinstance(a, DeviceArray) for a in out1.values())
    before_gate = len(copies)
    confidence = out1["confidence"].to_host()  # the gate: B floats, the one sync of the gate
    gate_copies = copies[before_gate:]
    hard = np.flatnonzero(~exit_mask(confidence, np.float32(threshold)))
    logits = out1["logits"].to_host()
    stage = np.ones(len(x), dtype=np.int64)
    chunks = 0
    if hard.size:
        device_inputs = [n for n in r2.input_specs if n != "image"]
        compact = {n: out1[n].take_rows(hard) for n in device_inputs}  # on the device
        images = x[hard]
        results = []
        for start in range(0, hard.size, BUCKET):
            stop = min(start + BUCKET, hard.size)
            feed = {"image": images[start:stop]}
            feed.update({n: a.slice_rows(start, stop) for n, a in compact.items()})
            if stop - start < BUCKET:  # pad a short chunk up to the bucket, as the pipeline does
                feed = {
                    n: np.concatenate([a, np.repeat(a[-1:], BUCKET - len(a), 0)])
                    if n == "image"
                    else a.pad_rows(BUCKET)
                    for n, a in feed.items()
                }
            results.append(r2.infer(feed)["logits"].to_host()[: stop - start])
            chunks += 1
        logits[hard] = np.concatenate(results)
        stage[hard] = 2
    return {"logits": logits, "stage": stage, "confidence": confidence, "hard": hard, "gate": gate_copies}


@pytest.mark.parametrize(
    "cuda", ["bindings", "cudart", None], ids=["cuda-python-new", "cuda-python-old", "pycuda"]
)
def test_compaction_flow_standalone__switch_to_the_real_pipeline_after_merge(
    built, monkeypatch, tmp_path, cuda
):
    model, engines = built
    monkeypatch.setattr(tensorrt_backend, "TORCH_BRIDGE", False)
    install_fake_tensorrt(monkeypatch, tmp_path, "10.3.0", cuda=cuda)
    copies = sys.modules["pycuda.driver" if cuda is None else API_MODULES[cuda]].copies
    m = Manifest.load(engines)
    x = np.random.default_rng(5).standard_normal((11, 3, 128, 128), dtype=np.float32)
    with torch.no_grad():
        conf = model.forward_stage1(torch.from_numpy(x)).confidence.numpy()
    c = np.sort(conf)
    threshold = float((c[5] + c[6]) / 2)  # 6 hard samples, padded to the bucket of 8
    with make_runner(engines, m, "stage1", TRT) as r1, make_runner(engines, m, "stage2", TRT) as r2:
        copies.clear()
        got = _early_exit_flow(r1, r2, x, threshold, copies)
    hard = got["hard"]
    assert hard.size == 6
    # the gate copied exactly B confidences to the host, nothing else
    assert got["gate"] == [("dtoh", 4 * len(x))]
    # stage-1 outputs other than confidence and logits never left the device: the only device-to-host
    # copies are the confidences, stage 1's logits and stage 2's logits (8 rows: the padded bucket)
    classes = got["logits"].shape[1]
    dtoh = sorted(n for k, n in copies if k == "dtoh")
    assert dtoh == sorted([4 * len(x), 4 * classes * len(x), 4 * classes * BUCKET])
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
    np.testing.assert_allclose(got["logits"], ref.logits.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(got["stage"], ref.stage.numpy())
