"""torch on a CUDA GPU (no TensorRT needed): the torch backend's pipeline and the GPU query.

Skipped (with the reason) where torch sees no CUDA GPU, i.e. on every CPU-only CI machine. On a GPU
machine: ``scripts/gpu_check.sh`` runs these with ``pytest -m gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sacvit_deploy.backends.factory import BackendChoice, make_runner
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.runtime.pipeline import EarlyExitPipeline, mixed_threshold
from tests.fakes.fixtures import shared_export

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    return torch.device("cuda", 0)


def test_detect_gpu_reads_the_name_and_compute_capability(cuda):
    from sacvit_deploy.backends.gpu import detect_gpu

    gpu = detect_gpu(0)
    props = torch.cuda.get_device_properties(0)
    assert gpu.name == props.name and gpu.compute_capability == f"{props.major}.{props.minor}"
    assert gpu.memory_bytes == props.total_memory > 0


@torch.no_grad()
def test_torch_pipeline_on_cuda_equals_the_cpu_reference_for_every_exit_pattern(cuda, tmp_path_factory):
    model, export = shared_export(tmp_path_factory)
    m = Manifest.load(export)
    choice = BackendChoice("torch", "cuda", None, "test")
    torch.manual_seed(3)
    x = torch.randn(9, 3, 128, 128)
    conf = model.forward_stage1(x).confidence
    with EarlyExitPipeline(
        make_runner(export, m, "stage1", choice), make_runner(export, m, "stage2", choice), 0.5
    ) as pipe:
        assert pipe.device == "cuda:0"  # the runner protocol's string (the numpy currency)
        for th in (0.0, mixed_threshold(conf), 1.01):
            ref = model(x, th)
            got = pipe.run(x.numpy(), th)  # numpy in: the runners move it to the GPU and back
            assert isinstance(got.logits, np.ndarray) and isinstance(got.stage, np.ndarray)
            # TF32 / fused kernels on the GPU: a looser tolerance than CPU-vs-CPU, exits decided off the boundary
            np.testing.assert_allclose(got.logits, ref.logits.numpy(), atol=2e-3, rtol=2e-3)
            np.testing.assert_array_equal(got.stage, ref.stage.numpy())
