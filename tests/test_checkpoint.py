"""Checkpoint formats, conversions and every way a checkpoint can be wrong."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch

from sacvit_deploy.core.errors import CheckpointError
from sacvit_deploy.model import DeiT, SACViT, load_baseline, load_checkpoint, make_config, save_checkpoint
from sacvit_deploy.model.checkpoint import guess_variant, read_checkpoint
from tests.conftest import make_tiny


@pytest.fixture(scope="module")
def small_lf() -> SACViT:
    torch.manual_seed(1)
    return SACViT(make_config("deit_tiny_224", "lf-vit")).eval()


def official_layout(model: SACViT, key: str = "flops") -> dict:
    return {
        "model": model.state_dict(),
        key: 1.7,
        "anytime_classification": [75.5, 79.8],
        "budgeted_batch_classification": [[1.1, 75.5]],
    }


@torch.no_grad()
def test_official_lf_vit_layout_loads_and_matches(tmp_path, small_lf):
    path = tmp_path / "lfvit.pth"
    torch.save(
        {**official_layout(small_lf), "args": argparse.Namespace(lr=1e-3, model="lf_deit_small")}, path
    )
    loaded = load_checkpoint(path, "lf-vit")
    assert loaded.cfg.variant == "deit_tiny_224" and loaded.cfg.attention == "global"
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(loaded.model(x, 0.5).logits, small_lf(x, 0.5).logits)
    assert load_checkpoint(path, "auto").fmt == "lf-vit"  # the "flops" key says LF-ViT


def test_official_cf_vit_layout_is_detected_by_its_flop_key(tmp_path, small_lf):
    path = tmp_path / "cfvit.pth"
    torch.save(official_layout(small_lf, "flop"), path)
    loaded = load_checkpoint(path, "auto")
    assert loaded.fmt == "cf-vit" and loaded.cfg.selection == "topk"


def test_two_stage_without_hint_needs_an_explicit_format(tmp_path, small_lf):
    path = tmp_path / "ambiguous.pth"
    torch.save({"model": small_lf.state_dict()}, path)
    with pytest.raises(CheckpointError, match="--format lf-vit or --format cf-vit"):
        load_checkpoint(path, "auto")
    assert load_checkpoint(path, "cf-vit").cfg.num_targets == 25


@torch.no_grad()
def test_own_format_round_trip_keeps_config_and_outputs(tmp_path):
    model = make_tiny("sacvit")
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)  # auto
    assert loaded.fmt == "sacvit" and loaded.cfg == model.cfg
    x = torch.randn(2, 3, 128, 128)
    torch.testing.assert_close(loaded.model(x).logits, model(x).logits)
    # weights-only torch variant of the own format (what training writes)
    pt = tmp_path / "m.pt"
    torch.save(
        {"format": "sacvit-deploy", "config": model.cfg.to_dict(), "model": model.state_dict(), "epoch": 3},
        pt,
    )
    torch.testing.assert_close(load_checkpoint(pt, "sacvit").model(x).logits, model(x).logits)


@torch.no_grad()
def test_timm_deit_state_dict_loads_into_baseline_and_stage2(tmp_path):
    torch.manual_seed(3)
    cfg = make_config("deit_tiny_224", "deit")
    deit = DeiT(cfg).eval()
    sd = deit.state_dict()
    assert set(sd) >= {
        "pos_embed",
        "cls_token",
        "patch_embed.proj.weight",
        "blocks.11.mlp.fc2.bias",
        "head.weight",
    }
    path = tmp_path / "deit_tiny_patch16_224.pth"
    torch.save({"model": sd}, path)

    x = torch.randn(2, 3, 224, 224)
    baseline = load_baseline(path, "deit")
    torch.testing.assert_close(baseline(x), deit(x))

    loaded = load_checkpoint(path, "deit")
    msd = loaded.model.state_dict()
    for k, v in sd.items():
        if k != "pos_embed":
            assert torch.equal(msd[k], v), k
    assert torch.equal(msd["pos_embed_list.1"], sd["pos_embed"])
    assert msd["pos_embed_list.0"].shape == (1, 1 + 49, 192)
    assert torch.equal(msd["pos_embed_list.0"][:, 0], sd["pos_embed"][:, 0])  # cls position kept
    assert loaded.notes and "reuse block" in loaded.notes[0]
    # a 224 DeiT into a 288 variant: stage-2 positions resampled 14x14 -> 18x18
    big = load_checkpoint(path, "deit", variant="deit_tiny_288")
    assert big.model.pos_embed_list[1].shape == (1, 1 + 18 * 18, 192)


def test_baseline_from_two_stage_checkpoint_uses_full_resolution_positions(tmp_path, small_lf, monkeypatch):
    from sacvit_deploy.model import checkpoint

    path = tmp_path / "lf.pth"
    torch.save(official_layout(small_lf), path)
    reads = []
    read = checkpoint.read_checkpoint
    monkeypatch.setattr(checkpoint, "read_checkpoint", lambda p: reads.append(p) or read(p))
    baseline = load_baseline(path, "lf-vit")
    assert torch.equal(baseline.pos_embed, small_lf.pos_embed_list[1])
    assert reads == [path]  # the file is read once, not once per loader


# ---- bad input -------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs os.mkdir: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    # control: the payload is live, plain unpickling would run it
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
    marker.rmdir()

    for name, writer in {
        "zip.pth": lambda p: torch.save({"model": {"w": torch.zeros(1)}, "evil": _Payload(marker)}, p),
        "legacy.pth": lambda p: p.write_bytes(pickle.dumps({"model": _Payload(marker)})),
    }.items():
        path = tmp_path / name
        writer(path)
        with pytest.raises(CheckpointError, match="refused to load") as info:
            load_checkpoint(path, "lf-vit")
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        assert not marker.exists(), f"{name}: the payload ran"


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "empty file"),
        (b"this is not a checkpoint at all" * 10, "not a PyTorch or safetensors checkpoint"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "not a PyTorch or safetensors checkpoint"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path, "lf-vit")
    assert str(path) in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)


def test_missing_and_unexpected_keys(tmp_path, small_lf):
    sd = small_lf.state_dict()
    missing = {k: v for k, v in sd.items() if not k.startswith("reuse_block")}
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing 6 keys \(reuse_block"):
        load_checkpoint(tmp_path / "missing.pth", "lf-vit")
    torch.save({"model": {**sd, "extra.weight": torch.zeros(1)}}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected 1 keys \(extra.weight\)"):
        load_checkpoint(tmp_path / "extra.pth", "lf-vit")


def test_shape_mismatch_names_the_variant_it_looks_like(tmp_path, small_lf):
    path = tmp_path / "tiny.pth"
    torch.save({"model": small_lf.state_dict()}, path)
    with pytest.raises(
        CheckpointError, match=r"shape mismatch .*looks like deit_tiny_224, pass --variant deit_tiny_224"
    ):
        load_checkpoint(path, "lf-vit", variant="deit_small_224")
    assert guess_variant(small_lf.state_dict()) == "deit_tiny_224"


def test_wrong_format_flags(tmp_path, small_lf):
    two_stage = tmp_path / "two.pth"
    torch.save(official_layout(small_lf), two_stage)
    with pytest.raises(CheckpointError, match="not timm DeiT; pass --format lf-vit or cf-vit"):
        load_checkpoint(two_stage, "deit")
    with pytest.raises(CheckpointError, match="not a sacvit-deploy checkpoint"):
        load_checkpoint(two_stage, "sacvit")

    deit = tmp_path / "deit.pth"
    torch.save(DeiT(make_config("deit_tiny_224")).state_dict(), deit)
    with pytest.raises(CheckpointError, match=r"timm DeiT checkpoint .* pass --format deit"):
        load_checkpoint(deit, "lf-vit")

    own = save_checkpoint(make_tiny(), tmp_path / "own.safetensors")
    with pytest.raises(CheckpointError, match="pass --format sacvit"):
        load_checkpoint(own, "cf-vit")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(own, "onnx")


def test_distilled_deit_is_refused_with_the_fix(tmp_path):
    sd = DeiT(make_config("deit_tiny_224")).state_dict()
    sd["dist_token"] = torch.zeros(1, 1, 192)
    torch.save(sd, tmp_path / "distilled.pth")
    with pytest.raises(CheckpointError, match="distilled DeiT"):
        load_checkpoint(tmp_path / "distilled.pth", "deit")


def test_corrupt_safetensors(tmp_path):
    own = save_checkpoint(make_tiny(), tmp_path / "own.safetensors")
    data = own.read_bytes()
    own.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_checkpoint(own)


def test_the_same_weights_save_to_the_same_bytes(tmp_path):
    """safetensors writes its metadata in a hash map's order (it changed between two saves in one
    process); save_checkpoint sorts it, so an export's model.safetensors (and its sha256 in the
    manifest) depends only on the weights. Read back with the real safetensors reader."""
    from safetensors import safe_open

    model = make_tiny()
    paths = [save_checkpoint(model, tmp_path / f"w{i}.safetensors") for i in range(4)]
    blobs = {p.read_bytes() for p in paths}
    assert len(blobs) == 1
    with safe_open(str(paths[0]), framework="pt") as f:
        meta = f.metadata()
        assert set(meta) >= {"format", "config"}
        for name, tensor in model.state_dict().items():
            assert torch.equal(f.get_tensor(name), tensor)
    again = load_checkpoint(paths[0]).model
    assert again.cfg == model.cfg


def test_a_deeply_nested_config_in_the_metadata_is_one_error(tmp_path):
    from safetensors.torch import save_file

    from sacvit_deploy.model.checkpoint import FORMAT_TAG

    path = tmp_path / "nested.safetensors"
    config = "[" * 100_000 + "]" * 100_000
    save_file(
        {"cls_token": torch.zeros(1, 1, 8)}, str(path), metadata={"format": FORMAT_TAG, "config": config}
    )
    with pytest.raises(CheckpointError, match=r"unreadable config \(nested too deep\)"):
        load_checkpoint(path)
