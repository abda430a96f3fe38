"""Training on several processes (gloo on the CPU), the DeiT recipe's pieces, fine-tuning.

The multi-process runs are real: separate Python processes with the environment torchrun sets
(env:// rendezvous over TCP on localhost), and one run through the real ``torchrun`` and the CLI.
Tolerances (measured on 2 busy CPU cores, see docs/training.md): with the same global batch, 2
processes (x 2 accumulation steps) and 1 process agree to 4.2e-5 in the weights after 3 AdamW steps
at lr 1e-3 and to 5e-7 (relative) in the loss; the weights' tolerance is 2e-4, a fifth of one step.
Float summation order is the only difference: AdamW's division by sqrt(v) + eps magnifies it for
gradients that nearly cancel.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.model import ModelConfig, SACViT, load_checkpoint, save_checkpoint, tiny_config
from sacvit_deploy.training import GlobalBatchSampler, ModelEma, TrainOptions, eval_shard, train
from sacvit_deploy.training.augment import OPS, MixupCutmix, RandAugment, RandomErasing
from sacvit_deploy.training.data import default_workers
from sacvit_deploy.training.distributed import World, resolve_device, world_from_env
from sacvit_deploy.training.recipe import param_groups
from tests.fakes.pictures import write_colour_folder

TESTS = Path(__file__).resolve().parent
# Weights after the same steps on 1 and on 2 processes (lr 1e-3): float summation order differs, nothing else.
PARITY_ATOL = 2e-4
LOSS_RTOL = 1e-5


def write_folder(root: Path, n_train: int = 12, n_val: int = 3, seed: int = 0) -> Path:
    return write_colour_folder(root, n_train, n_val, seed)


def quiet():
    return [].append


@contextlib.contextmanager
def one_thread():
    """In-process runs on one thread, as torchrun gives each process (OMP_NUM_THREADS=1): on 2 busy
    cores torch's default 2 threads make a tiny epoch 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_spec(data: Path, out: Path, **changes) -> dict:
    """36 images, global batch 12 (3 steps/epoch), selection from epoch 2, the per-sample recipe parts on."""
    spec = dict(
        data_dir=str(data),
        out_dir=str(out),
        model_config=tiny_config().to_dict(),
        epochs=2,
        batch_size=12,
        lr=1e-3,
        warmup_epochs=1,
        selection_warmup_epochs=1,
        workers=0,
        device="cpu",
        smoothing=0.1,
        rand_augment="rand-m9-mstd0.5-inc1",
        reprob=0.25,
        repeated_aug=2,
        ema_decay=0.5,
    )
    spec.update(changes)
    return spec


def options(spec: dict) -> TrainOptions:
    kw = dict(spec)
    kw["model_config"] = ModelConfig.from_dict(kw["model_config"]) if kw.get("model_config") else None
    for key in ("data_dir", "out_dir", "init"):
        if kw.get(key):
            kw[key] = Path(kw[key])
    return TrainOptions(**kw)


def launch(world: int, spec: dict, tmp: Path, name: str) -> dict:
    """``world`` worker processes with torchrun's environment; returns rank 0's records."""
    spec = {**spec, "result": str(tmp / f"{name}.pt")}
    spec_path = tmp / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    port = free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(TESTS / "train_worker.py"), str(spec_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for rank, (p, text) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{text[-3000:]}"
    return torch.load(tmp / f"{name}.pt", weights_only=False)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ---- the sampler -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "batch", "world", "accum"),
    [(36, 12, 2, 1), (37, 12, 2, 2), (10, 8, 4, 1), (5, 6, 3, 2), (3, 4, 4, 1)],
)
def test_sampler_shards_are_disjoint_complete_and_world_invariant(n, batch, world, accum):
    per_rank = []
    for rank in range(world):
        s = GlobalBatchSampler(n, batch, world, rank, seed=7, accum_steps=accum)
        s.set_epoch(3)
        per_rank.append(list(s.shards()))
        assert len(per_rank[-1]) == len(s) == math.ceil(n / batch) * accum  # same step count on every rank
    counted = [d for shards in per_rank for sh in shards for d in sh.draws[: sh.weighted]]
    assert sorted(counted) == list(range(n))  # every sample exactly once, by one rank
    # The global batches are those of one process with the same global batch, in the same order.
    one = GlobalBatchSampler(n, batch, 1, 0, seed=7)
    one.set_epoch(3)
    for step, single in enumerate(one.shards()):
        together = [
            d
            for micro in range(accum)
            for shards in per_rank
            for d in (lambda sh: sh.draws[: sh.weighted])(shards[step * accum + micro])
        ]
        assert sorted(together) == sorted(single.draws)
    other = GlobalBatchSampler(n, batch, 1, 0, seed=7)
    other.set_epoch(4)
    assert n < 4 or list(other.epoch_draws()) != list(one.epoch_draws())


