"""The contract every backend's runners meet, checked the same way for torch, ONNX Runtime and TensorRT."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

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
    x = torch.randn(3, 3, size, size)
    with pytest.raises(BackendError, match="not active"):
        stage1.infer({"image": x})
    with stage1:
        assert stage1.is_active
        out = stage1.infer({"image": x})
        assert list(out) == [s.name for s in outputs]
        for spec in outputs:
            t = out[spec.name]
            assert str(t.dtype).removeprefix("torch.") == spec.dtype
            assert t.shape == tuple(3 if isinstance(d, str) else d for d in spec.shape)
        ref = model.forward_stage1(x)
        torch.testing.assert_close(out["logits"], ref.logits, atol=1e-4, rtol=1e-4)
        assert torch.equal(out["target_index"].sort(1).values, ref.target_index.sort(1).values)
        with pytest.raises(BackendError, match="expected float32"):
            stage1.infer({"image": x.double()})
        half = size // 2
        with pytest.raises(
            BackendError, match=rf"has shape \(3, 3, {half}, {half}\), expected \(batch, 3, {size}, {size}\)"
        ):
            stage1.infer({"image": torch.randn(3, 3, half, half)})
        with pytest.raises(BackendError, match="feed has inputs"):
            stage1.infer({"pixels": x})
        while_active(stage1)
    assert not stage1.is_active
    with stage2, pytest.raises(BackendError, match="disagree on the batch size"):
        stage2.infer(
            {
                "image": x,
                "target_index": ref.target_index[:2],
                "nontarget_tokens": ref.nontarget_tokens,
                "target_features": ref.target_features,
            }
        )
