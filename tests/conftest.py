"""Shared fixtures: tiny models with every moving part, seeded so failures reproduce."""

from __future__ import annotations

import shutil

import pytest
import torch

from sacvit_deploy.model import SACViT, tiny_config
from sacvit_deploy.runtime.images import sample_images


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


def trained_scale(model, logit_std: float = 4.0, logit_max: float = 15.0, seed: int = 0):
    """Scale the head so that logits look like a trained model's: std >= ``logit_std`` and
    max |logit| >= ``logit_max`` on random images (init-scale weights give logits of ~0.1).

    The float32 rounding of a deep network grows with the activations' scale; tests that only ever
    see tiny logits cannot tell whether a tolerance holds for real checkpoints."""
    cfg = model.cfg
    x = torch.randn(
        16, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        for _ in range(4):
            logits = model.forward_stage1(x).logits
            f = max(logit_std / float(logits.std()), logit_max / float(logits.abs().max()))
            if f <= 1.0:
                break
            model.head.weight.mul_(f * 1.01)
            model.head.bias.mul_(f * 1.01)
    return model


@pytest.fixture(scope="session")
def exported_tiny(tmp_path_factory):
    """One verified tiny SAC-ViT export per test session, for tests that only read it."""
    from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
    from sacvit_deploy.export.verify import verify_export

    model = make_tiny("sacvit")
    folder = tmp_path_factory.mktemp("exported-tiny") / "export"
    export_artifacts(model, folder, ExportOptions(), "sacvit", verify=lambda f, m: verify_export(f, m, model))
    return folder


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    """The real photos bundled with the package, copied into a folder of their own."""
    folder = tmp_path_factory.mktemp("images")
    for p in sample_images():
        shutil.copyfile(p, folder / p.name)
    return folder


def tiny_train_options(data_dir, out, **changes):
    """TrainOptions for a quick CPU run of the tiny model (2 epochs, batch 6, no loader workers) on
    ``data_dir`` (e.g. the ``colour_data`` fixture), with ``changes`` on top."""
    from sacvit_deploy.training import TrainOptions

    base = dict(
        data_dir=data_dir,
        out_dir=out,
        model_config=tiny_config(),
        epochs=2,
        batch_size=6,
        lr=1e-3,
        warmup_epochs=1,
        selection_warmup_epochs=1,
        workers=0,
        device="cpu",
    )
    return TrainOptions(**{**base, **changes})


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    """A tiny training ImageFolder (tests/fakes/pictures.write_colour_folder: 3 colour classes, 8 train
    and 3 val images each), once per test module."""
    from tests.fakes.pictures import write_colour_folder

    return write_colour_folder(tmp_path_factory.mktemp("colour-data"))
