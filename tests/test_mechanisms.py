"""The hardening rules as mechanisms (issue 22): each is built once where every command passes
through it, and each test here holds a mechanism to a hostile case, including a NEW command
(a dummy registered in the test) that gets the output-path policy, the value checks and the
escaping without asking.

Mechanisms: path roles + output policy (cli._command.handle_errors, cli._paths), one atomic writer
(core.atomic, core.publish), one run-folder lock (core.lock), crash-consistent resume
(training.loop), one printer (cli._console consoles, log routing, ORT's logger), validated replies
(triton.reply), validated values (core.validate, for the CLI and the API), serve owning its children.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Annotated, ClassVar, Optional

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import err, note, out
from sacvit_deploy.cli._paths import ARTIFACTS, INPUT, OUTPUT_FILE, OUTPUT_FOLDER, path_roles, write_json
from sacvit_deploy.core import atomic, validate
from sacvit_deploy.core.errors import SacvitError
from tests.conftest import make_tiny, tiny_train_options

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts

    root = tmp_path_factory.mktemp("mech-export")
    export_artifacts(make_tiny("sacvit"), root / "export", ExportOptions(), "sacvit")
    return root / "export"


def _run(runner_app: typer.Typer, args: list[str], cwd: Path | None = None):
    runner = CliRunner()
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = runner.invoke(runner_app, args, catch_exceptions=False)
    finally:
        os.chdir(old)
    return result


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# ---- 1. every path option is declared; one output policy for all -----------------------------------
def _commands() -> list[tuple[str, object]]:
    return [(c.name or c.callback.__name__, c.callback) for c in app.registered_commands]


def test_every_command_passes_through_handle_errors_and_declares_every_path():
    import inspect

    import typing_extensions as typing  # Annotated-aware hints on Python 3.8 too (typer needs it)

    for name, callback in _commands():
        assert hasattr(callback, "__wrapped__"), f"{name}: not wrapped by handle_errors"
        fn = callback.__wrapped__
        hints = typing.get_type_hints(fn, include_extras=True)  # evaluable: the policy can see them
        roles = path_roles(fn)
        for param in inspect.signature(fn).parameters:
            base = typing.get_args(hints[param])[0] if typing.get_origin(hints[param]) is Annotated else None
            text = repr(base)
            if "Path" in text:
                assert param in roles, f"{name} {param}: a path without a role"


def test_an_undeclared_path_parameter_is_refused_when_the_command_is_defined():
    with pytest.raises(TypeError, match="parameter report is a path; declare it"):

        @handle_errors
        def careless(report: Annotated[Optional[Path], typer.Option()] = None) -> None:  # noqa: UP045
            pass


ran: list[str] = []


def _dummy_app() -> typer.Typer:
    """A command written today by someone who knows nothing of the rules but the role markers."""
    dummy = typer.Typer()

    @dummy.command()
    @handle_errors
    def summarise(
        source: Annotated[Path, typer.Argument(), ARTIFACTS],
        notes: Annotated[Optional[Path], typer.Option(), INPUT] = None,  # noqa: UP045
        report: Annotated[Optional[Path], typer.Option("--report"), OUTPUT_FILE] = None,  # noqa: UP045
        summary: Annotated[Optional[Path], typer.Option("--summary"), OUTPUT_FILE] = None,  # noqa: UP045
        into: Annotated[Optional[Path], typer.Option("--into"), OUTPUT_FOLDER] = None,  # noqa: UP045
        threshold: Annotated[Optional[float], typer.Option()] = None,  # noqa: UP045
        batch_size: Annotated[int, typer.Option()] = 8,
        topk: Annotated[int, typer.Option()] = 1,
        workers: Annotated[int, typer.Option()] = 1,
        shout: Annotated[Optional[str], typer.Option()] = None,  # noqa: UP045
    ) -> None:
        ran.append("body")
        if shout:
            raise SacvitError(f"{shout}: refused")
        if report is not None:
            write_json(report, {"ok": True})
            note(f"wrote {report}")  # careless: not through safe()
            out.print(f"report {report}")
        if into is not None:
            into.mkdir(parents=True, exist_ok=True)

    @dummy.command()
    def other() -> None:  # a second command, so typer keeps the command names
        pass

    return dummy


@pytest.mark.parametrize(
    "args, message",
    [
        (["--report", "export/manifest.json"], "is a file of the artifact folder"),
        (["--report", "export/stage1.onnx"], "is a file of the artifact folder"),
        (["--report", "export/new/report.json"], "is a file of the artifact folder"),
        (["--notes", "notes.txt", "--report", "notes.txt"], "is one of the inputs"),
        (["--notes", "data", "--report", "data/old.txt"], "lies in the input folder"),
        (["--report", "r.json", "--summary", "./r.json"], "is also --report"),
        (["--report", "missing/r.json"], "does not exist"),
        (["--report", "notes.txt/r.json"], "does not exist"),
        (["--report", "data"], "is a folder"),
        (["--into", "export/sub"], "inside the artifact folder"),
        (["--into", "export"], "is the artifact folder"),
        (["--into", "notes.txt"], "exists and is not a folder"),
        (["--into", "notes.txt/deeper"], "is a file, not a folder"),
        (["--threshold", "nan"], "finite"),
        (["--threshold", "-1"], ">= 0"),
        (["--batch-size", "0"], "from 1 to 1024"),
        (["--batch-size", "100000"], "from 1 to 1024"),
        (["--topk", "0"], "give 1 or more"),
        (["--workers", "100000"], "--workers 100000: give 0 to 256 workers"),
    ],
)
def test_a_new_command_inherits_the_output_policy_and_the_value_checks(tmp_path, export_dir, args, message):
    shutil.copytree(export_dir, tmp_path / "export")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "old.txt").write_text("keep")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    ran.clear()
    result = _run(_dummy_app(), ["summarise", "export", *args], cwd=tmp_path)
    assert result.exit_code == 1, result.output
    assert not ran, "the command ran before its outputs were checked"
    errors = _errors(result.output)
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


def test_a_new_command_inherits_escaping_and_markup_safety(tmp_path, export_dir):
    shutil.copytree(export_dir, tmp_path / "export")
    (tmp_path / "a[").mkdir()
    name = "a[/]\x1b[31m[bold]x.json"  # a [/] (a MarkupError for Rich) needs a folder "a["
    ran.clear()
    result = _run(_dummy_app(), ["summarise", "export", "--report", name], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / name).read_text()) == {"ok": True}
    assert not _CONTROL.search(result.output), result.output
    assert "\\x1b" in result.output and "[/]" in result.output, result.output
    result = _run(_dummy_app(), ["summarise", "export", "--shout", "\x1b]0;pwned\x07[/][red]x"], cwd=tmp_path)
    assert result.exit_code == 1 and not _CONTROL.search(result.output), result.output
    assert len(_errors(result.output)) == 1 and "[/][red]x: refused" in result.output


def test_a_new_command_notes_a_threshold_above_one(tmp_path, export_dir):
    shutil.copytree(export_dir, tmp_path / "export")
    result = _run(_dummy_app(), ["summarise", "export", "--threshold", "5"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "no image exits at stage 1" in result.output


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["quantize", "export", "--calib-images", "calib", "--json", "calib/a.png"],
            "lies in the input folder",
        ),
        (
            ["quantize", "export", "--calib-images", "calib", "--json", "export/manifest.json"],
            "artifact folder",
        ),
        (
            ["quantize", "export", "--calib-images", "calib", "--out", "export/int8"],
            "inside the artifact folder",
        ),
        (["quantize", "export", "--calib-images", "calib", "--out", "calib"], "is the input"),
        (["quantize", "export", "--calib-images", "calib", "--out", "a.txt"], "exists and is not a folder"),
        (["train", "data", "--out", "data/run"], "inside the input"),
        (["train", "data", "--out", "a.txt"], "exists and is not a folder"),
        (["train", "data", "--init", "a.txt", "--out", "a.txt/run"], "is a file, not a folder"),
        (["serve", "--artifacts", "export", "--repository", "export/repo"], "inside the artifact folder"),
        (["serve", "--artifacts", "export", "--log", "export/manifest.json"], "artifact folder"),
        (
            ["serve", "--artifacts", "export", "--log", "a.txt", "--triton-env", "a.txt"],
            "is one of the inputs",
        ),
        (["triton", "--artifacts", "export", "--out", "export/repo"], "inside the artifact folder"),
        (["build-engine", "export", "--out", "export/engines"], "inside the artifact folder"),
        (["build-engine", "export", "--out", "export"], "is the artifact folder"),
        (["check", "export", "--json", "export/stage2.onnx"], "artifact folder"),
        (["profile", "--artifacts", "export", "--json", "export/manifest.json"], "artifact folder"),
        (
            ["calibrate", "--artifacts", "export", "--images", "calib", "--csv", "calib/a.png"],
            "lies in the input folder",
        ),
        (
            ["infer", "calib", "--artifacts", "export", "--output", "export/x.csv", "--threshold", "nan"],
            "finite",
        ),
        (["serve", "--artifacts", "export", "--max-batch", "5000"], "from 1 to 1024"),
        (["quantize", "export", "--calib-images", "calib", "--calib-batch", "5000"], "from 1 to 1024"),
    ],
)
def test_every_command_refuses_a_damaging_output_before_any_work(tmp_path, export_dir, argv, message):
    shutil.copytree(export_dir, tmp_path / "export")
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "a.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    (tmp_path / "a.txt").write_text("mine")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = _run(app, argv, cwd=tmp_path)
    assert result.exit_code == 1, result.output
    errors = _errors(result.output)
    assert len(errors) == 1 and message in errors[0], result.output
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "calib", "data", "export"]


def test_a_remote_run_reads_no_local_artifact_folder(tmp_path, export_dir):
    """infer --triton reads no ./export: an output there is the other rules' business only (the
    default artifact folder used to be filled in and refused it)."""
    shutil.copytree(export_dir, tmp_path / "export")
    (tmp_path / "a.png").write_bytes(b"\x89PNG not really")
    argv = ["infer", "a.png", "--triton", "http://127.0.0.1:9", "--output", "export/p.csv"]
    result = _run(app, argv, cwd=tmp_path)
    assert result.exit_code == 1 and "artifact folder" not in result.output, result.output
    local = _run(app, argv[:2] + argv[4:], cwd=tmp_path)  # the same output, run locally: refused
    assert local.exit_code == 1 and "inside the artifact folder" in local.output


# ---- 5. one printer -----------------------------------------------------------------------------------
def test_markup_that_does_not_parse_prints_as_written(capsys):
    err.print("[bold]calibration:[/] 3 images from imgs[/]x", highlight=False)
    note("from a/[/]/b")
    captured = capsys.readouterr()
    assert "imgs[/]x" in captured.err and "a/[/]/b" in captured.err


def test_package_log_records_and_onnxruntimes_logger_go_through_the_printer(tmp_path):
    """ORT's own logger writes coloured warnings straight to stderr; after any command starts it is
    turned down to errors; the package's warnings print as escaped `warning:` lines."""
    script = textwrap.dedent(
        """
        import logging
        from sacvit_deploy.cli._console import _route_logs
        _route_logs()
        import onnx, onnxruntime as ort
        from onnx import helper, TensorProto, numpy_helper
        import numpy as np
        unused = numpy_helper.from_array(np.zeros(3, np.float32), "unused_weight")
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [unused])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        logging.getLogger("sacvit_deploy.x").warning("odd \\x1b[31mname")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "unused_weight" not in result.stderr, result.stderr  # ORT's warning about it, raw
    assert "\x1b" not in result.stderr
    assert "warning: odd \\x1b[31mname" in result.stderr


# ---- 8. values: one place, CLI and API alike ------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda: validate.topk(0),
        lambda: validate.topk(True),
        lambda: validate.topk(2.5),
        lambda: validate.batch_size(0),
        lambda: validate.batch_size(10**6),
        lambda: validate.workers(-1),
        lambda: validate.threshold(float("nan")),
        lambda: validate.threshold("high"),
        lambda: validate.image_batch(np.zeros((0, 3, 32, 32), np.float32)),
        lambda: validate.image_batch(np.zeros((2, 32, 32), np.float32)),
        lambda: validate.image_batch(np.zeros((2, 3, 32, 32), np.uint8)),
        lambda: validate.image_batch(np.full((1, 3, 32, 32), np.nan, np.float32)),
        lambda: validate.image_batch(np.zeros((1, 3, 16, 16), np.float32), resolution=32),
        lambda: validate.raw_image(np.zeros((0, 4, 3), np.uint8), 0),
        lambda: validate.raw_image(np.full((4, 4, 3), np.inf), 0),
        lambda: validate.raw_image(np.zeros((4, 4, 7), np.uint8), 0),
    ],
)
def test_validate_refuses_with_one_error_that_is_also_a_value_error(call):
    with pytest.raises(validate.InvalidValue) as info:
        call()
    assert isinstance(info.value, ValueError) and isinstance(info.value, SacvitError)
    assert "\n" not in str(info.value)


def test_the_api_checks_its_arguments_and_inputs(export_dir):
    import torch

    from sacvit_deploy.runtime.api import Pipeline

    image = np.zeros((40, 30, 3), np.uint8)
    with Pipeline.from_artifacts(export_dir, backend="onnxruntime") as pipe:
        size = pipe.manifest.preprocess.input_size
        good = pipe.preprocess([image])
        assert pipe.run(good).logits.shape[0] == 1
        bad_calls = {
            "topk 0": lambda: pipe.predict(image, topk=0),
            "batch 0": lambda: pipe.predict(image, batch_size=0),
            "threshold nan": lambda: pipe.predict(image, threshold=float("nan")),
            "nan image": lambda: pipe.run(torch.full((1, 3, size, size), float("nan"))),
            "wrong size": lambda: pipe.run(torch.zeros((1, 3, size // 2, size // 2))),
            "no batch axis": lambda: pipe.run(torch.zeros((3, size, size))),
            "empty": lambda: pipe.run(torch.zeros((0, 3, size, size))),
            "int pixels": lambda: pipe.run(torch.zeros((1, 3, size, size), dtype=torch.int32)),
            "nan pixels in": lambda: pipe.predict(np.full((40, 30, 3), np.nan, np.float32)),
            "workers 0": lambda: list(pipe.predict_files([], workers=0)),
        }
        for what, call in bad_calls.items():
            with pytest.raises(validate.InvalidValue):
                call()
                pytest.fail(what)
        with pytest.raises(validate.InvalidValue):
            pipe.threshold = float("inf")


def test_a_checked_value_has_no_second_bound_in_typer():
    """typer's min=/max= run before handle_errors: on a value VALUE_CHECKS covers they would answer
    `--topk 0` with a usage box and exit 2 while `--batch-size 0` gets the one line and exit 1."""
    from typer.models import ParameterInfo

    from sacvit_deploy.cli._options import value_checks

    for name, callback in _commands():
        for option, meta in value_checks(callback.__wrapped__).values():
            info = next(m for m in meta if isinstance(m, ParameterInfo))
            assert info.min is None and info.max is None, f"{name} {option}: drop typer's min/max"
    for argv, message in [
        (["infer", "x.png", "--topk", "0"], "error: --topk 0: give 1 or more"),
        (["infer", "x.png", "--workers", "0"], "error: --workers 0: give 1 to 256 workers"),  # Minimum(1)
        (["triton", "--max-batch", "0"], "error: --max-batch 0: give a batch size from 1 to 1024"),
    ]:
        result = _run(app, argv)
        errors = _errors(result.output)
        assert result.exit_code == 1 and len(errors) == 1 and errors[0].startswith(message), result.output


# ---- 6. replies from outside --------------------------------------------------------------------------
def _reply(rows=2, classes=10, **changes):
    base = {
        "logits": np.zeros((rows, classes), np.float32),
        "stage": np.ones((rows, 1), np.int32),
        "confidence": np.full((rows, 1), 0.5, np.float32),
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    "reply, what",
    [
        (_reply(logits=np.zeros((1, 10), np.float32)), "logits has shape"),
        (_reply(logits=np.zeros((2, 10, 1, 1), np.float32)), "logits has shape"),
        (_reply(logits=np.zeros((2, 7), np.float32)), "7 classes"),
        (_reply(logits=np.full((2, 10), np.nan, np.float32)), "NaN"),
        (_reply(logits=np.zeros((2, 10), np.int32)), "dtype int32"),
        (_reply(logits=None), "logits is missing"),
        (_reply(stage=np.full((2, 1), 7, np.int32)), "holds 7"),
        (_reply(stage=np.zeros((3, 1), np.int32)), "stage has shape"),
        (_reply(stage=np.ones((2, 1), np.float32)), "not an integer"),
        (_reply(confidence=np.full((2, 1), np.inf, np.float32)), "NaN or infinite"),
        (_reply(confidence=np.full((2, 1), 1.5, np.float32)), "holds 1.5"),
        (_reply(confidence=np.full((2, 1), -0.1, np.float32)), "holds -0.1"),
        (_reply(confidence=np.zeros((2, 2), np.float32)), "confidence has shape"),
        ({**_reply(), "confidence": [0.5, 0.5]}, "not an array"),
    ],
)
def test_a_triton_reply_that_is_not_an_answer_is_one_error(reply, what):
    from sacvit_deploy.triton.reply import ReplyError, validate_reply

    with pytest.raises(ReplyError, match=re.escape(what)) as info:
        validate_reply(reply, 2, 10, "Triton at http://x:8000, 'sacvit'")
    assert "http://x:8000" in str(info.value) and "\n" not in str(info.value)


def test_a_good_reply_comes_back_in_the_runner_currency():
    from sacvit_deploy.triton.reply import validate_reply

    checked = validate_reply(_reply(), 2, 10, "here")
    assert checked["logits"].dtype == np.float32 and checked["stage"].shape == (2,)
    assert checked["confidence"].shape == (2,) and checked["stage"].dtype == np.int64


def test_the_triton_runner_validates_every_reply():
    """TritonRunner.infer, with a client that answers too few rows and a stage 7."""
    from sacvit_deploy.triton.client import ServedModel, TritonRunner
    from sacvit_deploy.triton.reply import ReplyError

    class Result:
        def __init__(self, arrays):
            self.arrays = arrays

        def as_numpy(self, name):
            return self.arrays.get(name)

    class Client:
        answer: ClassVar[dict] = {}

        def infer(self, *args, **kwargs):
            return Result(self.answer)

    class Module:
        class InferInput:
            def __init__(self, *a):
                pass

            def set_data_from_numpy(self, a):
                pass

        class InferRequestedOutput:
            def __init__(self, *a):
                pass

    from sacvit_deploy.model import tiny_config

    runner = TritonRunner("http://127.0.0.1:1")
    cfg = tiny_config()
    runner.served = ServedModel("sacvit", 8, 0.5, {"model": cfg.to_dict()}, ("a", "b"))
    runner._client, runner._module = Client(), Module
    images = np.zeros((3, 3, 8, 8), np.float32)
    for answer, what in [
        (_reply(rows=2, classes=cfg.num_classes), "logits has shape"),
        (_reply(rows=3, classes=cfg.num_classes, stage=np.full((3, 1), 7, np.int32)), "holds 7"),
        (_reply(rows=3, classes=cfg.num_classes + 1), "classes"),
    ]:
        Client.answer = answer
        with pytest.raises(ReplyError, match=what):
            runner.infer(images)
    Client.answer = _reply(rows=3, classes=cfg.num_classes)
    assert runner.infer(images)["logits"].shape == (3, cfg.num_classes)


# ---- 2. one atomic writer ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "disk is full"),
        (getattr(errno, "EDQUOT", errno.ENOSPC), "quota" if hasattr(errno, "EDQUOT") else "disk is full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission denied"),
        (errno.EFBIG, "larger than"),
    ],
)
def test_a_failed_write_leaves_nothing_and_says_which_path_and_why(tmp_path, monkeypatch, code, words):
    target = tmp_path / "report.json"
    target.write_text("old")

    def failing(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "fsync", failing)
    with pytest.raises(atomic.WriteError) as info:
        atomic.write_text(target, "new")
    message = str(info.value)
    assert message.startswith(f"{target}: ") and words in message and "\n" not in message
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_bug_in_a_writer_keeps_its_traceback_and_leaves_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError), atomic.atomic_path(tmp_path / "x.bin") as staged:
        staged.write_bytes(b"half")
        1 / 0
    assert list(tmp_path.iterdir()) == []


def test_a_staged_folder_that_cannot_be_filled_leaves_nothing(tmp_path):
    from sacvit_deploy.core import publish

    out = tmp_path / "new" / "export"
    publish.prepare_output_folder(out)
    full = pytest.raises(atomic.WriteError, match=r"export: cannot be written: the disk is full")
    with full, publish.staging_folder(out) as staging:
        (staging / "stage1.onnx").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def full_disk(tmp_path):
    """A real, nearly full file system: a 64 KiB tmpfs (root only), filled but for a few bytes."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tiny tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        with contextlib.suppress(OSError), open(mount / "filler", "wb") as f:
            for _ in range(64):
                f.write(b"\0" * 1024)
                f.flush()
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk_is_one_line_and_leaves_nothing(full_disk, export_dir, tmp_path):
    names = sorted(p.name for p in full_disk.iterdir())
    result = _run(app, ["check", str(export_dir), "--json", str(full_disk / "report.json")])
    assert result.exit_code == 1, result.output
    errors = _errors(result.output)
    assert len(errors) == 1 and "report.json: cannot be written: the disk is full" in errors[0], result.output
    assert sorted(p.name for p in full_disk.iterdir()) == names

    from sacvit_deploy.training.loop import save_resumable

    with pytest.raises(atomic.WriteError, match="last.pt: cannot be written: the disk is full"):
        save_resumable(full_disk / "last.pt", {"weights": np.zeros(4096)})
    assert sorted(p.name for p in full_disk.iterdir()) == names

    result = _run(
        app,
        ["triton", "--artifacts", str(export_dir), "--out", str(full_disk / "repo"), "--backend", "python"],
    )
    assert result.exit_code == 1 and "disk is full" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in full_disk.iterdir()) == names


