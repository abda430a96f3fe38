"""The reference model: stages, recombination, attention, invariances."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sacvit_deploy.model import DeiT, SACViT, make_config, tiny_config
from sacvit_deploy.model.layers import (
    cluster_attention,
    cluster_attention_mask,
    image_to_patches,
    set_fused_attn,
)
from sacvit_deploy.runtime.pipeline import mixed_threshold
from tests.conftest import make_tiny


def run_two_stage(model: SACViT, images: torch.Tensor, threshold: float):
    """Stage 1 on all, stage 2 only on the compacted hard samples, results scattered back."""
    s1 = model.forward_stage1(images)
    hard = torch.nonzero(s1.confidence < threshold).flatten()
    logits = s1.logits.clone()
    stage = torch.ones(images.shape[0], dtype=torch.long)
    if hard.numel():
        logits2 = model.forward_stage2(
            images[hard], s1.target_index[hard], s1.nontarget_tokens[hard], s1.target_features[hard]
        )
        logits[hard] = logits2
        stage[hard] = 2
    return logits, stage


@torch.no_grad()
def test_two_stages_recombined_equal_reference_for_every_exit_pattern(tiny_model, images):
    conf = tiny_model.forward_stage1(images).confidence
    assert conf.max() - conf.min() > 0.05, "fixture must spread confidences for a mixed batch"
    mixed = mixed_threshold(conf)
    for threshold in (0.0, mixed, 1.01):
        ref = tiny_model(images, threshold)
        logits, stage = run_two_stage(tiny_model, images, threshold)
        torch.testing.assert_close(logits, ref.logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(stage, ref.stage)
        expected_stage1 = (conf >= threshold).sum().item()
        assert (ref.stage == 1).sum().item() == expected_stage1
    assert (tiny_model(images, 0.0).stage == 1).all()
    assert (tiny_model(images, 1.01).stage == 2).all()
    mixed_out = tiny_model(images, mixed)
    assert 0 < (mixed_out.stage == 1).sum() < images.shape[0]


@torch.no_grad()
def test_batch_of_one_matches_batched(tiny_model, images):
    full = tiny_model(images, 0.5)
    for i in range(images.shape[0]):
        one = tiny_model(images[i : i + 1], 0.5)
        torch.testing.assert_close(one.logits, full.logits[i : i + 1], rtol=1e-4, atol=1e-5)
        assert one.stage.item() == full.stage[i].item()


@torch.no_grad()
def test_stage1_outputs_have_static_shapes_and_int32_indices(tiny_model, images):
    cfg = tiny_model.cfg
    s1 = tiny_model.forward_stage1(images)
    b, d = images.shape[0], cfg.embed_dim
    assert s1.logits.shape == (b, cfg.num_classes)
    assert s1.confidence.shape == (b,)
    assert s1.target_index.shape == (b, cfg.num_targets) and s1.target_index.dtype == torch.int32
    assert s1.nontarget_tokens.shape == (b, cfg.num_nontargets, d)
    assert s1.target_features.shape == (b, cfg.num_targets, d)
    torch.testing.assert_close(s1.confidence, s1.logits.softmax(-1).amax(-1))
    # targets and non-targets partition the coarse grid
    for row in s1.target_index:
        assert len(set(row.tolist())) == cfg.num_targets


def test_token_counts_of_real_variants():
    expected = {
        ("lf-vit", "deit_small_224"): (22, 88, 27, 116),
        ("cf-vit", "deit_small_224"): (25, 100, 24, 125),
        ("lf-vit", "deit_small_288"): (57, 228, 24, 253),
        ("sacvit", "deit_small_224"): (22, 88, 27, 116),
        ("lf-vit", "deit_base_224"): (22, 88, 27, 116),
    }
    for (fmt, variant), (k, fine, other, total) in expected.items():
        cfg = make_config(variant, fmt)
        assert (cfg.num_targets, cfg.num_fine_targets, cfg.num_nontargets, cfg.stage2_tokens) == (
            k,
            fine,
            other,
            total,
        ), (fmt, variant)
    assert make_config("deit_small_288").region_size == 8
    assert make_config("deit_small_224").stage1_size == 112


@torch.no_grad()
def test_stage2_token_count_in_the_forward_pass():
    seen = []
    model = make_tiny("lf-vit")
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    x = torch.randn(2, 3, 128, 128)
    s1 = model.forward_stage1(x)
    model.forward_stage2(x, *s1[2:])
    assert seen == [model.cfg.stage1_tokens, model.cfg.stage2_tokens]


def test_patch_cut_then_embedded_equals_convolution():
    torch.manual_seed(0)
    model = make_tiny()
    x = torch.randn(3, 3, 128, 128)
    patches = image_to_patches(x, 16)
    torch.testing.assert_close(
        model.patch_embed.embed_patches(patches), model.patch_embed(x), rtol=1e-5, atol=1e-5
    )
    # patch 9 of an 8x8 grid is row 1, column 1
    torch.testing.assert_close(patches[:, 9].reshape(3, 3, 16, 16), x[:, :, 16:32, 16:32])


@pytest.mark.parametrize("fused", [True, False])
def test_cluster_attention_equals_masked_full_attention(fused):
    torch.manual_seed(0)
    b, h, n, hd, targets = 3, 2, 1 + 12 + 7, 8, 12
    q, k, v = (torch.randn(b, h, n, hd) for _ in range(3))
    mask = cluster_attention_mask(n, targets)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = cluster_attention(q, k, v, targets, hd**-0.5, fused)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # and the mask is the one SPEC describes
    assert mask[0].all() and mask[:, 0].all()
    assert mask[1:13, 1:13].all() and mask[13:, 13:].all()
    assert not mask[1:13, 13:].any() and not mask[13:, 1:13].any()


@torch.no_grad()
def test_cluster_attention_differs_from_global():
    cluster, global_ = make_tiny("sacvit"), make_tiny("lf-vit")
    global_.load_state_dict(cluster.state_dict())
    x = torch.randn(2, 3, 128, 128)
    s1 = cluster.forward_stage1(x)
    a = cluster.forward_stage2(x, *s1[2:])
    b = global_.forward_stage2(x, *s1[2:])
    assert (a - b).abs().max() > 1e-3


@torch.no_grad()
def test_fused_and_explicit_attention_agree(tiny_model, images):
    fused = tiny_model(images, 0.5)
    set_fused_attn(tiny_model, False)
    explicit = tiny_model(images, 0.5)
    torch.testing.assert_close(fused.logits, explicit.logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(fused.stage, explicit.stage)


@pytest.mark.parametrize("fmt", ["lf-vit", "sacvit"])
@torch.no_grad()
def test_token_order_inside_stage2_does_not_change_logits(fmt):
    model = make_tiny(fmt)
    x = torch.randn(3, 3, 128, 128)
    s1 = model.forward_stage1(x)
    ref = model.forward_stage2(x, *s1[2:])
    g = torch.Generator().manual_seed(5)
    p_t = torch.randperm(model.cfg.num_targets, generator=g)
    p_o = torch.randperm(model.cfg.num_nontargets, generator=g)
    permuted = model.forward_stage2(
        x, s1.target_index[:, p_t], s1.nontarget_tokens[:, p_o], s1.target_features[:, p_t]
    )
    torch.testing.assert_close(permuted, ref, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_baseline_deit_and_warmup_stage2_agree_when_reuse_is_zero():
    """Stage 2 on all fine tokens with a zero reuse term is exactly the single-stage DeiT."""
    model = make_tiny("lf-vit")
    torch.nn.init.zeros_(model.reuse_block[1].fc2.weight)
    torch.nn.init.zeros_(model.reuse_block[1].fc2.bias)
    baseline = DeiT.from_sacvit(model)
    x = torch.randn(2, 3, 128, 128)
    _, logits2 = model.forward_train(x, select_tokens=False)
    torch.testing.assert_close(logits2, baseline(x), rtol=1e-4, atol=1e-5)


def test_forward_train_returns_both_stages_with_gradients():
    model = make_tiny("sacvit")
    model.train()
    x = torch.randn(2, 3, 128, 128)
    for select in (True, False):
        l1, l2 = model.forward_train(x, select_tokens=select)
        (l1.sum() + l2.sum()).backward()
        assert model.pos_embed_list[1].grad is not None and model.reuse_block[1].fc1.weight.grad is not None
        model.zero_grad()


def test_config_validation_names_the_problem():
    from sacvit_deploy.core.errors import ConfigError

    with pytest.raises(ConfigError, match="region_size"):
        tiny_config(region_size=9)
    with pytest.raises(ConfigError, match="selection"):
        tiny_config(selection="random")
    with pytest.raises(ConfigError, match="unknown variant"):
        make_config("deit_huge_224")
    with pytest.raises(ConfigError, match="score_layers"):
        tiny_config(score_layers=(1, 7))
    cfg = make_config("deit_tiny_288", "cf-vit")
    assert cfg.preprocess.resize_size == 329 and cfg.preprocess.input_size == 288
    from sacvit_deploy.model import ModelConfig

    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
