"""Optional dependencies, the extra that installs each, and every install hint: the one place.

Every "pip install 'sacvit-deploy[...]'" the package prints is built here (:func:`install_hint`);
library code imports optional modules inside the functions that need them and, when one is missing,
names *what is missing* (:func:`missing_module_message`): the module the ImportError names, which
is not always the one that was imported (onnx 1.15 imports ``ml_dtypes``; installing the extra that
installed onnx again does not help).
"""

from __future__ import annotations

import types
from typing import Dict, Optional, Tuple

from sacvit_deploy.core.errors import SacvitError

# extra -> (what it installs, for the reader). One row per extra in pyproject's optional-dependencies.
INSTALLS: Dict[str, str] = {
    "torch": "PyTorch, for the torch backend and checkpoints in Python",
    "export": "torch + onnx, to export ONNX graphs",
    "train": "torch, to train or fine-tune",
    "cpu": "onnx + ONNX Runtime (CPU)",
    "gpu": "onnx + ONNX Runtime with the CUDA / TensorRT providers",
    "tensorrt": "onnx + TensorRT (desktop)",
    "jetson": "onnx; TensorRT comes with JetPack (sudo apt install python3-libnvinfer)",
    "pycuda": "pycuda device buffers for TensorRT",
    "triton": "the Triton client and its config schema",
    "plot": "matplotlib, for plots",
    "openvino": "onnx + OpenVINO (CPU; Intel GPU/NPU where OpenVINO finds one)",
}

# top-level module -> (extra, what it is for)
EXTRAS: Dict[str, Tuple[str, str]] = {
    "onnx": ("cpu", "ONNX graphs; the `export` extra installs onnx alone"),
    "onnxruntime": ("cpu", "ONNX Runtime (use the 'gpu' extra for CUDA)"),
    "tensorrt": ("tensorrt", "TensorRT (on Jetson it comes with JetPack: apt install python3-libnvinfer)"),
    "pycuda": ("pycuda", "pycuda device buffers"),
    "tritonclient": ("triton", "the Triton client"),
    "matplotlib": ("plot", "plots"),
    "torch": ("torch", "PyTorch"),
    "openvino": ("openvino", "OpenVINO"),
}
# top-level module -> the pip package that installs it, where the names differ (the modules the
# optional dependencies import: onnx and tritonclient import google.protobuf, matplotlib PIL and
# dateutil); `pip install google` or `pip install PIL` would install something else, or nothing.
PIP_NAMES: Dict[str, str] = {
    "google": "protobuf",
    "grpc": "grpcio",
    "PIL": "pillow",
    "dateutil": "python-dateutil",
    "rapidjson": "python-rapidjson",
    "yaml": "pyyaml",
}
# command -> (extra, the modules it installs): a command whose own extra installs the missing module
# names that extra (`export` = torch + onnx), so one install fixes it whichever module is found missing
# first. Others (onnxruntime for export's verification) keep the module's row.
COMMAND_EXTRAS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "export": ("export", ("torch", "onnx")),
    "train": ("train", ("torch",)),
}


class MissingExtra(SacvitError):
    """An optional dependency is not installed."""


def install_hint(extra: str, *alternatives: str) -> str:
    """``pip install 'sacvit-deploy[cpu]'`` (``(or '[gpu]')`` for alternatives): the one spelling."""
    if extra not in INSTALLS or any(a not in INSTALLS for a in alternatives):
        raise ValueError(f"no extra {extra!r} in core.extras.INSTALLS")
    hint = f"pip install 'sacvit-deploy[{extra}]'"
    if alternatives:
        hint += " (or " + ", ".join(f"'[{a}]'" for a in alternatives) + ")"
    return hint


def module_hint(module: str) -> str:
    """How to install a top-level module: its extra's hint, or plain ``pip install MODULE``."""
    top = module.split(".")[0]
    return install_hint(EXTRAS[top][0]) if top in EXTRAS else f"pip install {PIP_NAMES.get(top, top)}"


def missing_extra_message(module: str, what: str = "this command", command: Optional[str] = None) -> str:
    top = module.split(".")[0]
    extra, purpose = EXTRAS.get(top, (None, top))
    if command in COMMAND_EXTRAS and top in COMMAND_EXTRAS[command][1]:
        extra = COMMAND_EXTRAS[command][0]
    if extra is None:
        return f"{what} needs the Python module {top!r}, which is not installed: {module_hint(top)}"
    return f"{what} needs {top} ({purpose}), which is not installed: {install_hint(extra)}"


def missing_module_message(module: str, exc: ImportError, what: str = "this command") -> str:
    """One line for an ImportError raised while importing ``module``: it names the module that is
    actually missing (a dependency of ``module`` when ``module`` itself is installed)."""
    top = module.split(".")[0]
    missing = (getattr(exc, "name", None) or "").split(".")[0]
    if missing and missing != top:
        return (
            f"{what} needs {missing} (imported by {top}, which is installed), and {missing} is not "
            f"installed: {module_hint(missing)}"
        )
    if not missing:  # not a missing module: a broken binary, a too-old version without a name
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return f"{what}: {top} is installed but does not import ({first}); reinstall it: {module_hint(top)}"
    return missing_extra_message(top, what)


def import_failure(
    exc: ModuleNotFoundError, what: str = "this command", command: Optional[str] = None
) -> Optional[str]:
    """For the CLI's error handler: one line when the missing module is an optional one, or is
    imported by one (``ml_dtypes`` under onnx); None for a missing core dependency (a broken install:
    keep the traceback)."""
    name = (exc.name or "").split(".")[0]
    if name in EXTRAS:
        return missing_extra_message(name, what, command=command)
    tb: Optional[types.TracebackType] = exc.__traceback__
    while tb is not None:  # was it raised while an optional module was importing itself?
        importer = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        if importer in EXTRAS:
            return missing_module_message(importer, exc, what)
        tb = tb.tb_next
    return None


def is_optional(module: Optional[str]) -> bool:
    return bool(module) and module.split(".")[0] in EXTRAS