def test_every_file_writer_goes_through_the_atomic_writer():
    """A new file write outside core.atomic (or a staged folder, which publish makes atomic) fails
    here: the list below names each allowed one and why."""
    allowed = {
        "core/atomic.py": "the writer itself",
        "runtime/exit_calibration.py": "calibrate's CSV streams rows to a file the output policy checked",
        "quantize/artifacts.py": "inside a staging folder (core.publish)",
        "quantize/qdq.py": "inside a staging folder (core.publish)",
        "export/onnx_export.py": "inside a staging folder (core.publish)",
        "engine/build.py": "inside a staging folder (core.publish)",
        "engine/int8_calibrator.py": "inside a staging folder (core.publish)",
        "triton/repository.py": "inside a staging folder (core.publish)",
        "triton/server.py": "the server's copies and log in its own temporary folder",
        "cli/demo.py": "copies into the demo's own new folder",
        "core/manifest.py": "stages through core.atomic.atomic_path",
    }
    # A Path method or a library's own file writer; core.atomic's functions and torch.save into a
    # BytesIO buffer (then written by core.atomic) are the way.
    pattern = re.compile(
        r"(?<!atomic)\.write_(?:text|bytes)\(|torch\.save\((?!\w+, buffer)|save_file\("
        r"|open\([^)]*[\"'][wa]b?[\"']|onnx\.save"
    )
    package = Path(__file__).resolve().parents[1] / "sacvit_deploy"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if code.strip().startswith(('f"', '"')):
                continue  # a message that mentions a writer
            if pattern.search(code):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "write through sacvit_deploy.core.atomic:\n" + "\n".join(offenders)


