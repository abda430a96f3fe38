"""DeiT layers with timm's parameter names (``patch_embed.proj``, ``blocks.N.attn.qkv`` ...).

Written here rather than imported from timm (which pulls in torchvision). The attention layer has two
extras SAC-ViT needs:

* ``return_cls_attn``: also return the class token's softmax attention row, averaged over heads, which
  stage 1 accumulates into its token scores. Computing only that row is exact and lets the main
  attention stay fused.
* ``num_targets``: SAC-ViT's cluster attention over the stage-2 sequence ``[cls, targets, others]``:
  target tokens attend to ``[cls, targets]``, the others to ``[cls, others]``, the class token to all.
  It is computed on static slices, never with a materialised mask.

``fused_attn`` picks ``F.scaled_dot_product_attention``; it is switched off for ONNX export so the
graphs hold plain MatMul / Softmax that every TensorRT parser reads (like timm's ``fused_attn``).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sacvit_deploy.model import _torch_floor  # noqa: F401  (refuses a torch below the floor)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, as a strided convolution (timm: ``patch_embed.proj``)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)

    def embed_patches(self, patches: Tensor) -> Tensor:
        """Embed already-cut patches of shape (B, N, C*p*p), flattened in (C, p, p) order.

        Equal to ``forward`` on the image for the same patches: the convolution with kernel = stride
        is a matrix product per patch.
        """
        weight = self.proj.weight.flatten(1)
        return F.linear(patches, weight, self.proj.bias)


def image_to_patches(image: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/p)*(W/p), C*p*p), patches in row-major grid order."""
    _, c, h, w = image.shape
    gh, gw = h // patch_size, w // patch_size
    x = image.reshape(-1, c, gh, patch_size, gw, patch_size)
    x = x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, gh * gw, c * patch_size * patch_size)


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> GELU -> fc2 (dropout omitted: DeiT uses none at these sizes)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: Optional[int] = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float, fused: bool) -> Tensor:
    if fused:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    attn = (q * scale) @ k.transpose(-2, -1)
    return attn.softmax(dim=-1) @ v


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, fused_attn: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, num_targets: Optional[int] = None, return_cls_attn: bool = False
    ) -> Tuple[Tensor, Optional[Tensor]]:
        _, n, c = x.shape
        qkv = self.qkv(x).reshape(-1, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)

        if num_targets is None:
            out = _attend(q, k, v, self.scale, self.fused_attn)
        else:
            out = cluster_attention(q, k, v, num_targets, self.scale, self.fused_attn)

        cls_attn = None
        if return_cls_attn:
            # Class-token row of the softmax attention, mean over heads: (B, N). Exact for global
            # attention, which is where scores are taken (stage 1).
            row = ((q[:, :, :1] * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            # Index, not squeeze: the TorchScript exporter turns squeeze on a traced dim into an If.
            cls_attn = row[:, :, 0].mean(dim=1)

        out = out.transpose(1, 2).reshape(-1, n, c)
        return self.proj(out), cls_attn


def cluster_attention(q: Tensor, k: Tensor, v: Tensor, num_targets: int, scale: float, fused: bool) -> Tensor:
    """Attention over ``[cls, targets (num_targets), others]`` within each cluster.

    cls attends to every token; a target token to cls and the targets; any other token to cls and the
    others. Three static slices, so the cost is the clusters' sizes squared, not the sequence's.
    """
    t_end = 1 + num_targets
    out_cls = _attend(q[:, :, :1], k, v, scale, fused)
    out_tgt = _attend(q[:, :, 1:t_end], k[:, :, :t_end], v[:, :, :t_end], scale, fused)
    k_other = torch.cat([k[:, :, :1], k[:, :, t_end:]], dim=2)
    v_other = torch.cat([v[:, :, :1], v[:, :, t_end:]], dim=2)
    out_other = _attend(q[:, :, t_end:], k_other, v_other, scale, fused)
    return torch.cat([out_cls, out_tgt, out_other], dim=2)


def cluster_attention_mask(seq_len: int, num_targets: int) -> Tensor:
    """The boolean (seq_len, seq_len) mask that ``cluster_attention`` implements (True = may attend).

    For tests and documentation; the model never materialises it.
    """
    t_end = 1 + num_targets
    is_tgt = torch.zeros(seq_len, dtype=torch.bool)
    is_tgt[1:t_end] = True
    same_cluster = is_tgt[:, None] == is_tgt[None, :]
    mask = same_cluster.clone()
    mask[0, :] = True  # cls attends to all
    mask[:, 0] = True  # everyone attends to cls
    return mask


class Block(nn.Module):
    """Pre-norm transformer block with timm's names: norm1, attn, norm2, mlp."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: Tensor, num_targets: Optional[int] = None, return_cls_attn: bool = False
    ) -> Tuple[Tensor, Optional[Tensor]]:
        y, cls_attn = self.attn(self.norm1(x), num_targets=num_targets, return_cls_attn=return_cls_attn)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, cls_attn


class DropPath(nn.Module):
    """Stochastic depth for training; identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def set_fused_attn(module: nn.Module, enabled: bool) -> None:
    """Switch every Attention layer between SDPA and the explicit ONNX-friendly path."""
    for m in module.modules():
        if isinstance(m, Attention):
            m.fused_attn = enabled
