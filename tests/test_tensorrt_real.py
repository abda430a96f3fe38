"""Real TensorRT on a real GPU: build engines from a tiny export and compare them with ONNX Runtime.

Skipped (with the reason) where the ``tensorrt`` package or a CUDA GPU is missing, which includes
every CPU-only CI machine. Run on a GPU box with: ``pytest -m tensorrt tests/test_tensorrt_real.py``.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.runtime.loader import open_pipeline
from tests.fakes.fixtures import tiny_export

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]


@pytest.fixture(scope="module")
def trt():
    module = pytest.importorskip("tensorrt", reason="the TensorRT Python package is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch (TensorRT needs one)")
    return module


@pytest.fixture(scope="module")
def engines(trt, tmp_path_factory):
    from sacvit_deploy.backends.trt_version import TrtVersion
    from sacvit_deploy.engine.build import BuildOptions, build_engines

    root = tmp_path_factory.mktemp("real-trt")
    target = "8.5" if TrtVersion.parse(trt.__version__) < TrtVersion(8, 6) else "10"
    model, export = tiny_export(root / "export", target_trt=target)
    results = {}
    for precision in ("fp32", "fp16"):
        out = root / precision
        options = BuildOptions(
            fp16=precision == "fp16", max_batch=8, opt_batch=4, workspace_gib=1.0, parity_images=8
        )
        results[precision] = build_engines(export, out, options)
    return model, export, root, results


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_build_and_pass_parity(engines, precision):
    _, _, root, results = engines
    assert not results[precision].warnings
    m = Manifest.load(root / precision)
    m.verify(root / precision, "engines")
    parity = m.tensorrt.parity
    assert parity["passed"], parity
    stage1 = next(r for r in parity["rows"] if r["check"] == "stage1")
    assert stage1["max_abs_diff"] < (1e-3 if precision == "fp32" else 5e-2)


@torch.no_grad()
def test_stage1_engine_matches_onnxruntime(engines):
    _, export, root, _ = engines
    opened = open_pipeline(root / "fp32", backend="tensorrt")
    x = torch.randn(5, 3, 128, 128)
    session = ort.InferenceSession(str(export / "stage1.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(["logits"], {"image": x.numpy()})[0]
    with opened.pipeline.stage1 as runner:
        got = runner.infer({"image": x})["logits"].cpu().numpy()
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)


@torch.no_grad()
def test_pipeline_on_real_engines_equals_the_model(engines):
    model, _, root, _ = engines
    opened = open_pipeline(root / "fp32", backend="tensorrt")
    x = torch.randn(11, 3, 128, 128)
    with opened.pipeline as pipe:
        got = pipe.run(x.cuda(), 0.5)
    ref = model(x, 0.5)
    torch.testing.assert_close(got.logits.cpu(), ref.logits, atol=1e-3, rtol=1e-3)
    assert torch.equal(got.stage.cpu(), ref.stage)
