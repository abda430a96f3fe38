"""The contract every backend's runners meet, checked the same way for torch, ONNX Runtime and TensorRT.

The currency is numpy: runners take numpy arrays and return numpy arrays (CPU runners) or device
arrays (GPU runners keeping outputs on the device; ``backends.arrays.to_host`` reads them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from sacvit_deploy.backends.arrays import is_device_array, to_host
from sacvit_deploy.backends.base import BackendError, Runner
from sacvit_deploy.core.manifest import TensorSpec
from sacvit_deploy.model import SACViT


@torch.no_grad()
def check_runner_contract(
    stage1: Runner,
    stage2: Runner,
    outputs: Sequence[TensorSpec],
    model: SACViT,
    while_active: Callable[[Runner], None] = lambda _r: None,
) -> None:
    """Lifecycle, declared outputs, parity with the reference, and feed checks before running."""
    size = model.cfg.img_size
    x = np.random.default_rng(0).standard_normal((3, 3, size, size), dtype=np.float32)
    assert isinstance(stage1.device, str) and stage1.device.split(":")[0] in ("cpu", "cuda")
    with pytest.raises(BackendError, match="not active"):
        stage1.infer({"image": x})
    with stage1:
        assert stage1.is_active
        out = stage1.infer({"image": x})
        assert list(out) == [s.name for s in outputs]
        for spec in outputs:
            t = out[spec.name]
            assert isinstance(t, np.ndarray) or is_device_array(t), type(t)
            host = to_host(t)
            assert isinstance(host, np.ndarray) and host.dtype == np.dtype(spec.dtype)
            assert host.shape == tuple(3 if isinstance(d, str) else d for d in spec.shape)
        ref = model.forward_stage1(torch.from_numpy(x))
        np.testing.assert_allclose(to_host(out["logits"]), ref.logits.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(
            np.sort(to_host(out["target_index"]), 1), np.sort(ref.target_index.numpy(), 1)
        )
        # A strided (non-contiguous) view of the same rows gives the same answer.
        strided = np.repeat(x, 2, axis=0)[::2]
        assert not strided.flags.c_contiguous
        np.testing.assert_allclose(
            to_host(stage1.infer({"image": strided})["logits"]), to_host(out["logits"]), atol=1e-5, rtol=1e-5
        )
        with pytest.raises(BackendError, match="is float64, expected float32"):
            stage1.infer({"image": x.astype(np.float64)})
        with pytest.raises(BackendError, match="expected float32"):
            stage1.infer({"image": torch.from_numpy(x)})  # torch tensors are converted at the API edge only
        half = size // 2
        with pytest.raises(
            BackendError, match=rf"has shape \(3, 3, {half}, {half}\), expected \(batch, 3, {size}, {size}\)"
        ):
            stage1.infer({"image": np.zeros((3, 3, half, half), np.float32)})
        with pytest.raises(BackendError, match="feed has inputs"):
            stage1.infer({"pixels": x})
        while_active(stage1)
    assert not stage1.is_active
    with stage2:
        feed = {
            "image": x,
            "target_index": ref.target_index.numpy(),
            "nontarget_tokens": ref.nontarget_tokens.numpy(),
            "target_features": ref.target_features.numpy(),
        }
        logits = to_host(stage2.infer(feed)["logits"])
        ref2 = model.forward_stage2(torch.from_numpy(x), *(ref[i] for i in (2, 3, 4)))
        np.testing.assert_allclose(logits, ref2.numpy(), atol=1e-4, rtol=1e-4)
        with pytest.raises(BackendError, match="disagree on the batch size"):
            stage2.infer({**feed, "target_index": feed["target_index"][:2]})
