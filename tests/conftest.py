"""Shared fixtures: tiny models with every moving part, seeded so failures reproduce."""

from __future__ import annotations

import pytest
import torch

from sacvit_deploy.model import SACViT, tiny_config


def make_tiny(fmt: str = "sacvit", seed: int = 0, **overrides) -> SACViT:
    torch.manual_seed(seed)
    model = SACViT(tiny_config(fmt, **overrides)).eval()
    # Random init gives near-uniform predictions; a sharper head spreads the confidences so that
    # thresholds split batches into exiting and non-exiting samples.
    with torch.no_grad():
        model.head.weight.mul_(40.0)
    return model


@pytest.fixture(params=["sacvit", "lf-vit", "cf-vit"])
def tiny_model(request) -> SACViT:
    return make_tiny(request.param)


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(123)
    return torch.randn(6, 3, 128, 128)