def test_repeated_augmentation_draws_copies_and_keeps_the_epoch_length():
    s = GlobalBatchSampler(12, 6, 2, 0, seed=1, repeats=3)
    draws = s.epoch_draws()
    assert len(draws) == 12
    images, copies = draws % 12, draws // 12
    assert list(copies[:6]) == [0, 1, 2, 0, 1, 2] and len(set(images)) == 4
    assert all(images[i] == images[i + 1] == images[i + 2] for i in range(0, 12, 3))


def test_eval_shards_are_contiguous_and_complete():
    for n, world in ((9, 2), (2, 3), (100, 8)):
        parts = [eval_shard(n, world, r) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(n))


# ---- the world -------------------------------------------------------------------------------------
TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set; start"),
        ({**TORCHRUN_ENV, "RANK": "2"}, r"RANK=2 is outside WORLD_SIZE=2 \(ranks are 0..1\)"),
        ({**TORCHRUN_ENV, "WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({**TORCHRUN_ENV, "LOCAL_WORLD_SIZE": "1"}, "LOCAL_RANK=1 with LOCAL_WORLD_SIZE=1"),
    ],
)
def test_misconfigured_worlds_are_one_line_errors(env, message):
    with pytest.raises(SacvitError, match=message) as info:
        world_from_env(env)
    assert "\n" not in str(info.value)


def test_world_checks_devices_and_batch_split(monkeypatch, tmp_path):
    assert world_from_env({}) == World()
    w = world_from_env(TORCHRUN_ENV)
    assert (w.rank, w.size, w.local_size, w.is_main, w.distributed) == (1, 2, 2, False, False)
    with pytest.raises(SacvitError, match="--amp needs --device cuda"):
        resolve_device("cpu", "fp16", w)
    assert resolve_device("cpu", "bf16", w) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SacvitError, match="no CUDA"):
            resolve_device("cuda", None, w)
    # A global batch that does not split over the processes is refused before anyone waits.
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    spec = base_spec(tmp_path, tmp_path / "run", batch_size=7, accum_steps=2)
    with pytest.raises(
        SacvitError, match=r"global batch and must be a multiple of 2 process\(es\) x --accum-steps 2"
    ):
        train(options(spec), log=quiet())
    spec = base_spec(tmp_path, tmp_path / "run", dist_backend="nccl")
    with pytest.raises(SacvitError, match="nccl needs --device cuda"):
        train(options(spec), log=quiet())


def test_default_workers_fit_the_cpus():
    cpus = len(os.sched_getaffinity(0))
    assert default_workers(1) == max(0, min(8, cpus - 1))
    assert default_workers(cpus) == 0  # one process per core leaves no core for loaders


# ---- recipe pieces ---------------------------------------------------------------------------------
def test_rand_augment_is_seeded_and_every_op_runs():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    ra = RandAugment.from_string("rand-m9-mstd0.5-inc1")
    assert (ra.magnitude, ra.magnitude_std, ra.num_ops, ra.prob) == (9, 0.5, 2, 0.5)
    a = ra(img, np.random.default_rng([1, 2]))
    assert np.array_equal(np.asarray(a), np.asarray(ra(img, np.random.default_rng([1, 2]))))
    changed = sum(
        not np.array_equal(np.asarray(ra(img, np.random.default_rng([1, k]))), np.asarray(img))
        for k in range(20)
    )
    assert changed >= 10  # 2 ops at p 0.5: about 3 images in 4 change
    for name, op in OPS.items():
        out = op(img, 9.0, ra.fill, np.random.default_rng(0))
        assert out.size == img.size and out.mode == "RGB", name
    with pytest.raises(ValueError, match="unknown part"):
        RandAugment.from_string("rand-m9-x3")


