"""Helpers for the TensorRT tests: a tiny export, the fake TensorRT installed, engines built with it.

Host memory stands in for device memory through the fake cuda-python (tests/fakes/fake_cuda_python.py)
and the fake pycuda (tests/fakes/fake_pycuda.py): ``buffers="auto"`` picks cuda-python, the production
default, so the production code needs no test switch.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from sacvit_deploy.backends import gpu as gpu_module
from sacvit_deploy.engine.build import BuildOptions, BuildResult, build_engines
from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from tests.conftest import make_tiny
from tests.fakes.fake_cuda_python import hide_cuda_python, install_fake_cuda_python
from tests.fakes.fake_pycuda import install_fake_pycuda
from tests.fakes.fake_tensorrt import make_fake_tensorrt

FAKE_GPU = gpu_module.GpuInfo("Fake GPU", "8.6", 0, 8 << 30)


def tiny_export(folder: Path, fmt: str = "sacvit", **options: Any) -> tuple[Any, Path]:
    """A tiny model exported (with the baseline graph) into ``folder``; returns (model, folder)."""
    model = make_tiny(fmt)
    export_artifacts(model, folder, ExportOptions(baseline=True, **options), fmt)
    return model, folder


_SHARED: dict[tuple, tuple[Any, Path]] = {}


def shared_export(
    tmp_path_factory: pytest.TempPathFactory, fmt: str = "sacvit", **options: Any
) -> tuple[Any, Path]:
    """Like :func:`tiny_export`, made once per test session (read-only: tests must not modify it)."""
    key = (fmt, tuple(sorted(options.items())))
    if key not in _SHARED:
        name = "-".join([fmt, *(f"{k}{v}" for k, v in sorted(options.items()))])
        _SHARED[key] = tiny_export(tmp_path_factory.mktemp(f"shared-{name}"), fmt, **options)
    return _SHARED[key]


def install_fake_tensorrt(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    version: str = "10.3.0",
    gpu: Any = FAKE_GPU,
    cuda: str | None = "bindings",
) -> Any:
    """Put a fake ``tensorrt``, a fake cuda-python and a fake ``pycuda`` (host memory as device memory)
    in sys.modules, and a fake GPU in detect_gpu.

    ``cuda``: the cuda-python API installed ("bindings": ``cuda.bindings.runtime``, "cudart": the old
    ``cuda.cudart``), or None for no cuda-python (``buffers="auto"`` then picks pycuda). The real
    cuda-bindings wheel is importable here, so it is always replaced: its calls need a driver."""
    fake = make_fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    if cuda is None:
        hide_cuda_python(monkeypatch)
    else:
        install_fake_cuda_python(monkeypatch, cuda)
    install_fake_pycuda(monkeypatch)
    monkeypatch.setattr(gpu_module, "detect_gpu", lambda index=0: gpu)
    return fake


def build(export: Path, out: Path, **options: Any) -> BuildResult:
    options.setdefault("parity_images", 4)
    return build_engines(export, out, BuildOptions(**options))


def labelled_export(
    tmp_path_factory: pytest.TempPathFactory, name: str, classes: tuple[str, ...], per_class: int
) -> Path:
    """A folder for exit calibration: ``export/``, a writable copy of the shared tiny export, and
    ``labelled/``, an ImageFolder of the bundled photos with one unreadable file
    (:func:`tests.fakes.pictures.write_labelled_photos`)."""
    from tests.fakes.pictures import write_labelled_photos

    root = tmp_path_factory.mktemp(name)
    shutil.copytree(shared_export(tmp_path_factory)[1], root / "export")
    write_labelled_photos(root / "labelled", classes, per_class)
    return root


def fake_engines(
    tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any
) -> tuple[Any, Path, Path]:
    """(model, export, engines): the shared tiny export and engines built from it with a fake
    TensorRT 10.3 (uninstalled again afterwards), for a module-scoped fixture; ``options`` go to
    :func:`build`."""
    root = tmp_path_factory.mktemp(name)
    model, export = shared_export(tmp_path_factory)
    with pytest.MonkeyPatch.context() as mp:
        install_fake_tensorrt(mp, root, "10.3.0")
        build(export, root / "engines", **options)
    return model, export, root / "engines"


def write_calibration(folder: Path, threshold: float):  # -> ExitCalibration
    """What `calibrate --write` leaves in a folder, written the way it writes it
    (Manifest.with_calibration): the threshold and its record."""
    from sacvit_deploy.core.manifest import ExitCalibration, Manifest

    record = ExitCalibration.from_dict(
        {
            "threshold": threshold,
            "target": {"kind": "exit_rate", "value": 0.5},
            "accuracy": 0.9,
            "exit_rate": 0.5,
            "gflops_per_image": 0.01,
            "images": 10,
            "backend": "onnxruntime (cpu)",
        }
    )
    Manifest.load(folder).with_calibration(record).save(folder)
    return record
