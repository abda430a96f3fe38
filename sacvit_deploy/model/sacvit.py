"""SAC-ViT (and LF-ViT / CF-ViT, which differ only in config) plus the single-stage DeiT baseline.

Stage 1 sees the image at half resolution and answers the easy samples; stage 2 re-embeds the target
tokens at full resolution, reuses the rest from stage 1 and runs the same blocks on the short
sequence. See ``SPEC.md`` for the exact computation. Shapes are static inside each stage: the only
dynamic dimension is the batch.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sacvit_deploy.core.exit_rule import exit_mask
from sacvit_deploy.core.graph_io import STAGE1_INPUTS, STAGE1_OUTPUTS, STAGE2_INPUTS, STAGE2_OUTPUTS  # noqa: F401
from sacvit_deploy.model import _torch_floor  # noqa: F401  (refuses a torch below the floor)
from sacvit_deploy.model.config import ModelConfig
from sacvit_deploy.model.layers import Block, Mlp, PatchEmbed, image_to_patches
from sacvit_deploy.model.selection import TokenSelector, fine_index_table


class Stage1Output(NamedTuple):
    """What stage 1 returns: its answer, its confidence, and exactly what stage 2 needs."""

    logits: Tensor  # (B, num_classes)
    confidence: Tensor  # (B,) max softmax probability: the exit gate compares it with the threshold
    target_index: Tensor  # (B, k) int32: coarse indices of the target tokens
    nontarget_tokens: Tensor  # (B, S*S - k, D): stage-1 INPUT embeddings of the other tokens
    target_features: Tensor  # (B, k, D): stage-1 OUTPUT features of the targets, for feature reuse


class EarlyExitOutput(NamedTuple):
    logits: Tensor  # (B, num_classes): stage 1's for exited samples, stage 2's for the rest
    stage: Tensor  # (B,) int64: 1 or 2, the stage that answered
    confidence: Tensor  # (B,) stage-1 confidence


assert Stage1Output._fields == STAGE1_OUTPUTS  # the names live in core/graph_io (torch-free)


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """tokens (B, N, D), index (B, K) int64 -> (B, K, D)."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class _Backbone(nn.Module):
    """The parts every DeiT shares, with timm's names: patch_embed, cls_token, blocks, norm, head."""

    def __init__(self, cfg: ModelConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        rates = torch.linspace(0, drop_path_rate, cfg.depth, device="cpu").tolist()  # cpu: also under meta
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.norm_eps, drop_path=r) for r in rates
        )
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.head = nn.Linear(d, cfg.num_classes)

    def _init_weights(self) -> None:
        for p in self.parameters():
            if p.dim() == 3:  # cls token and position embeddings
                nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:  # qkv without bias (qkv_bias False)
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _run_blocks(self, x: Tensor, num_targets: Optional[int] = None) -> Tensor:
        for blk in self.blocks:
            x, _ = blk(x, num_targets=num_targets)
        return x


class DeiT(_Backbone):
    """The plain single-stage DeiT that SAC-ViT is compared against (timm ``deit_*_patch16_*``)."""

    def __init__(self, cfg: ModelConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__(cfg, drop_path_rate)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.baseline_tokens, cfg.embed_dim))
        self._init_weights()

    def forward_features(self, image: Tensor) -> Tensor:
        x = self.patch_embed(image)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self._run_blocks(x))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features[:, 0])

    def forward(self, image: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(image))

    @classmethod
    def from_sacvit(cls, model: SACViT) -> DeiT:
        """The baseline with SAC-ViT's shared weights and its full-resolution position embedding."""
        baseline = cls(model.cfg)
        state = {
            k: v for k, v in model.state_dict().items() if not k.startswith(("pos_embed_list", "reuse_block"))
        }
        state["pos_embed"] = model.pos_embed_list[1].detach().clone()
        baseline.load_state_dict(state)
        # The same attention path as the source (fused SDPA, or the explicit one export puts it on).
        for i, block in enumerate(baseline.blocks):
            block.attn.fused_attn = model.blocks[i].attn.fused_attn
        return baseline.eval()