def test_random_erasing_and_mixup_cutmix():
    x = torch.zeros(3, 32, 32)
    erased = RandomErasing(prob=1.0)(x, np.random.default_rng(0))
    frac = float((erased != 0).float().mean())
    assert 0.02 * 0.9 <= frac <= 1 / 3 + 0.01
    assert torch.equal(RandomErasing(prob=0.0)(x, np.random.default_rng(0)), x)

    images = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(4)])
    labels = torch.tensor([0, 1, 2, 0])
    mix = MixupCutmix(3, mixup_alpha=0.8, cutmix_alpha=0.0, smoothing=0.1)
    mixed, target = mix(images, labels, np.random.default_rng(3))
    lam = 2.0 - float(mixed[1, 0, 0, 0])  # image 1 (label 1) is mixed with image 2 (label 2)
    assert 0 < lam < 1
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    off = 0.1 / 3
    torch.testing.assert_close(
        target[1],
        torch.tensor([off, lam * (0.9 + off) + (1 - lam) * off, lam * off + (1 - lam) * (0.9 + off)]),
    )
    cut = MixupCutmix(3, mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0)
    mixed, target = cut(images, labels, np.random.default_rng(5))
    pasted = float((mixed[1] == 2.0).float().mean())  # image 1's box comes from image 2
    torch.testing.assert_close(target[1], torch.tensor([0.0, 1 - pasted, pasted]))


