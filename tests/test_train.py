"""Training: data layout checks, transforms, loss and schedule, checkpoints, resume, the CLI."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.model import SACViT, load_checkpoint, save_checkpoint, tiny_config
from sacvit_deploy.training import (
    EvalTransform,
    ImageFolderDataset,
    TrainTransform,
    distillation_loss,
    lr_at,
    make_loader,
    param_groups,
    scan_image_folder,
    train,
)
from sacvit_deploy.training.data import ImageDecodeError
from sacvit_deploy.training.loop import load_init_weights
from tests.conftest import tiny_train_options
from tests.fakes.pictures import write_colour_folder


def quiet():
    """A log sink that keeps the lines (the library reports through a callable, not a console)."""
    return [].append


# ---- data ------------------------------------------------------------------------------------------
def test_scan_lists_classes_and_images(colour_data):
    train_split, val_split = scan_image_folder(colour_data)
    assert train_split.class_names == ("blue", "green", "red")
    assert len(train_split.samples) == 24 and len(val_split.samples) == 9
    assert {label for _, label in val_split.samples} == {0, 1, 2}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: None, "no such folder"),
        (lambda r: (r / "train" / "a").mkdir(parents=True), "has no 'val' folder"),
        (lambda r: ((r / "train").mkdir(parents=True), (r / "val").mkdir()), "it has no class folders"),
        (
            lambda r: (
                (r / "train").mkdir(parents=True),
                (r / "val").mkdir(),
                Image.new("RGB", (8, 8)).save(r / "train" / "x.png"),
            ),
            "images lie directly in it",
        ),
        (
            lambda r: ((r / "train" / "a").mkdir(parents=True), (r / "val" / "a").mkdir(parents=True)),
            "train/a: no images",
        ),
    ],
    ids=["missing", "no-val", "no-classes", "loose-images", "empty-class"],
)
def test_bad_layouts_are_one_line_errors(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(SacvitError, match=message) as info:
        scan_image_folder(root)
    assert "\n" not in str(info.value)


def test_val_classes_must_match_train(tmp_path):
    root = write_colour_folder(tmp_path / "data", n_train=1, n_val=1)
    (root / "val" / "red").rename(root / "val" / "purple")
    with pytest.raises(SacvitError, match=r"missing red; extra purple"):
        scan_image_folder(root)
    (root / "val" / "purple").rename(root / "val" / "red")
    for p in (root / "val").rglob("*.png"):
        p.unlink()
    with pytest.raises(SacvitError, match="val: no images"):
        scan_image_folder(root)


def test_transforms_shapes_and_determinism():
    cfg = tiny_config()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8))
    tt = TrainTransform(cfg.preprocess, scale=(0.5, 1.0))
    a = tt(img, np.random.default_rng([1, 2, 3]))
    b = tt(img, np.random.default_rng([1, 2, 3]))
    assert a.shape == (3, 128, 128) and torch.equal(a, b)
    assert not torch.equal(a, tt(img, np.random.default_rng([1, 2, 4])))
    # Eval on a flat grey image: resize + crop keep the value, then (v - mean) / std.
    grey = EvalTransform(cfg.preprocess)(Image.new("RGB", (90, 150), (128, 128, 128)))
    assert grey.shape == (3, 128, 128)
    expected = (128 / 255 - torch.tensor(cfg.preprocess.mean)) / torch.tensor(cfg.preprocess.std)
    torch.testing.assert_close(grey.mean(dim=(1, 2)), expected, atol=1e-3, rtol=0)


def test_augmentation_does_not_depend_on_worker_count(colour_data):
    split, _ = scan_image_folder(colour_data)
    ds = ImageFolderDataset(split, TrainTransform(tiny_config().preprocess), seed=3)
    ds.set_epoch(5)
    batches = []
    for workers in (0, 2):
        loader = make_loader(ds, 4, train=True, workers=workers)
        loader.generator.manual_seed(11)
        batches.append(next(iter(loader)))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])


def test_a_corrupt_image_is_one_line_with_or_without_loader_workers(tmp_path):
    """torch re-raises a worker's exception with the worker's traceback in its message: the data
    error keeps only its own line, so train prints one line with --workers 2 as with 0."""
    split, _ = scan_image_folder(write_colour_folder(tmp_path / "data"))
    bad, _label = split.samples[0]
    Path(bad).write_bytes(b"not an image at all")
    ds = ImageFolderDataset(split, TrainTransform(tiny_config().preprocess), seed=3)
    for workers in (0, 2):
        loader = make_loader(ds, len(split.samples), train=False, workers=workers)
        with pytest.raises(ImageDecodeError) as info:
            next(iter(loader))
        message = str(info.value)
        assert "\n" not in message and "Traceback" not in message and "worker" not in message, message
        assert str(bad) in message


# ---- loss, optimiser, schedule ---------------------------------------------------------------------
def test_loss_is_ce_plus_kl_and_training_steps_reduce_it():
    torch.manual_seed(0)
    model = SACViT(tiny_config(num_classes=3)).train()
    x, y = torch.randn(6, 3, 128, 128), torch.tensor([0, 1, 2, 0, 1, 2])
    logits1, logits2 = model.forward_train(x)
    loss, ce, kl = distillation_loss(logits1, logits2, y)
    p2 = logits2.softmax(-1)
    expected_kl = (p2 * (p2.log() - logits1.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(kl, expected_kl)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits2, y) + expected_kl)
    assert ce.item() > 0 and kl.item() >= 0

    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=2e-3)
    losses = []
    for i in range(12):
        loss, _, _ = distillation_loss(*model.forward_train(x, select_tokens=i >= 6), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    # stage 2 teaches stage 1: the KL term is a function of logits1 only
    logits1, logits2 = model.forward_train(x)
    _, _, kl = distillation_loss(logits1, logits2, y)
    assert torch.autograd.grad(kl, logits2, allow_unused=True)[0] is None


def test_no_weight_decay_on_biases_norms_cls_and_pos_embed():
    model = SACViT(tiny_config())
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embed_list.0", "pos_embed_list.1", "norm.weight", "head.bias"} <= skipped
    assert {"blocks.0.attn.qkv.weight", "head.weight", "patch_embed.proj.weight"} <= {
        names[id(p)] for p in decay["params"]
    }
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_lr_schedule_warms_up_linearly_then_cosine():
    lrs = [lr_at(s, 100, 10, 1e-3, 1e-5) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[55] == pytest.approx((1e-3 + 1e-5) / 2)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lr_at(100, 100, 10, 1e-3, 1e-5) == pytest.approx(1e-5)


# ---- runs ------------------------------------------------------------------------------------------
def test_training_writes_loadable_checkpoints_and_log(colour_data, tmp_path):
    out = tmp_path / "run"
    result = train(tiny_train_options(colour_data, out, threshold=0.6), log=quiet())
    assert result.steps == 2 * 4 and len(result.history) == 2
    assert [r["token_selection"] for r in result.history] == [False, True]

    raw = torch.load(out / "last.pt", weights_only=True)
    assert raw["format"] == "sacvit-deploy" and raw["epoch"] == 1 and raw["step"] == 8
    last = load_checkpoint(out / "last.pt", "sacvit")
    assert last.cfg.class_names == ("blue", "green", "red") and last.cfg.num_classes == 3
    assert last.cfg.exit_threshold == 0.6
    best = load_checkpoint(out / "best.safetensors")
    assert best.cfg == last.cfg

    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for key in ("train_loss", "val_acc_stage1", "val_acc_stage2", "val_acc_early_exit", "val_exit_rate"):
        assert all(math.isfinite(r[key]) for r in rows)
    assert max(r["val_acc_early_exit"] for r in rows) == pytest.approx(result.best_metric)


class _Interrupt(Exception):
    pass


def _stop_after_first_epoch(record: dict) -> None:
    if record["epoch"] == 0:
        raise _Interrupt


def test_resume_continues_and_matches_an_uninterrupted_run(colour_data, tmp_path):
    full = train(tiny_train_options(colour_data, tmp_path / "full", drop_path=0.1), log=quiet())

    opts = tiny_train_options(colour_data, tmp_path / "cut", drop_path=0.1)
    with pytest.raises(_Interrupt):
        train(opts, log=quiet(), on_epoch_end=_stop_after_first_epoch)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 0
    lines: list[str] = []
    resumed = train(
        tiny_train_options(colour_data, tmp_path / "cut", drop_path=0.1, resume=True), log=lines.append
    )
    text = "\n".join(lines)
    assert "resuming" in text and "at epoch 2/2, step 4" in text

    assert resumed.steps == full.steps == 8
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in full.history]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert len((tmp_path / "cut" / "log.jsonl").read_text().splitlines()) == 2


def test_resume_refusals(colour_data, tmp_path):
    with pytest.raises(SacvitError, match="no checkpoint to resume"):
        train(tiny_train_options(colour_data, tmp_path / "none", resume=True), log=quiet())
    out = tmp_path / "run"
    train(tiny_train_options(colour_data, out, epochs=1, max_steps=1), log=quiet())
    with pytest.raises(SacvitError, match="a run is already there; pass --resume"):
        train(tiny_train_options(colour_data, out, epochs=1), log=quiet())
    with pytest.raises(SacvitError, match=r"another model config \(exit_threshold 0.5 vs 0.9"):
        train(tiny_train_options(colour_data, out, epochs=2, threshold=0.9, resume=True), log=quiet())


def test_init_copies_weights_and_reinitialises_a_head_of_another_size(colour_data, tmp_path):
    torch.manual_seed(5)
    source = SACViT(tiny_config(num_classes=10))
    init = save_checkpoint(source, tmp_path / "init.safetensors")
    opts = tiny_train_options(
        colour_data, tmp_path / "run", model_config=None, init=init, init_format="sacvit"
    )
    target = SACViT(tiny_config(num_classes=3))
    fresh_head = target.head.weight.detach().clone()
    lines: list[str] = []
    load_init_weights(target, opts, lines.append)
    assert torch.equal(target.blocks[2].mlp.fc1.weight, source.blocks[2].mlp.fc1.weight)
    assert torch.equal(target.pos_embed_list[0], source.pos_embed_list[0])
    assert torch.equal(target.head.weight, fresh_head)
    assert any("head re-initialised" in line for line in lines)
    # Through train(): the sacvit init brings its architecture, the data its classes.
    result = train(opts, log=quiet())
    assert result.cfg.num_classes == 3 and result.cfg.variant == "tiny_test"


def test_run_folder_refusals_leave_every_file_as_it_was(colour_data, tmp_path):
    """Outputs are never inputs: --out in the data, on a file, on the --init checkpoint or on an
    earlier run's files is refused before any work, and nothing is written or truncated."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "log.jsonl").write_text('{"epoch": 1}\n')
    (earlier / "best.safetensors").write_bytes(b"someone's weights")
    init = tmp_path / "init"
    init.mkdir()
    save_checkpoint(SACViT(tiny_config()), init / "best.safetensors")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    cases = [
        (colour_data, "is inside the training data"),
        (colour_data / "train" / "run", "is inside the training data"),
        (a_file, "is a file; --out takes the run folder"),
        (earlier, r"already holds best.safetensors, log.jsonl from an earlier run"),
    ]

    def snapshot() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = snapshot()
    for out, message in cases:
        with pytest.raises(SacvitError, match=message):
            train(tiny_train_options(colour_data, out, epochs=1, max_steps=1), log=quiet())
    with pytest.raises(SacvitError, match="is the run's own best.safetensors, which this run overwrites"):
        train(
            tiny_train_options(colour_data, init, init=init / "best.safetensors", epochs=1, max_steps=1),
            log=quiet(),
        )
    assert snapshot() == before
    assert not (colour_data / "train" / "run").exists()
    # Through the CLI: one line, no traceback.
    result = CliRunner().invoke(
        app, ["train", str(colour_data), "--out", str(colour_data), "--device", "cpu"]
    )
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "is the input" in result.output  # the output policy every command shares (cli._paths)