# ---- 3. one run-folder lock --------------------------------------------------------------------------
_HOLD = textwrap.dedent(
    """
    import sys, time
    from sacvit_deploy.core.lock import folder_lock
    with folder_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
    """
)


def _holder(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    from sacvit_deploy.core.lock import FolderBusyError, folder_lock

    proc = _holder(tmp_path)
    try:
        busy = pytest.raises(FolderBusyError, match=rf"another run is writing here \(process {proc.pid} on ")
        with busy, folder_lock(tmp_path):
            pytest.fail("entered a held lock")
    finally:
        proc.kill()  # kill -9: the holder cannot clean up
        proc.wait()
    lines: list[str] = []
    with folder_lock(tmp_path, note=lines.append):
        pass
    assert len(lines) == 1 and f"process {proc.pid}" in lines[0] and "no longer running" in lines[0]
    lines.clear()
    with folder_lock(tmp_path, note=lines.append):  # a clean release leaves nothing to report
        pass
    assert lines == []


def _options(data_dir: Path, out: Path, **changes):
    return tiny_train_options(data_dir, out, **{"max_steps": 1, **changes})


def test_train_refuses_a_run_folder_another_training_holds(colour_data, tmp_path):
    from sacvit_deploy.training import train

    out = tmp_path / "run"
    out.mkdir()
    proc = _holder(out)
    try:
        with pytest.raises(SacvitError, match="another training run is writing here") as info:
            train(_options(colour_data, out), log=[].append)
        assert str(out) in str(info.value)
    finally:
        proc.kill()
        proc.wait()
    assert sorted(p.name for p in out.iterdir()) == [".sacvit-lock"]  # nothing of the run was written
    lines: list[str] = []
    train(_options(colour_data, out, epochs=1), log=lines.append)  # the dead holder's lock is taken over
    assert any("no longer running" in line for line in lines)


# ---- 4. resume is crash-consistent -------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(colour_data, tmp_path_factory) -> Path:
    from sacvit_deploy.training import train

    out = tmp_path_factory.mktemp("mech-run") / "run"
    train(_options(colour_data, out), log=[].append)
    return out


def _resume(data_dir: Path, run: Path) -> tuple[object, list[str]]:
    from sacvit_deploy.training import train

    lines: list[str] = []
    return train(_options(data_dir, run, resume=True), log=lines.append), lines


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _offsets(size: int, count: int) -> list[int]:
    return sorted({0, 1, size - 1, *np.linspace(0, size, count, dtype=int).tolist()} - {size})


def test_resume_after_the_log_was_cut_anywhere(colour_data, finished_run, tmp_path):
    """A kill -9 while appending leaves log.jsonl cut at any byte: resume continues, keeps every
    whole line of the epochs last.pt holds, says what it dropped, and leaves whole lines only."""
    log = (finished_run / "log.jsonl").read_bytes()
    whole = [json.loads(line) for line in log.decode().splitlines()]
    for cut in _offsets(len(log), 24):
        run = tmp_path / f"cut{cut}"
        shutil.copytree(finished_run, run)
        (run / "log.jsonl").write_bytes(log[:cut])
        result, lines = _resume(colour_data, run)
        kept = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert kept == whole[: len(kept)], cut
        assert result.history == kept, cut
        parts = log[:cut].decode(errors="replace").splitlines()
        complete = sum(1 for part in parts if _parses(part))
        assert len(kept) == complete, cut
        if complete < len(parts):
            assert any("torn or unreadable" in line for line in lines), (cut, lines)
        if complete < len(whole):
            assert any("the missing lines are not recreated" in line for line in lines), (cut, lines)


def test_a_log_newer_than_the_checkpoint_is_cut_back(colour_data, finished_run, tmp_path):
    import torch

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["epoch"] = 0  # the crash came between the log line of epoch 2 and its checkpoint
    torch.save(ckpt, run / "last.pt")
    result, lines = _resume(colour_data, run)
    epochs = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]  # epoch 2's old line dropped, then written again by the resumed run
    assert [r["epoch"] for r in result.history] == [0, 1]
    assert any("at epoch 2/2" in line for line in lines)


