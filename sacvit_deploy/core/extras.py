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
    "torch": ("torch", "PyTorch"),
}
# command -> (extra, the modules it installs): a command whose own extra installs the missing module
# names that extra (`export` = torch + onnx), so one install fixes it whichever module is found missing
# first. Others (onnxruntime for export's verification) keep the module's row.
COMMAND_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "export": ("export", ("torch", "onnx")),
    "train": ("train", ("torch",)),
}


class MissingExtra(SacvitError):
    """An optional dependency is not installed."""


def missing_extra_message(module: str, what: str = "this command", command: str | None = None) -> str:
    top = module.split(".")[0]
    extra, purpose = EXTRAS.get(top, (None, top))
    if command in COMMAND_EXTRAS and top in COMMAND_EXTRAS[command][1]:
        extra = COMMAND_EXTRAS[command][0]
    if extra is None:
        return f"{what} needs the Python module {top!r}, which is not installed"
    return f"{what} needs {top} ({purpose}), which is not installed: pip install 'sacvit-deploy[{extra}]'"


def is_optional(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in EXTRAS
