"""The format table drives everything: a new format is one adapter module plus one row, and then it is
a `--format` choice of export, train's `--init-format`, and `--format auto` recognises its files."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from sacvit_deploy.core.formats import CHECKPOINT_FORMATS

DUMMY = textwrap.dedent(
    '''
    """A format whose files are a timm DeiT state dict with every name prefixed by "dummy.". """
    from sacvit_deploy.model.formats.base import FormatAdapter


    class Adapter(FormatAdapter):
        def detect(self, raw):
            return bool(raw.state_dict) and all(k.startswith("dummy.") for k in raw.state_dict)

        def mismatch(self, raw):
            return None if self.detect(raw) else "no dummy.* tensors"

        def state_dict(self, raw):
            return {k[len("dummy."):]: v for k, v in raw.state_dict.items()}
    '''
)

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from sacvit_deploy.core.formats import CheckpointFormat, register_format
    register_format(CheckpointFormat(
        "dummy", "a test format", "window", "cluster", 0.88, "dummy_plugin.fmt", two_stage=False, trainable=False
    ))
    from typer.testing import CliRunner
    from sacvit_deploy.cli import app
    from sacvit_deploy.model import DeiT, load_checkpoint, make_config
    runner = CliRunner()
    print("EXPORT", runner.invoke(app, ["export", "--help"], terminal_width=200).output)
    print("TRAIN", runner.invoke(app, ["train", "--help"], terminal_width=200).output)
    sd = DeiT(make_config("deit_tiny_224")).state_dict()
    path = sys.argv[1] + "/dummy.pth"
    torch.save({"dummy." + k: v for k, v in sd.items()}, path)
    print("AUTO", load_checkpoint(path).fmt)
    """
)


def test_a_dummy_format_is_one_module_and_one_row(tmp_path):
    (tmp_path / "dummy_plugin").mkdir()
    (tmp_path / "dummy_plugin" / "__init__.py").write_text("")
    (tmp_path / "dummy_plugin" / "fmt.py").write_text(DUMMY)  # the one module
    env_path = f"{tmp_path}"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {env_path!r}); exec({SCRIPT!r})",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    export_help = done.stdout.split("EXPORT", 1)[1].split("TRAIN", 1)[0]
    train_help = done.stdout.split("TRAIN", 1)[1].split("AUTO", 1)[0]
    assert "dummy" in export_help and "hf" in export_help
    assert "dummy" in train_help  # --init-format: any format can initialise training
    assert done.stdout.split("AUTO", 1)[1].strip() == "dummy"


def test_every_row_has_an_adapter_and_no_format_is_special_cased():
    from pathlib import Path

    import sacvit_deploy
    from sacvit_deploy.model.formats import adapter_for

    for name in CHECKPOINT_FORMATS:
        assert adapter_for(name).row is CHECKPOINT_FORMATS[name]
    root = Path(sacvit_deploy.__file__).parent
    for rel in ("model/checkpoint.py", "cli/variants.py", "model/config.py"):
        text = (root / rel).read_text()
        for name in CHECKPOINT_FORMATS:
            assert f'== "{name}"' not in text and f'!= "{name}"' not in text, (rel, name)
