"""Target / non-target token selection with static shapes (SPEC "Token clustering").

Every count is a Python int fixed by the config, so the exported graph holds one TopK with a constant
K, gathers, a MatMul against a constant 0/1 window matrix and an ArgMax: no sort-then-slice on a
dynamic length, no boolean-mask indexing, no data-dependent shapes, no loop over the batch.

* ``window`` (LF-ViT): the m x m window (stride 1) with the largest score sum wins (ties: the first
  window in row-major order of its top-left corner); its top-k tokens are the targets.
* ``topk`` (CF-ViT): the global top-k tokens are the targets.

Either way the non-targets are all remaining coarse tokens. Both sets come from one sort of a key
that is the score inside the chosen region and -inf outside it.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from sacvit_deploy.model import _torch_floor  # noqa: F401  (refuses a torch below the floor)
from sacvit_deploy.model.config import ModelConfig


def window_membership(grid: int, window: int) -> Tensor:
    """(num_windows, grid*grid) 0/1 matrix: row w marks the tokens of window w (row-major corners)."""
    n_pos = grid - window + 1
    rows = []
    for r0 in range(n_pos):
        for c0 in range(n_pos):
            m = torch.zeros(grid, grid)
            m[r0 : r0 + window, c0 : c0 + window] = 1.0
            rows.append(m.flatten())
    return torch.stack(rows)


def fine_index_table(coarse_grid: int) -> Tensor:
    """(S*S, 4) table: coarse token c -> the 4 full-resolution patches it covers.

    c = r*S + q covers fine patches 2r*2S + 2q + {0, 1, 2S, 2S+1} of the 2S x 2S grid.
    """
    s = coarse_grid
    c = torch.arange(s * s)
    base = 2 * (c // s) * (2 * s) + 2 * (c % s)
    return torch.stack([base, base + 1, base + 2 * s, base + 2 * s + 1], dim=1)


class TokenSelector(nn.Module):
    """scores (B, S*S) -> (target indices (B, k), non-target indices (B, S*S - k)), int64."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_targets = cfg.num_targets
        self.num_coarse = cfg.num_coarse
        self.use_window = cfg.selection == "window"
        if self.use_window:
            members = window_membership(cfg.coarse_grid, cfg.region_size)
        else:
            members = torch.ones(1, cfg.num_coarse)
        # Buffers, not parameters: rebuilt from the config, never stored in checkpoints.
        self.register_buffer("members", members, persistent=False)

    def forward(self, scores: Tensor) -> Tuple[Tensor, Tensor]:
        if self.use_window:
            window_sums = scores @ self.members.t()  # (B, num_windows)
            best = window_sums.argmax(dim=1)  # first maximum on ties
            inside = self.members[best] > 0.5  # (B, S*S)
            key = scores.masked_fill(~inside, float("-inf"))
        else:
            key = scores
        order = torch.topk(key, self.num_coarse, dim=1, largest=True, sorted=True).indices
        return order[:, : self.num_targets], order[:, self.num_targets :]
