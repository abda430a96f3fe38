"""Optional dependencies and the extra that installs each: the one place that maps them.

The CLI turns a missing optional module into one line naming the extra (``pip install
'sacvit-deploy[cpu]'``); library code imports optional modules inside the functions that need them.
"""

from __future__ import annotations

from sacvit_deploy.core.errors import SacvitError

# top-level module -> (extra, what it is for)
EXTRAS: dict[str, tuple[str, str]] = {
    "onnx": ("cpu", "ONNX graphs; the `export` extra installs onnx alone"),
    "onnxruntime": ("cpu", "ONNX Runtime (use the 'gpu' extra for CUDA)"),
    "tensorrt": ("tensorrt", "TensorRT (on Jetson it comes with JetPack: apt install python3-libnvinfer)"),
    "pycuda": ("pycuda", "pycuda device buffers"),
    "tritonclient": ("triton", "the Triton client"),
    "matplotlib": ("plot", "plots"),
}


class MissingExtra(SacvitError):
    """An optional dependency is not installed."""


def missing_extra_message(module: str, what: str = "this command") -> str:
    top = module.split(".")[0]
    extra, purpose = EXTRAS.get(top, (None, top))
    if extra is None:
        return f"{what} needs the Python module {top!r}, which is not installed"
    return f"{what} needs {top} ({purpose}), which is not installed: pip install 'sacvit-deploy[{extra}]'"


def is_optional(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in EXTRAS
