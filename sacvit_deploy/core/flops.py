"""Analytic FLOPs, counted as multiply-accumulates the way the DeiT / LF-ViT papers count them.

Per block: 12*N*D^2 + 2*N^2*D for mlp_ratio 4 (qkv 3ND^2, proj ND^2, MLP 8ND^2, QK^T and AV N^2 D
each). Cluster attention replaces N^2 with the number of (query, key) pairs it actually scores. Patch
embedding, the head and the reuse MLP are added; norms, softmax and GELU are not (nor in the papers).

Two accountings of stage 2:

* ``implementation`` (default, the one every command prints): what this package's graphs compute.
  Only the 4k target patches are embedded and the reuse MLP runs on the k target features only.
* ``reference``: what the LF-ViT / CF-ViT code computes and its papers report: all (2S)^2 patches are
  embedded and the reuse MLP runs on all S^2 stage-1 tokens (LF-ViT DeiT-S stage 2: 2.70 G, against
  2.64 G implemented). Kept to reproduce the papers' figures (tests/test_flops.py); docs/spec.md
  explains the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

from sacvit_deploy.core.config import ModelConfig

GIGA = 1e9


def block_macs(num_tokens: int, attn_pairs: int, dim: int, mlp_ratio: float) -> int:
    linear = num_tokens * (4 * dim * dim + 2 * int(dim * mlp_ratio) * dim)
    return linear + 2 * attn_pairs * dim


def _patch_macs(cfg: ModelConfig, num_patches: int) -> int:
    return num_patches * cfg.in_chans * cfg.patch_size**2 * cfg.embed_dim


def _head_macs(cfg: ModelConfig) -> int:
    return cfg.embed_dim * cfg.num_classes


def _mlp_macs(cfg: ModelConfig, num_tokens: int) -> int:
    return num_tokens * 2 * int(cfg.mlp_ratio * cfg.embed_dim) * cfg.embed_dim


def baseline_macs(cfg: ModelConfig) -> int:
    """Single-stage DeiT at full resolution (DeiT-S 224: 4.6 G)."""
    n = cfg.baseline_tokens
    blocks = cfg.depth * block_macs(n, n * n, cfg.embed_dim, cfg.mlp_ratio)
    return _patch_macs(cfg, cfg.num_fine) + blocks + _head_macs(cfg)


def stage1_macs(cfg: ModelConfig) -> int:
    """Stage 1 at half resolution (DeiT-S 7x7: 1.10 G)."""
    n = cfg.stage1_tokens
    blocks = cfg.depth * block_macs(n, n * n, cfg.embed_dim, cfg.mlp_ratio)
    return _patch_macs(cfg, cfg.num_coarse) + blocks + _head_macs(cfg)


def stage2_attention_pairs(cfg: ModelConfig) -> int:
    n = cfg.stage2_tokens
    if cfg.attention == "global":
        return n * n
    t, o = cfg.num_fine_targets, cfg.num_nontargets
    return n + t * (1 + t) + o * (1 + o)  # cls row + target cluster + non-target cluster


def stage2_macs(cfg: ModelConfig, accounting: str = "implementation") -> int:
    """Stage 2 on one hard sample (LF-ViT 7x7: about 2.70 G in the reference accounting)."""
    if accounting not in ("implementation", "reference"):
        raise ValueError(f"accounting must be 'implementation' or 'reference', not {accounting!r}")
    n = cfg.stage2_tokens
    blocks = cfg.depth * block_macs(n, stage2_attention_pairs(cfg), cfg.embed_dim, cfg.mlp_ratio)
    if accounting == "reference":
        embed = _patch_macs(cfg, cfg.num_fine) + _mlp_macs(cfg, cfg.num_coarse)
    else:
        embed = _patch_macs(cfg, cfg.num_fine_targets) + _mlp_macs(cfg, cfg.num_targets)
    return embed + blocks + _head_macs(cfg)


def expected_macs(cfg: ModelConfig, exit_rate: float, accounting: str = "implementation") -> float:
    """Mean cost per image when a fraction ``exit_rate`` of the images exits after stage 1."""
    if not 0.0 <= exit_rate <= 1.0:
        raise ValueError(f"exit_rate must be in [0, 1], not {exit_rate}")
    return stage1_macs(cfg) + (1.0 - exit_rate) * stage2_macs(cfg, accounting)


@dataclass(frozen=True)
class FlopsReport:
    """GFLOPs (G multiply-accumulates) of one configuration."""

    baseline: float
    stage1: float
    stage2: float
    stage2_reference: float

    @classmethod
    def of(cls, cfg: ModelConfig) -> FlopsReport:
        return cls(
            baseline=baseline_macs(cfg) / GIGA,
            stage1=stage1_macs(cfg) / GIGA,
            stage2=stage2_macs(cfg) / GIGA,
            stage2_reference=stage2_macs(cfg, "reference") / GIGA,
        )

    def expected(self, exit_rate: float) -> float:
        return self.stage1 + (1.0 - exit_rate) * self.stage2

    def exit_rate_for_saving(self, saving: float) -> float:
        """Exit rate at which the expected cost is (1 - saving) x the baseline's."""
        target = (1.0 - saving) * self.baseline
        return min(1.0, max(0.0, 1.0 - (target - self.stage1) / self.stage2))


def format_gflops(value: float) -> str:
    """GFLOPs as every command prints them: 3 significant digits (4.60, 2.64, 0.00732)."""
    return f"{value:.1f}" if value >= 100 else f"{value:#.3g}"
