"""Exit calibration as a library call: calibrate_exit returns the result, .write() stores it through
Manifest.with_calibration; the CLI's --write and the library give the same record."""

from __future__ import annotations

import pytest
from PIL import Image

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.runtime.calibrate_exit import Target, calibrate_exit
from sacvit_deploy.runtime.images import sample_images
from tests.conftest import make_tiny


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate-api")
    export_artifacts(make_tiny("sacvit"), root / "export", ExportOptions(), "sacvit")
    for i, cls in enumerate(("a", "b", "c")):
        for p in sample_images()[:3]:
            to = root / "labelled" / cls / f"{p.stem}.png"
            to.parent.mkdir(parents=True, exist_ok=True)
            Image.open(p).convert("RGB").rotate(90 * i).save(to)
    (root / "labelled" / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


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
