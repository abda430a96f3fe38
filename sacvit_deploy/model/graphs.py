"""The three exported graphs as modules with tuple outputs, and their tensor specs.

Names are the contract between export, manifest, backends and runtime:

* stage1: ``image`` -> ``logits``, ``confidence``, ``target_index`` (int32), ``nontarget_tokens``,
  ``target_features``. The exit gate is the confidence (max softmax); the threshold is applied by the
  runtime so it can change without re-exporting.
* stage2: ``image``, ``target_index``, ``nontarget_tokens``, ``target_features`` -> ``logits``.
* baseline: ``image`` -> ``logits`` (single-stage DeiT at full resolution).
"""

from __future__ import annotations

from torch import Tensor, nn

from sacvit_deploy.core.manifest import TensorSpec
from sacvit_deploy.model.config import ModelConfig
from sacvit_deploy.model.sacvit import STAGE1_OUTPUTS, STAGE2_INPUTS, STAGE2_OUTPUTS, DeiT, SACViT

ROLES = ("stage1", "stage2", "baseline")


class Stage1Graph(nn.Module):
    def __init__(self, model: SACViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.forward_stage1(image))


class Stage2Graph(nn.Module):
    def __init__(self, model: SACViT) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, image: Tensor, target_index: Tensor, nontarget_tokens: Tensor, target_features: Tensor
    ) -> Tensor:
        return self.model.forward_stage2(image, target_index, nontarget_tokens, target_features)


class BaselineGraph(nn.Module):
    def __init__(self, model: DeiT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return self.model(image)


def graph_specs(
    cfg: ModelConfig, role: str, batch: int | str = "batch"
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of one graph, straight from the config."""
    r, d, c = cfg.img_size, cfg.embed_dim, cfg.num_classes
    image = TensorSpec("image", "float32", (batch, cfg.in_chans, r, r))
    if role == "stage1":
        shapes = {
            "logits": ("float32", (batch, c)),
            "confidence": ("float32", (batch,)),
            "target_index": ("int32", (batch, cfg.num_targets)),
            "nontarget_tokens": ("float32", (batch, cfg.num_nontargets, d)),
            "target_features": ("float32", (batch, cfg.num_targets, d)),
        }
        assert tuple(shapes) == STAGE1_OUTPUTS
        return [image], [TensorSpec(n, dt, s) for n, (dt, s) in shapes.items()]
    if role == "stage2":
        _, outputs = graph_specs(cfg, "stage1", batch)
        by_name = {t.name: t for t in outputs}
        inputs = [image] + [by_name[n] for n in STAGE2_INPUTS[1:]]
        return inputs, [TensorSpec(STAGE2_OUTPUTS[0], "float32", (batch, c))]
    if role == "baseline":
        return [image], [TensorSpec("logits", "float32", (batch, c))]
    raise ValueError(f"unknown graph role {role!r}")


def graph_module(model: SACViT, role: str, baseline: DeiT | None = None) -> nn.Module:
    if role == "stage1":
        return Stage1Graph(model)
    if role == "stage2":
        return Stage2Graph(model)
    if role == "baseline":
        return BaselineGraph(baseline if baseline is not None else DeiT.from_sacvit(model))
    raise ValueError(f"unknown graph role {role!r}")
