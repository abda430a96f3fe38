"""Hugging Face checkpoints, held against real transformers: a random ViTForImageClassification built
offline from a config and written with save_pretrained exports through the CLI, and ONNX Runtime's
baseline logits equal transformers' forward. A distilled DeiT is refused with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.errors import CheckpointError
from sacvit_deploy.model import DeiT, SACViT, load_baseline, load_checkpoint

transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

NAMES = ["apple", "banana", "cherry", "date", "elder", "fig"]


def hf_vit(seed: int = 0, **changes):
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=128,
        patch_size=16,
        id2label=dict(enumerate(NAMES)),
        label2id={n: i for i, n in enumerate(NAMES)},
        **changes,
    )
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():  # trained scale: HF's 0.02 init gives logits ~1e-2; a trained head has std ~4
        for p in model.parameters():
            p.mul_(torch.empty_like(p).uniform_(4.0, 6.0) if p.dim() == 3 else 1.0)
        model.classifier.weight.mul_(60.0)
    return model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    model = hf_vit()
    folder = tmp_path_factory.mktemp("hf") / "vit"
    model.save_pretrained(folder)
    return model, folder


def test_export_matches_transformers_forward_in_onnx_runtime(hf_folder, tmp_path):
    model, folder = hf_folder
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(folder), "--out", str(out), "--baseline"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source_format"] == "hf"  # auto recognised the save_pretrained folder
    assert manifest["model"]["class_names"] == NAMES  # from id2label

    x = torch.randn(5, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(pixel_values=x).logits.numpy()
    assert reference.std() > 2.0, "the test's weights must be trained-scale"
    session = ort.InferenceSession(str(out / "baseline.onnx"), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    (logits,) = session.run(None, {name: x.numpy()})
    diff = float(np.abs(logits - reference).max())
    assert diff <= 1e-4 * (1.0 + float(np.abs(reference).max())), diff
    assert (logits.argmax(1) == reference.argmax(1)).all()


def test_sacvit_init_and_baseline_carry_the_vit_exactly(hf_folder):
    model, folder = hf_folder
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(pixel_values=x).logits
        loaded = load_checkpoint(folder / "model.safetensors")  # the weights file: auto, config beside it
        assert loaded.fmt == "hf" and loaded.cfg.norm_eps == pytest.approx(1e-12)
        assert any("reuse block freshly initialised" in n for n in loaded.notes)
        from_sacvit = DeiT.from_sacvit(loaded.model)(x)
        baseline = load_baseline(folder, "hf")(x)
    scale = float(reference.abs().max())
    torch.testing.assert_close(from_sacvit, reference, atol=1e-4 * (1 + scale), rtol=0)
    torch.testing.assert_close(baseline, reference, atol=1e-4 * (1 + scale), rtol=0)
    assert isinstance(loaded.model, SACViT) and loaded.cfg.class_names == tuple(NAMES)


def test_transformers_5_module_names_load_the_same_weights(hf_folder, tmp_path):
    """transformers 5's modules are named vit.layers.N.attention.q_proj ... (its state_dict() and
    save_pretrained convert back to vit.encoder.layer.N ...); a file of the module names loads too."""
    from safetensors.torch import save_file

    model, folder = hf_folder
    params = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    if not any(name.startswith("vit.layers.") for name in params):
        pytest.skip(f"transformers {transformers.__version__} names its ViT modules the old way")
    copy = tmp_path / "vit"
    copy.mkdir()
    (copy / "config.json").write_bytes((folder / "config.json").read_bytes())
    save_file(params, str(copy / "model.safetensors"))
    reference = load_checkpoint(folder).model.state_dict()
    loaded = load_checkpoint(copy).model.state_dict()
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        if not key.startswith("reuse_block."):  # freshly initialised, seeded: equal anyway
            assert torch.equal(loaded[key], value), key


def test_a_vit_without_qkv_bias_loads_and_matches_transformers(hf_folder, tmp_path):
    """qkv_bias False (a ModelConfig field HF configs set): the model builds, the baseline equals
    transformers' forward; a config that says False beside a file with the biases is one error."""
    model = hf_vit(seed=3, qkv_bias=False)
    model.save_pretrained(tmp_path / "vit")
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = model(pixel_values=x).logits
        loaded = load_checkpoint(tmp_path / "vit")
        baseline = load_baseline(tmp_path / "vit")(x)
    assert loaded.cfg.qkv_bias is False and loaded.model.blocks[0].attn.qkv.bias is None
    torch.testing.assert_close(baseline, reference, atol=1e-4 * (1 + float(reference.abs().max())), rtol=0)

    _, folder = hf_folder  # biases in the file, qkv_bias False in its config
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "vit" / "config.json").write_text(json.dumps({**config, "qkv_bias": False}))
    (tmp_path / "vit" / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"unexpected 4 keys \(blocks.0.attn.qkv.bias"):
        load_checkpoint(tmp_path / "vit")


def test_preprocessor_config_gives_normalisation_and_resampling(hf_folder, tmp_path):
    _, folder = hf_folder
    copy = tmp_path / "vit"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        (copy / name).write_bytes((folder / name).read_bytes())
    processor = transformers.ViTImageProcessor(size={"height": 128, "width": 128}, resample=2)
    processor.save_pretrained(copy)
    loaded = load_checkpoint(copy)
    assert loaded.cfg.preprocess.mean == pytest.approx(processor.image_mean)
    assert loaded.cfg.preprocess.std == pytest.approx(processor.image_std)
    assert loaded.cfg.preprocess.interpolation == "bilinear"
    assert any("without a shortest-edge center crop" in n for n in loaded.notes)
    (copy / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5], "resample": 2}))
    with pytest.raises(CheckpointError, match="image_mean is .*not 3 numbers"):
        load_checkpoint(copy)


