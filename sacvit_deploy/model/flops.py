"""Analytic FLOPs: moved to :mod:`sacvit_deploy.core.flops` (torch-free, so the runtime can use it)."""

from __future__ import annotations

from sacvit_deploy.core.flops import (
    GIGA,
    FlopsReport,
    baseline_macs,
    block_macs,
    expected_macs,
    format_gflops,
    stage1_macs,
    stage2_attention_pairs,
    stage2_macs,
)

__all__ = [
    "GIGA",
    "FlopsReport",
    "baseline_macs",
    "block_macs",
    "expected_macs",
    "format_gflops",
    "stage1_macs",
    "stage2_attention_pairs",
    "stage2_macs",
]
