"""The demo model and sample images bundled in the package (see sacvit_deploy/data/demo/REPORT.md)."""

from __future__ import annotations

import torch

from sacvit_deploy.demo_assets import demo_model_path, demo_sample_images, sample_label
from sacvit_deploy.model import load_checkpoint
from sacvit_deploy.runtime.images import load_image
from sacvit_deploy.training import EvalTransform


def test_bundled_demo_model_loads_as_a_real_sac_vit():
    path = demo_model_path()
    assert path.stat().st_size < 2 * 2**20
    loaded = load_checkpoint(path)
    cfg = loaded.cfg
    assert loaded.fmt == "sacvit" and cfg.attention == "cluster" and cfg.selection == "window"
    assert cfg.class_names == tuple(str(d) for d in range(10))
    assert 0.0 < cfg.exit_threshold < 1.0


@torch.no_grad()
def test_bundled_samples_use_both_stages_and_are_mostly_right():
    loaded = load_checkpoint(demo_model_path())
    paths = demo_sample_images()
    assert len(paths) >= 8 and all(p.stat().st_size <= 5 * 1024 for p in paths)
    labels = [sample_label(p) for p in paths]
    assert None not in labels and len(set(labels)) >= 5

    transform = EvalTransform(loaded.cfg.preprocess)
    out = loaded.model(torch.stack([transform(load_image(p)) for p in paths]))  # the file's threshold
    stages = out.stage.tolist()
    assert 1 in stages and 2 in stages
    predictions = [loaded.cfg.class_names[i] for i in out.logits.argmax(dim=-1).tolist()]
    right = sum(p == t for p, t in zip(predictions, labels, strict=True))
    assert right >= 0.8 * len(paths), list(zip([p.name for p in paths], predictions, stages, strict=True))
    # "easy" samples exit at stage 1, "hard" ones go on to stage 2 (REPORT.md lists each one)
    expected = [1 if "_easy_" in p.name else 2 for p in paths]
    assert sum(s == e for s, e in zip(stages, expected, strict=True)) >= 0.8 * len(paths)


def test_sample_label_reads_the_file_name():
    assert sample_label("samples/digit7_hard_03.png") == "7"
    assert sample_label("cat.png") is None
