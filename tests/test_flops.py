"""Analytic FLOPs reproduce SPEC's figures within 1%."""

from __future__ import annotations

import pytest

from sacvit_deploy.model import FlopsReport, make_config
from sacvit_deploy.model.flops import expected_macs, stage2_macs


def within(value: float, target: float, tol: float = 0.01) -> bool:
    return abs(value - target) / target <= tol


def test_spec_figures_within_one_percent():
    lf = FlopsReport.of(make_config("deit_small_224", "lf-vit"))
    cf = FlopsReport.of(make_config("deit_small_224", "cf-vit"))
    assert within(lf.baseline, 4.6), lf.baseline
    assert within(lf.stage1, 1.10), lf.stage1
    assert within(lf.stage2_reference, 2.70), lf.stage2_reference
    assert within(cf.stage1 + cf.stage2_reference, 4.0), cf.stage1 + cf.stage2_reference


def test_implementation_is_cheaper_than_reference_accounting():
    for fmt in ("lf-vit", "cf-vit", "sacvit"):
        cfg = make_config("deit_small_224", fmt)
        assert stage2_macs(cfg) < stage2_macs(cfg, "reference")


def test_cluster_attention_costs_less_than_global():
    glob = FlopsReport.of(make_config("deit_small_224", "lf-vit"))
    clus = FlopsReport.of(make_config("deit_small_224", "sacvit"))
    # same linear layers, fewer attention pairs: 116 + 88*89 + 27*28 = 8704 instead of 116^2 = 13456
    saved = 12 * 2 * (13456 - 8704) * 384 / 1e9
    assert clus.stage2 == pytest.approx(glob.stage2 - saved, rel=1e-9)


def test_expected_cost_and_lf_vit_operating_point():
    cfg = make_config("deit_small_224", "lf-vit")
    r = FlopsReport.of(cfg)
    assert expected_macs(cfg, 1.0) / 1e9 == pytest.approx(r.stage1)
    assert expected_macs(cfg, 0.0) / 1e9 == pytest.approx(r.stage1 + r.stage2)
    # SPEC: LF-ViT's 63% saving implies that roughly 23% of images reach stage 2
    hard = 1.0 - FlopsReport(
        r.baseline, r.stage1, r.stage2_reference, r.stage2_reference
    ).exit_rate_for_saving(0.63)
    assert 0.20 < hard < 0.26, hard
    with pytest.raises(ValueError):
        expected_macs(cfg, 1.5)


def test_one_format_for_every_command():
    from sacvit_deploy.model.flops import format_gflops

    lf = FlopsReport.of(make_config("deit_small_224", "lf-vit"))
    assert [format_gflops(v) for v in (lf.baseline, lf.stage1, lf.stage2)] == ["4.60", "1.10", "2.64"]
    assert format_gflops(0.0073245) == "0.00732" and format_gflops(17.56) == "17.6"
