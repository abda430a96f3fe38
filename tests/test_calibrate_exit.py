"""Exit calibration as a library call: calibrate_exit returns the result, .write() stores it through
Manifest.with_calibration; the CLI's --write and the library give the same record."""

from __future__ import annotations

import shutil

import pytest

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.runtime.calibrate_exit import Target, calibrate_exit
from tests.fakes.fixtures import labelled_export


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return labelled_export(tmp_path_factory, "calibrate-api", ("a", "b", "c"), per_class=3)


def test_calibrate_returns_the_result_and_write_stores_it(workdir):
    folder = workdir / "export"
    before = (folder / "manifest.json").read_bytes()
    seen = []
    run = calibrate_exit(
        folder,
        workdir / "labelled",
        Target("exit_rate", 0.5),
        backend="onnxruntime",
        folder_labels="sorted",
        batch_size=4,
        on_batch=seen.append,
    )
    assert (folder / "manifest.json").read_bytes() == before  # calibrating writes nothing
    assert run.calibration.n == 9 and run.unreadable == 1 and sum(len(b.failures) for b in seen) == 1
    chosen = run.calibration.chosen
    assert chosen is not None and chosen.exit_rate >= 0.5
    path = run.write()
    after = Manifest.load(folder)
    assert path == folder / "manifest.json" and after.exit_threshold == chosen.threshold
    rec = after.calibration.to_dict()
    assert rec["target"] == {"kind": "exit_rate", "value": 0.5} and rec["images"] == 9
    assert rec["previous_threshold"] == run.manifest.exit_threshold and rec["unreadable_images"] == 1
    assert after.graphs == run.manifest.graphs and after.model == run.manifest.model


def test_without_a_target_there_is_nothing_to_write(workdir):
    run = calibrate_exit(
        workdir / "export", workdir / "labelled", backend="onnxruntime", folder_labels="sorted"
    )
    assert run.calibration.chosen is None and len(run.calibration.points) > 100
    with pytest.raises(SacvitError, match="calibrate with a target"):
        run.write()


def test_the_cli_write_and_the_library_write_give_the_same_record(workdir, tmp_path):
    """The calibrate command is the library call plus printing: both store the same record."""
    from typer.testing import CliRunner

    from sacvit_deploy.cli import app

    lib, cli = tmp_path / "lib", tmp_path / "cli"
    shutil.copytree(workdir / "export", lib)
    shutil.copytree(workdir / "export", cli)
    target = Target("exit_rate", 0.5)
    calibrate_exit(lib, workdir / "labelled", target, backend="onnxruntime", folder_labels="sorted").write()
    args = ["calibrate", "--images", str(workdir / "labelled"), "--artifacts", str(cli)]
    args += ["--folder-labels", "sorted", "--backend", "onnxruntime", "--target-exit-rate", "0.5", "--write"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [Manifest.load(folder).calibration.to_dict() for folder in (lib, cli)]
    for record in records:
        assert record.pop("created")  # when it was written: the one field that may differ
    assert records[0] == records[1]
    assert Manifest.load(lib).exit_threshold == Manifest.load(cli).exit_threshold == records[0]["threshold"]