def test_resume_after_last_pt_was_cut_anywhere_is_one_line(colour_data, finished_run, tmp_path):
    data = (finished_run / "last.pt").read_bytes()
    for cut in _offsets(len(data), 16):
        run = tmp_path / f"cut{cut}"
        shutil.copytree(finished_run, run)
        (run / "last.pt").write_bytes(data[:cut])
        with pytest.raises(SacvitError) as info:
            _resume(colour_data, run)
        message = str(info.value)
        assert "last.pt" in message and "\n" not in message, (cut, message)


def _damaged(edit):
    def apply(ckpt):
        edit(ckpt)
        return ckpt

    return apply


@pytest.mark.parametrize(
    "edit, words",
    [
        (_damaged(lambda c: c.pop("model")), "the weights ('model') is missing"),
        (_damaged(lambda c: c.pop("epoch")), "'epoch') is missing"),
        (_damaged(lambda c: c.update(epoch="3")), "'epoch' (the epoch) is a str"),
        (_damaged(lambda c: c.update(step=-4)), "negative"),
        (_damaged(lambda c: c.update(best_metric=None)), "best_metric"),
        (_damaged(lambda c: c.update(model=[1, 2])), "is a list"),
        (_damaged(lambda c: c["model"].update(junk=3)), "not a mapping of names to tensors"),
        (_damaged(lambda c: c.update(optimizer={"state": {}})), "'param_groups'"),
        (_damaged(lambda c: c.update(ema=5)), "'ema' is a int"),
        (_damaged(lambda c: c.update(train_options=[])), "train_options"),
        (_damaged(lambda c: c["model"].pop(next(iter(c["model"])))), "the weights does not fit"),
        (
            _damaged(lambda c: c["model"].update({k: v[..., :1] for k, v in list(c["model"].items())[:1]})),
            "the weights does not fit",
        ),
        (
            _damaged(lambda c: c["model"].update({k: v.int() for k, v in c["model"].items()})),
            "not a floating-point tensor",
        ),
        (
            _damaged(
                lambda c: c["optimizer"]["state"][0].update(exp_avg=c["optimizer"]["state"][0]["exp_avg"][:1])
            ),
            "the optimizer state does not fit",
        ),
        (_damaged(lambda c: c["optimizer"]["param_groups"].pop()), "the optimizer state does not fit"),
    ],
)
def test_a_damaged_last_pt_is_named_with_what_is_wrong(colour_data, finished_run, tmp_path, edit, words):
    import torch

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    torch.save(edit(torch.load(run / "last.pt", weights_only=True)), run / "last.pt")
    with pytest.raises(SacvitError) as info:
        _resume(colour_data, run)
    message = str(info.value)
    assert message.startswith(str(run / "last.pt")) and words in message and "\n" not in message, message


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(colour_data, finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "last.pt").unlink()
    (run / "log.jsonl").write_text('{"epoch": 0, "lo')
    (run / ".partial-999999-last.pt").write_bytes(b"half")  # what a kill -9 mid-write leaves
    result, lines = _resume(colour_data, run)
    assert any("starting it from the beginning" in line for line in lines)
    assert [r["epoch"] for r in result.history] == [0, 1]