@pytest.mark.parametrize("kind", ["deit", "vit"])
def test_preprocessing_equals_transformers_image_processor(tmp_path, kind):
    """What the adapter reads from preprocessor_config.json gives the pixels transformers' own
    processor gives: DeiT's (resize 160, center crop 128) and ViT's (resize to 128, no crop)."""
    from PIL import Image

    from sacvit_deploy.model.formats.hf import preprocess_for
    from sacvit_deploy.runtime.images import preprocess

    if kind == "deit":
        processor = transformers.DeiTImageProcessor(
            size={"height": 160, "width": 160},
            crop_size={"height": 128, "width": 128},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
    else:
        processor = transformers.ViTImageProcessor(size={"height": 128, "width": 128}, resample=2)
    processor.save_pretrained(tmp_path)
    pre, _ = preprocess_for(tmp_path, 128)
    assert pre.resize_size == (160 if kind == "deit" else 128)
    pixels = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    reference = processor(image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(preprocess(image, pre), reference, atol=1e-4)

    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    config["crop_size"] = {"height": 96, "width": 96}
    config["do_center_crop"] = True
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="crop_size is .*not the model's image_size 128"):
        preprocess_for(tmp_path, 128)


def test_train_init_from_hf_folder(hf_folder, tmp_path):
    from sacvit_deploy.training.loop import TrainOptions, load_init_weights, train
    from tests.fakes.pictures import write_colour_folder

    _, folder = hf_folder
    cfg = load_checkpoint(folder, "hf").cfg
    target = SACViT(cfg.replace(num_classes=3, class_names=None))
    data = write_colour_folder(tmp_path / "data", 6, 3, 0)
    opts = TrainOptions(
        data_dir=data,
        out_dir=tmp_path / "run",
        model_config=target.cfg,
        init=folder,
        init_format="hf",
        epochs=1,
        max_steps=1,
        batch_size=6,
        workers=0,
        device="cpu",
    )
    lines: list[str] = []
    load_init_weights(target, opts, lines.append)
    source = load_checkpoint(folder, "hf").model
    assert torch.equal(target.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    assert any("head re-initialised" in line for line in lines)
    result = train(opts, log=lambda *a, **k: None)
    assert result.cfg.num_classes == 3


def test_distilled_deit_is_refused_with_the_reason(tmp_path):
    config = transformers.DeiTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=64
    )
    transformers.DeiTForImageClassificationWithTeacher(config).save_pretrained(tmp_path / "deit")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "deit"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "distillation token" in lines[0], result.output
    assert "Traceback" not in result.output
    with pytest.raises(CheckpointError, match="distillation token"):
        load_checkpoint(tmp_path / "deit", "hf")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_act": "gelu_new"}, "exact GELU"),
        ({"model_type": "swin"}, "model_type 'swin'"),
        ({"hidden_size": "32"}, "hidden_size is '32', not an integer"),
        ({"num_hidden_layers": 10**9}, "num_hidden_layers is 1000000000"),
        ({"layer_norm_eps": float("nan")}, "layer_norm_eps"),
        ({"id2label": {"0": "a"}}, "id2label has 1 entries for 6 classes"),
        ({"id2label": {str(i): i for i in range(6)}}, "id2label entry"),
        ({"id2label": {**{str(i): "x" for i in range(5)}, "00": "y"}}, "id2label entry '00'"),
        ({"id2label": {**{str(i): "x" for i in range(5)}, "\u00b2": "y"}}, "id2label entry"),
        ({"id2label": {**{str(i): "x" for i in range(5)}, "\u0665": "y"}}, "id2label entry"),
        ({"architectures": ["ViTModel"]}, "only ViTForImageClassification"),
        ({"num_hidden_layers": 3}, "depth"),
        ("[" * 100_000 + "]" * 100_000, "unreadable config.json \\(nested too deep\\)"),
    ],
)
def test_every_config_field_is_validated(hf_folder, tmp_path, change, message):
    _, folder = hf_folder
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    if isinstance(change, dict):
        config.update(change)
    (bad / "config.json").write_text(change if isinstance(change, str) else json.dumps(config))
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_a_reexport_of_the_same_folder_keeps_its_calibrated_threshold(hf_folder, tmp_path):
    """A save_pretrained folder is identified by its files' sha256s (source.sha256), so a re-export
    of the same folder keeps the threshold `calibrate --write` stored, like a checkpoint file does;
    a changed weights file resets it."""
    import shutil

    from sacvit_deploy.export.export_checkpoint import export_checkpoint
    from sacvit_deploy.export.onnx_export import ExportOptions
    from tests.fakes.fixtures import write_calibration

    _, folder = hf_folder
    out = tmp_path / "export"
    options = ExportOptions(weights=False)
    first = export_checkpoint(folder, out, options=options, verify=False)
    assert first.checkpoint_sha256 is not None and first.manifest.source["sha256"] == first.checkpoint_sha256
    write_calibration(out, 0.338)
    again = export_checkpoint(folder, out, options=options, verify=False)
    assert again.calibration is not None and again.calibration.kept
    assert again.manifest.exit_threshold == 0.338 and again.manifest.calibration is not None

    changed = tmp_path / "vit"
    shutil.copytree(folder, changed)
    weights = changed / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(blob))
    other = export_checkpoint(changed, out, options=options, verify=False)
    assert other.checkpoint_sha256 != first.checkpoint_sha256
    assert other.calibration is not None and not other.calibration.kept
    assert other.manifest.calibration is None