class SACViT(_Backbone):
    """Two-stage early-exit ViT with shared weights (parameter names of the LF-ViT / CF-ViT code)."""

    def __init__(self, cfg: ModelConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__(cfg, drop_path_rate)
        d = cfg.embed_dim
        self.pos_embed_list = nn.ParameterList(
            [
                nn.Parameter(torch.zeros(1, cfg.stage1_tokens, d)),
                nn.Parameter(torch.zeros(1, cfg.baseline_tokens, d)),
            ]
        )
        self.reuse_block = nn.Sequential(nn.LayerNorm(d, eps=cfg.norm_eps), Mlp(d, int(cfg.mlp_ratio * d), d))
        self.selector = TokenSelector(cfg)
        # int32, like target_index: the graph's index table and inputs need no INT64 (TensorRT 8.x).
        self.register_buffer(
            "fine_table", fine_index_table(cfg.coarse_grid).to(torch.int32), persistent=False
        )
        self.score_layers = frozenset(cfg.score_layers)
        self._init_weights()

    # ---- stage 1 -------------------------------------------------------------------------------
    def _stage1(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> logits1, E1 (stage-1 input tokens), Z1 (normed output tokens), scores (B, S*S)."""
        size = self.cfg.stage1_size
        x_low = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=True)
        x = self.patch_embed(x_low)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed_list[0]
        e1 = x
        decay = self.cfg.ema_decay
        score: Optional[Tensor] = None
        for i, blk in enumerate(self.blocks):
            x, cls_attn = blk(x, return_cls_attn=i in self.score_layers)
            if cls_attn is not None:
                # Running class-attention score, G <- 0.99 G + 0.01 A (G starts at 0).
                score = (
                    (1.0 - decay) * cls_attn if score is None else decay * score + (1.0 - decay) * cls_attn
                )
        z1 = self.norm(x)
        assert score is not None  # config validation guarantees at least one score layer
        return self.head(z1[:, 0]), e1, z1, score[:, 1:]

    def forward_stage1(self, image: Tensor) -> Stage1Output:
        """Stage 1 on the normalised full-resolution image (it is resized to 16*S px inside)."""
        logits, e1, z1, scores = self._stage1(image)
        confidence = logits.softmax(dim=-1).amax(dim=-1)
        target, nontarget = self.selector(scores)
        return Stage1Output(
            logits=logits,
            confidence=confidence,
            target_index=target.to(torch.int32),
            nontarget_tokens=gather_tokens(e1[:, 1:], nontarget),
            target_features=gather_tokens(z1[:, 1:], target),
        )

    # ---- stage 2 -------------------------------------------------------------------------------
    def forward_stage2(
        self, image: Tensor, target_index: Tensor, nontarget_tokens: Tensor, target_features: Tensor
    ) -> Tensor:
        """Stage 2 on the samples that did not exit: returns their logits."""
        d = self.cfg.embed_dim
        fine = self.fine_table[target_index].flatten(1)  # (B, 4k) int32, 4 children per target in a row
        # torch.gather takes int64 indices only: this Cast int32 -> INT64 is the graph's one INT64 index.
        patches = gather_tokens(image_to_patches(image, self.cfg.patch_size), fine.long())
        targets = self.patch_embed.embed_patches(patches)
        # Feature reuse: each fine token gets its parent's reuse feature (LF-ViT: nearest x2 upsample).
        reuse = self.reuse_block(target_features)
        targets = targets + reuse.unsqueeze(2).expand(-1, -1, 4, -1).reshape(-1, self.cfg.num_fine_targets, d)
        pos = self.pos_embed_list[1]
        targets = targets + pos[0, 1:][fine]
        cls = (self.cls_token + pos[:, :1]).expand(targets.shape[0], -1, -1)
        x = torch.cat([cls, targets, nontarget_tokens], dim=1)
        num_targets = self.cfg.num_fine_targets if self.cfg.attention == "cluster" else None
        x = self.norm(self._run_blocks(x, num_targets=num_targets))
        return self.head(x[:, 0])

    # ---- both ----------------------------------------------------------------------------------
    def forward(self, image: Tensor, threshold: Optional[float] = None) -> EarlyExitOutput:
        """Reference early exit: per sample, stage 1's answer if confident enough, else stage 2's.

        Runs stage 2 on the whole batch (static shapes); the runtime pipeline runs it on the hard
        samples only and must agree with this.
        """
        th = self.cfg.exit_threshold if threshold is None else float(threshold)
        s1 = self.forward_stage1(image)
        logits2 = self.forward_stage2(image, s1.target_index, s1.nontarget_tokens, s1.target_features)
        exited = exit_mask(s1.confidence, th)
        logits = torch.where(exited.unsqueeze(1), s1.logits, logits2)
        stage = 2 - exited.long()
        return EarlyExitOutput(logits, stage, s1.confidence)

    def forward_train(self, image: Tensor, select_tokens: bool = True) -> Tuple[Tensor, Tensor]:
        """Both stages on every sample, for training: returns (logits1, logits2).

        With ``select_tokens=False`` (the warm-up phase) stage 2 sees all (2S)^2 fine tokens plus
        feature reuse, with global attention.
        """
        if select_tokens:
            s1 = self.forward_stage1(image)
            return s1.logits, self.forward_stage2(
                image, s1.target_index, s1.nontarget_tokens, s1.target_features
            )
        logits1, _, z1, _ = self._stage1(image)
        s, d = self.cfg.coarse_grid, self.cfg.embed_dim
        reuse = self.reuse_block(z1[:, 1:]).transpose(1, 2).reshape(-1, d, s, s)
        reuse = F.interpolate(reuse, scale_factor=2, mode="nearest").flatten(2).transpose(1, 2)
        x = self.patch_embed(image) + reuse
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed_list[1]
        x = self.norm(self._run_blocks(x))
        return logits1, self.head(x[:, 0])


def build_model(cfg: ModelConfig, drop_path_rate: float = 0.0) -> SACViT:
    return SACViT(cfg, drop_path_rate=drop_path_rate)