def test_the_cli_resume_is_one_line_on_a_torn_checkpoint(colour_data, finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:100])
    result = _run(
        app, ["train", str(colour_data), "--out", str(run), "--resume", "--workers", "0", "--device", "cpu"]
    )
    assert result.exit_code == 1 and len(_errors(result.output)) == 1 and "last.pt" in result.output, (
        result.output
    )


def test_one_class_of_training_data_is_refused(tmp_path):
    from sacvit_deploy.training import train
    from tests.fakes.pictures import write_colour_folder

    data = write_colour_folder(tmp_path / "data", 4, 2, 0)
    for split in ("train", "val"):
        for extra in sorted((data / split).iterdir())[1:]:
            shutil.rmtree(extra)
    with pytest.raises(SacvitError, match="one class folder"):
        train(_options(data, tmp_path / "run"), log=[].append)


# ---- 7. serve owns its children ------------------------------------------------------------------------
# A stand-in for tritonserver (no real one here: tests/test_triton_server.py runs the real server where
# .ci/run builds its environment): a process-group leader slow to stop (it ignores SIGTERM, as a
# server busy unloading does) with a child, like the Python-backend stubs.
_STANDIN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stub = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(stub.pid, flush=True)
    time.sleep(120)
    """
)
_SERVE = textwrap.dedent(
    """
    import subprocess, sys, tempfile
    from pathlib import Path
    import sacvit_deploy.triton.repository as repo
    import sacvit_deploy.triton.server as srv

    class Install:
        binary = Path("/stand-in/tritonserver")

        @classmethod
        def find(cls, env):
            return cls()

        def check_python(self, need_onnxruntime=False):
            return {"numpy": "1", "onnxruntime": "1"}

    class Result:
        class index:
            models = {"bls": "sacvit"}
        threshold, max_batch = 0.5, 8

    def write_repository(artifacts, out, options, log=None):
        out.mkdir(parents=True)
        (out / "config.pbtxt").write_text("stand-in")
        return Result()

    def start(self, wait_for=None, timeout=0):
        self._scratch = tempfile.TemporaryDirectory(prefix="sacvit-triton-")
        self.process = subprocess.Popen(
            [sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        stub = self.process.stdout.readline().strip()
        print("PIDS", self.process.pid, stub, file=sys.stderr, flush=True)
        return self

    srv.TritonInstall = Install
    srv.TritonServer.start = start
    srv.TritonServer.metadata = lambda self: {"version": "stand-in"}
    srv.TritonServer.stop.__defaults__ = (4.0,)  # the SIGTERM grace period, short for the test
    repo.write_repository = write_repository
    repo.check_artifacts = lambda folder, backend="python": None
    import sacvit_deploy.cli
    from sacvit_deploy.cli._command import run_command
    sys.exit(run_command(["serve", "--artifacts", "export", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]))
    """
)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")  # a zombie left to a non-reaping init
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
@pytest.mark.parametrize("presses", [1, 2, 3])
@pytest.mark.parametrize("moment", ["when-ready", "while-starting"])
def test_serve_stops_its_server_stubs_and_temp_folders_however_often_ctrl_c_is_pressed(
    tmp_path, presses, moment
):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "TMPDIR": str(tmp),
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, _STANDIN],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            if line.startswith("PIDS"):
                pids = [int(p) for p in line.split()[1:]]
                break
        assert pids, "the stand-in server never started"
        if moment == "when-ready":
            for line in proc.stdout:
                if line.startswith("ready"):
                    break
        for i in range(presses):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.4 if i == 0 else 0.2)  # the later presses land inside the stop
        _, stderr = proc.communicate(timeout=60)
        # 0; or, for a press that lands after the cleanup ended, the ordinary end by Ctrl-C.
        assert proc.returncode in (0, 130, -signal.SIGINT), stderr
        assert "Traceback" not in stderr, stderr
        assert "Ctrl-C: stopped tritonserver" in stderr, stderr
        assert all(_gone(pid) for pid in pids), f"left running: {[p for p in pids if not _gone(p)]}"
        assert list(tmp.iterdir()) == [], "temporary folders left behind"
    finally:
        proc.kill()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_is_within_follows_links_and_does_not_match_a_name_prefix(tmp_path):
    """The one 'inside this folder' test (serve, train, the CLI's output policy)."""
    from sacvit_deploy.core.fileinfo import is_within

    data = tmp_path / "data"
    (data / "cls").mkdir(parents=True)
    (tmp_path / "data2").mkdir()
    link = tmp_path / "link"
    link.symlink_to(data / "cls")
    assert is_within(data, data) and is_within(data / "cls" / "new.png", data)
    assert is_within(link / "out", data)  # through a link into the folder
    assert not is_within(tmp_path / "data2", data)  # "data2" starts with "data" but is not inside
    assert not is_within(tmp_path, data)


def test_untrusted_json_nested_too_deep_is_a_value_error_everywhere():
    """json raises RecursionError for a deeply nested document, which no `except ValueError` catches:
    core.validate.parse_json makes it a ValueError, and every reader of untrusted JSON uses it."""
    import ast

    import sacvit_deploy
    from sacvit_deploy.core.validate import parse_json

    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError, match="nested too deep"):
        parse_json(deep)
    assert parse_json('{"a": [1]}') == {"a": [1]}
    root = Path(sacvit_deploy.__file__).parent
    # Triton's model files run inside Triton without this package; parse_json itself; the
    # safetensors header sacvit-deploy just wrote (save_checkpoint) is not read from outside.
    exempt = {
        "triton/bls_model.py",
        "triton/stage_model.py",
        "core/validate.py",
        "model/checkpoint.py:_sorted_header",
    }
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel in exempt:
            continue
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or f"{rel}:{fn.name}" in exempt:
                continue
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("loads", "load")
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "json"
                ):
                    found.append(f"{rel}:{node.lineno}")
    assert not found, f"json.loads on untrusted input outside core.validate.parse_json: {found}"
