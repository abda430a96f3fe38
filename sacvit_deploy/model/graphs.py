"""The three exported graphs as modules with tuple outputs, and their tensor specs.

Names are the contract between export, manifest, backends and runtime:

* stage1: ``image`` -> ``logits``, ``confidence``, ``target_index`` (int32), ``nontarget_tokens``,
  ``target_features``. The exit gate is the confidence (max softmax); the threshold is applied by the
  runtime so it can change without re-exporting.
* stage2: ``image``, ``target_index``, ``nontarget_tokens``, ``target_features`` -> ``logits``.
* baseline: ``image`` -> ``logits`` (single-stage DeiT at full resolution).
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, nn

from sacvit_deploy.core.graph_io import ROLES, graph_specs
from sacvit_deploy.model.sacvit import DeiT, SACViT

__all__ = ["ROLES", "BaselineGraph", "Stage1Graph", "Stage2Graph", "graph_module", "graph_specs"]


class Stage1Graph(nn.Module):
    def __init__(self, model: SACViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
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


def graph_module(model: SACViT, role: str, baseline: Optional[DeiT] = None) -> nn.Module:
    if role == "stage1":
        return Stage1Graph(model)
    if role == "stage2":
        return Stage2Graph(model)
    if role == "baseline":
        return BaselineGraph(baseline if baseline is not None else DeiT.from_sacvit(model))
    raise ValueError(f"unknown graph role {role!r}")