def test_ema_and_layer_decay_groups():
    torch.manual_seed(0)
    model = SACViT(tiny_config())
    ema = ModelEma(model, decay=0.75)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, v in ema.state_dict().items():
        if v.dtype.is_floating_point and k in dict(model.named_parameters()):
            torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * model.state_dict()[k])
    groups = param_groups(model, 0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    depth = len(model.blocks)
    assert scale["head.weight"] == (1.0, 0.05) and scale["head.bias"] == (1.0, 0.0)
    assert scale["blocks.0.attn.qkv.weight"] == (0.5**depth, 0.05)
    assert scale["cls_token"] == (0.5 ** (depth + 1), 0.0) and scale["pos_embed_list.1"][1] == 0.0
    assert len(scale) == len(list(model.parameters()))


# ---- real multi-process runs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """2-process run cut after epoch 1; 1-process uninterrupted run; resumes on 1 and on 2 processes."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = write_folder(tmp / "data")
    r: dict = {"tmp": tmp, "data": data}
    # 2 processes x 2 accumulation steps x 3 = the 1-process run's batch of 12.
    r["cut2"] = launch(2, base_spec(data, tmp / "cut2", accum_steps=2, stop_after_epoch=0), tmp, "cut2")

    epoch0: dict = {}

    def keep_epoch0(record: dict) -> None:
        if record["epoch"] == 0:
            epoch0.update(torch.load(tmp / "full1" / "last.pt", weights_only=True))

    shutil.copytree(tmp / "cut2", tmp / "res1")
    with one_thread():
        r["full1"] = train(options(base_spec(data, tmp / "full1")), log=quiet(), on_epoch_end=keep_epoch0)
        r["res1"] = train(options(base_spec(data, tmp / "res1", resume=True)), log=quiet())
    r["full1_epoch0"] = epoch0

    # Through the real torchrun and the CLI, 2 processes.
    shutil.copytree(tmp / "cut2", tmp / "res2")
    cfg_path = tmp / "cfg.json"
    cfg_path.write_text(json.dumps(tiny_config().to_dict()))
    s = base_spec(data, tmp / "res2")
    args = [
        str(data),
        "--config-json",
        str(cfg_path),
        "--out",
        str(tmp / "res2"),
        "--resume",
        "--device",
        "cpu",
    ]
    for key in ("epochs", "batch_size", "lr", "warmup_epochs", "selection_warmup_epochs", "workers"):
        args += [f"--{key.replace('_', '-')}", str(s[key])]
    for key in ("smoothing", "rand_augment", "reprob", "repeated_aug", "ema_decay"):
        args += [f"--{key.replace('_', '-')}", str(s[key])]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port"]
    cli = shutil.which("sacvit-deploy") or str(Path(sys.executable).with_name("sacvit-deploy"))
    done = subprocess.run(
        [*torchrun, str(free_port()), cli, "train", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    r["res2_cli"] = done
    return r


def test_two_processes_match_one_process_for_an_epoch(runs):
    cut2 = torch.load(runs["tmp"] / "cut2" / "last.pt", weights_only=True)
    one = runs["full1_epoch0"]
    assert cut2["epoch"] == one["epoch"] == 0 and cut2["step"] == one["step"] == 3
    assert cut2["train_options"]["world_size"] == 2
    diff = max_diff(cut2["model"], one["model"])
    assert diff <= PARITY_ATOL, diff
    assert max_diff(cut2["ema"], one["ema"]) <= PARITY_ATOL
    loss2, loss1 = runs["cut2"]["records"][0]["train_loss"], runs["full1"].history[0]["train_loss"]
    assert loss2 == pytest.approx(loss1, rel=LOSS_RTOL)


def test_resume_a_two_process_checkpoint_on_one_and_on_two_processes(runs):
    full = runs["full1"]
    res1 = runs["res1"]
    assert res1.steps == full.steps == 6 and [r["epoch"] for r in log_rows(runs["tmp"] / "res1")] == [0, 1]
    assert max_diff(res1.model.state_dict(), full.model.state_dict()) <= PARITY_ATOL
    assert res1.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], rel=LOSS_RTOL)

    cli = runs["res2_cli"]
    assert "written by 2 process(es), continuing on 2" in cli.stderr
    assert cli.stderr.count("epoch 2/2  loss") == 1  # rank 0 alone logs
    assert cli.stdout.count("resumable checkpoint") == 1
    res2 = torch.load(runs["tmp"] / "res2" / "last.pt", weights_only=True)
    assert res2["epoch"] == 1 and res2["step"] == 6
    assert max_diff(res2["model"], full.model.state_dict()) <= PARITY_ATOL
    rows = log_rows(runs["tmp"] / "res2")
    assert [r["world_size"] for r in rows] == [2, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]  # the loss decreases on 2 processes
    assert full.history[1]["train_loss"] < full.history[0]["train_loss"]


def test_ema_checkpoint_from_two_processes_exports_with_class_names(runs, tmp_path):
    out = runs["tmp"] / "res2"
    ema = load_checkpoint(out / "best_ema.safetensors")
    best = load_checkpoint(out / "best.safetensors")
    assert ema.cfg.class_names == ("blue", "green", "red") == best.cfg.class_names
    assert max_diff(ema.model.state_dict(), best.model.state_dict()) > 0  # its own weights
    assert all("ema_val_acc_early_exit" in r for r in log_rows(out))
    result = CliRunner().invoke(
        app, ["export", str(out / "best_ema.safetensors"), "--out", str(tmp_path / "e")]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["model"]["class_names"] == ["blue", "green", "red"]


# ---- fine-tuning -----------------------------------------------------------------------------------
def test_fine_tune_new_head_frozen_backbone_and_selection_warning(tmp_path):
    data = write_folder(tmp_path / "data", n_train=4, n_val=1)
    torch.manual_seed(5)
    source = SACViT(tiny_config(num_classes=10))
    init = save_checkpoint(source, tmp_path / "init.safetensors")
    # bf16 autocast on the CPU, Mixup/CutMix and layer-wise decay ride along (no parity claim for them).
    spec = base_spec(data, tmp_path / "ft", epochs=2, batch_size=6, max_steps=1, amp=True, amp_dtype="bf16")
    spec.update(mixup=0.8, cutmix=1.0, layer_decay=0.65)
    spec.pop("selection_warmup_epochs")  # default: round(0.77 * 2) = 2, i.e. never: must warn
    spec.update(model_config=None, init=str(init), init_format="sacvit", freeze_epochs=1, num_classes=3)
    opts = options(spec)
    after: list[dict] = []
    lines: list[str] = []
    with one_thread():
        train(
            opts,
            log=lines.append,
            on_epoch_end=lambda r: after.append(torch.load(opts.out_dir / "last.pt")["model"]),
        )
    text = "\n".join(lines)
    assert "head re-initialised" in text and "backbone frozen" in text
    assert "warning: token selection would start at epoch 3, after the last epoch (2)" in text
    src = source.state_dict()
    assert torch.equal(after[0]["blocks.1.attn.qkv.weight"], src["blocks.1.attn.qkv.weight"])  # frozen
    assert not torch.equal(after[0]["reuse_block.1.fc1.weight"], src["reuse_block.1.fc1.weight"])
    assert not torch.equal(after[1]["blocks.1.attn.qkv.weight"], src["blocks.1.attn.qkv.weight"])  # thawed
    assert load_checkpoint(opts.out_dir / "best.safetensors").cfg.class_names == ("blue", "green", "red")

    opts.num_classes, opts.out_dir = 5, tmp_path / "wrong"
    with pytest.raises(
        SacvitError, match=r"--num-classes 5, but .* has 3 class folders \(blue, green, red\)"
    ):
        train(opts, log=quiet())
