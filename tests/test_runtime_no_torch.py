"""The runtime without torch, and the backend table that drives --backend, auto and install hints.

Each check runs in a fresh interpreter: ``sys.modules['torch'] = None`` makes every ``import torch``
fail there, as in an environment where torch is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sacvit_deploy.core.manifest import Manifest
from tests.fakes.fixtures import shared_export

ROOT = Path(__file__).resolve().parents[1]
BLOCK_TORCH = "import sys\nsys.modules['torch'] = None  # every `import torch` now fails\n"

# Every module of these layers must import without torch (torch_backend is the torch backend itself;
# tensorrt_backend and gpu are the GPU runner's, imported only when TensorRT runs).
TORCH_FREE_EXCEPT = {
    "sacvit_deploy.backends.torch_backend",
    "sacvit_deploy.backends.tensorrt_backend",
    "sacvit_deploy.backends.gpu",
}


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )


def test_runtime_backends_core_modules_import_without_torch():
    code = BLOCK_TORCH + textwrap.dedent(
        """
        import importlib, json, pkgutil
        import sacvit_deploy
        skip = set(json.loads(sys.argv[1]))
        done = []
        for sub in ("core", "backends", "runtime"):
            pkg = importlib.import_module("sacvit_deploy." + sub)
            for m in pkgutil.iter_modules(pkg.__path__):
                name = f"sacvit_deploy.{sub}.{m.name}"
                if name not in skip:
                    importlib.import_module(name)
                    done.append(name)
        print(json.dumps(done))
        """
    )
    r = _run(code, json.dumps(sorted(TORCH_FREE_EXCEPT)))
    assert r.returncode == 0, r.stderr[-2000:]
    imported = json.loads(r.stdout.strip().splitlines()[-1])
    assert "sacvit_deploy.runtime.pipeline" in imported and "sacvit_deploy.backends.factory" in imported
    assert "sacvit_deploy.runtime.api" in imported and "sacvit_deploy.backends.arrays" in imported


def test_importing_the_runtime_does_not_load_torch():
    """Nothing loads torch behind the user's back (a lazy import on the ORT path would)."""
    code = textwrap.dedent(
        """
        import sys
        import sacvit_deploy.runtime.api, sacvit_deploy.runtime.profiling, sacvit_deploy.runtime.exit_calibration
        import sacvit_deploy.backends.factory, sacvit_deploy.backends.onnxruntime_backend
        print("torch" in sys.modules)
        """
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    return shared_export(tmp_path_factory)  # read-only here


@torch.no_grad()
def test_ort_pipeline_runs_without_torch_and_equals_the_model(tiny_export, tmp_path):
    model, folder = tiny_export
    x = torch.randn(6, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    conf = model.forward_stage1(x).confidence
    th = float(np.sort(conf.numpy())[2:4].mean())  # some samples exit, some do not
    np.save(tmp_path / "x.npy", x.numpy())
    code = BLOCK_TORCH + textwrap.dedent(
        """
        import numpy as np
        from sacvit_deploy import Pipeline
        from sacvit_deploy.runtime.images import sample_images
        x = np.load(sys.argv[2])
        # named: where OpenVINO is installed, auto picks it on a CPU (tests/test_openvino_backend.py)
        with Pipeline.from_artifacts(sys.argv[1], backend="onnxruntime", device="cpu") as pipe:
            assert pipe.backend.backend == "onnxruntime", pipe.backend
            out = pipe.run(x, float(sys.argv[3]))
            preds = pipe.predict([str(p) for p in sample_images()[:2]], topk=2)
        assert isinstance(out.logits, np.ndarray) and out.stage.dtype == np.int64
        assert len(preds) == 2 and all(p.error is None and len(p.classes) == 2 for p in preds)
        np.savez(sys.argv[4], logits=out.logits, stage=out.stage, confidence=out.confidence)
        print("torch" in sys.modules and sys.modules["torch"] is not None)
        """
    )
    r = _run(code, str(folder), str(tmp_path / "x.npy"), repr(th), str(tmp_path / "out.npz"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "False"
    got = np.load(tmp_path / "out.npz")
    ref = model(x, th)
    assert 0 < int((ref.stage == 2).sum()) < 6
    np.testing.assert_array_equal(got["stage"], ref.stage.numpy())
    np.testing.assert_allclose(got["logits"], ref.logits.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got["confidence"], ref.confidence.numpy(), atol=1e-5, rtol=1e-5)


def test_torch_backend_without_torch_names_the_extra(tiny_export):
    _, folder = tiny_export
    code = BLOCK_TORCH + textwrap.dedent(
        """
        from sacvit_deploy.backends.base import BackendError
        from sacvit_deploy.backends.factory import choose_backend
        from sacvit_deploy.core.manifest import Manifest
        try:
            choose_backend(Manifest.load(sys.argv[1]), "torch")
        except BackendError as exc:
            print(exc)
        """
    )
    r = _run(code, str(folder))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pip install 'sacvit-deploy[torch]'" in r.stdout


# ---- the backend table --------------------------------------------------------------------------------
DUMMY = textwrap.dedent(
    """
    from sacvit_deploy.backends import factory
    from sacvit_deploy.backends.factory import BackendChoice, BackendSpec, register_backend
    from sacvit_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner

    class DummyRunner(OnnxRuntimeRunner):
        backend = "dummy"

    def dummy_factory(folder, manifest, role, choice, **options):
        entry = manifest.graphs[role]
        return DummyRunner(manifest.file_path(folder, entry), entry.inputs, entry.outputs)

    def dummy_probe(manifest, device):
        if not manifest.graphs:
            return "no graphs"
        return BackendChoice("dummy", "cpu", None, "the dummy accelerator is present")

    def dummy_select(manifest, device, provider):
        return BackendChoice("dummy", "cpu", None, "asked for")

    register_backend(
        BackendSpec("dummy", dummy_factory, dummy_probe, dummy_select, 99, "dummy", "json", "the dummy accelerator")
    )
    """
)


def test_a_registered_backend_is_in_help_and_wins_auto(tiny_export):
    _, folder = tiny_export
    code = DUMMY + textwrap.dedent(
        """
        import sys
        from typer.testing import CliRunner
        from sacvit_deploy.cli import app
        from sacvit_deploy.runtime.loader import open_pipeline
        help_text = CliRunner().invoke(app, ["infer", "--help"], env={"COLUMNS": "200"}).output
        print("HELP", "dummy" in help_text, "the dummy accelerator" in help_text)
        opened = open_pipeline(sys.argv[1])
        print("CHOICE", opened.choice.describe())
        print("RUNNER", type(opened.pipeline.stage1).__name__)
        """
    )
    r = _run(code, str(folder))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines() if " " in line)
    assert lines["HELP"] == "True True"
    assert lines["CHOICE"].startswith("dummy on cpu: the dummy accelerator is present")
    assert lines["RUNNER"] == "DummyRunner"


def test_auto_reason_names_what_it_passed_over(tiny_export):
    from sacvit_deploy.backends.factory import choose_backend, has_module

    _, folder = tiny_export
    choice = choose_backend(Manifest.load(folder), "auto", "cpu")
    # OpenVINO where it is installed (CI installs it), else ONNX Runtime: either names TensorRT
    assert choice.backend == ("openvino" if has_module("openvino") else "onnxruntime")
    assert "passed over: tensorrt: no engines in the folder" in choice.describe()


def test_unknown_backend_lists_the_table():
    from sacvit_deploy.backends.base import BackendError
    from sacvit_deploy.backends.factory import REGISTRY, backend_names, choose_backend

    assert backend_names()[0] == "auto" and set(backend_names()[1:]) == set(REGISTRY)
    assert {"tensorrt", "onnxruntime", "torch"} <= set(REGISTRY)
    with pytest.raises(BackendError, match="unknown backend 'nope'; use one of auto, ") as info:
        choose_backend(None, "nope")  # type: ignore[arg-type]
    assert all(name in str(info.value) for name in REGISTRY)


@torch.no_grad()
def test_the_api_takes_numpy_and_cpu_torch_tensors_without_a_copy(tiny_export):
    from sacvit_deploy import Pipeline
    from sacvit_deploy.backends.arrays import as_host_batch

    model, folder = tiny_export
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    assert np.shares_memory(as_host_batch(x), x.numpy())  # zero copy for CPU tensors
    with Pipeline.from_artifacts(folder, backend="onnxruntime", device="cpu") as pipe:
        from_torch, from_numpy = pipe.run(x, 0.5), pipe.run(x.numpy(), 0.5)
    ref = model(x, 0.5)
    for out in (from_torch, from_numpy):
        assert isinstance(out.logits, np.ndarray) and isinstance(out.stage, np.ndarray)
        np.testing.assert_array_equal(out.stage, ref.stage.numpy())
        np.testing.assert_allclose(out.logits, ref.logits.numpy(), atol=1e-4, rtol=1e-4)