def test_device_and_amp_refusals(colour_data, tmp_path):
    with pytest.raises(SacvitError, match="--amp needs --device cuda"):
        train(tiny_train_options(colour_data, tmp_path / "a", amp=True), log=quiet())
    if not torch.cuda.is_available():
        with pytest.raises(SacvitError, match="--device cuda: .*no CUDA"):
            train(tiny_train_options(colour_data, tmp_path / "b", device="cuda"), log=quiet())


# ---- CLI -------------------------------------------------------------------------------------------
def test_cli_trains_one_epoch(colour_data, tmp_path):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(tiny_config().to_dict()))
    out = tmp_path / "run"
    args = ["train", str(colour_data), "--config-json", str(cfg_path), "--epochs", "1", "--max-steps", "2"]
    args += ["--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(out), "--no-hflip"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best val accuracy (early exit at threshold 0.5)" in result.output
    assert "epoch 1/1" in result.output
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(tmp_path / "nowhere"), "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "no such folder" in result.output
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(tiny_config().to_dict()))
    write_colour_folder(tmp_path / "d", n_train=1, n_val=1)
    result = runner.invoke(
        app, ["train", str(tmp_path / "d"), "--config-json", str(cfg_path), "--variant", "deit_tiny_224"]
    )
    assert result.exit_code == 1 and "drop --variant/--format" in result.output
