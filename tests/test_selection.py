"""Token selection against a brute-force reimplementation of SPEC's rules."""

from __future__ import annotations

import math

import pytest
import torch

from sacvit_deploy.model import make_config, tiny_config
from sacvit_deploy.model.selection import TokenSelector, fine_index_table


def brute_force(scores: torch.Tensor, s: int, m: int | None, k: int) -> tuple[set[int], set[int]]:
    """SPEC's rule written plainly: loops, float64, first window wins ties."""
    sc = scores.double().tolist()
    if m is None:
        pool = list(range(s * s))
    else:
        best, best_sum = None, -math.inf
        for r0 in range(s - m + 1):
            for c0 in range(s - m + 1):
                toks = [(r0 + i) * s + (c0 + j) for i in range(m) for j in range(m)]
                total = sum(sc[t] for t in toks)
                if total > best_sum:  # strict: the first (row-major) window keeps a tie
                    best, best_sum = toks, total
        pool = best
    targets = set(sorted(pool, key=lambda t: -sc[t])[:k])
    return targets, set(range(s * s)) - targets


CASES = [
    ("lf-vit 7x7", make_config("deit_small_224", "lf-vit")),
    ("lf-vit 9x9", make_config("deit_small_288", "lf-vit")),
    ("cf-vit 7x7", make_config("deit_small_224", "cf-vit")),
    ("tiny window", tiny_config("sacvit")),
]


@pytest.mark.parametrize("name,cfg", CASES, ids=[c[0] for c in CASES])
def test_selection_equals_brute_force_on_random_scores(name, cfg):
    sel = TokenSelector(cfg)
    g = torch.Generator().manual_seed(7)
    n = cfg.num_coarse
    # Distinct multiples of 2^-12: sums are exact in float32, so ties are real ties only.
    scores = torch.stack([torch.randperm(4096, generator=g)[:n].float() / 4096 for _ in range(64)])
    targets, others = sel(scores)
    m = cfg.region_size if cfg.selection == "window" else None
    for b in range(scores.shape[0]):
        exp_t, exp_o = brute_force(scores[b], cfg.coarse_grid, m, cfg.num_targets)
        assert set(targets[b].tolist()) == exp_t, f"sample {b}"
        assert set(others[b].tolist()) == exp_o, f"sample {b}"
        assert len(others[b].unique()) == cfg.num_nontargets


def test_window_ties_go_to_the_first_window_in_row_major_order():
    cfg = tiny_config("sacvit")  # 4x4 grid, 3x3 window: 4 windows
    sel = TokenSelector(cfg)
    flat = torch.full((1, 16), 0.25)
    targets, _ = sel(flat)
    first_window = {r * 4 + c for r in range(3) for c in range(3)}
    assert set(targets[0].tolist()) <= first_window
    # make the last two windows tie above the others: the third (bottom-left) must win
    scores = torch.zeros(1, 16)
    scores[0, 12] = 1.0  # only in bottom windows, left one
    scores[0, 15] = 1.0  # only in the bottom-right window
    targets, _ = sel(scores)
    assert 12 in targets[0].tolist() and 15 not in targets[0].tolist()


def test_fine_index_table_maps_each_coarse_token_to_its_2x2_children():
    for s in (4, 7, 9):
        table = fine_index_table(s)
        assert table.shape == (s * s, 4)
        for c in range(s * s):
            r, q = divmod(c, s)
            children = {(2 * r + i) * (2 * s) + (2 * q + j) for i in (0, 1) for j in (0, 1)}
            assert set(table[c].tolist()) == children
        assert sorted(table.flatten().tolist()) == list(range(4 * s * s))
    assert fine_index_table(7)[8].tolist() == [30, 31, 44, 45]  # r=1,q=1: 2*14+2 + {0,1,14,15}
