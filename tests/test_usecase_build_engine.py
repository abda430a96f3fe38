"""`build_engines`, called as a Python user would, where TensorRT is missing: the same one-line error
the command prints, install hint and what to run without an NVIDIA GPU included."""

from __future__ import annotations

import sys

import pytest

from sacvit_deploy.backends.trt_version import TensorRTError
from sacvit_deploy.engine.build import BuildOptions, build_engines


def test_a_python_caller_without_tensorrt_gets_the_gpu_hint(exported_tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    out = tmp_path / "engines"
    with pytest.raises(TensorRTError) as info:
        build_engines(exported_tiny, out, BuildOptions())
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("TensorRT is not installed: pip install 'sacvit-deploy[tensorrt]'")
    assert "build-engine also needs an NVIDIA GPU" in message
    assert message.endswith(
        f"Without one, run the ONNX graphs: sacvit-deploy infer IMAGES --artifacts {exported_tiny}"
    )
    assert not out.exists()


def test_a_broken_tensorrt_keeps_its_own_message(exported_tiny, tmp_path, monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # no __version__
    with pytest.raises(TensorRTError) as info:
        build_engines(exported_tiny, tmp_path / "engines", BuildOptions())
    assert "too old" in str(info.value) and "NVIDIA GPU" not in str(info.value)
