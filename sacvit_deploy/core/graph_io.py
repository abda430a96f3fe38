"""The graphs' tensor names and specs: what stage 1, stage 2 and the baseline take and return.

Torch-free, so the runtime (which must run without torch) and the model (which builds the graphs)
share one definition. ``model/sacvit.py`` asserts that its ``Stage1Output`` fields are these names.
"""

from __future__ import annotations

from typing import List, Tuple, Union

from sacvit_deploy.core.config import ModelConfig
from sacvit_deploy.core.manifest import TensorSpec

ROLES = ("stage1", "stage2", "baseline")
STAGE1_INPUTS = ("image",)
STAGE1_OUTPUTS = ("logits", "confidence", "target_index", "nontarget_tokens", "target_features")
STAGE2_INPUTS = ("image", "target_index", "nontarget_tokens", "target_features")
STAGE2_OUTPUTS = ("logits",)


def graph_specs(
    cfg: ModelConfig, role: str, batch: Union[int, str] = "batch"
) -> Tuple[List[TensorSpec], List[TensorSpec]]:
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
