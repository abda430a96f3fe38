"""The CUDA GPU that builds or runs engines: name and compute capability, via cuda-python, pycuda or torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sacvit_deploy.backends.base import BackendError


class NoGpuError(BackendError):
    """No CUDA GPU is visible to this process."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.6"
    index: int = 0
    memory_bytes: Optional[int] = None


NO_GPU = (
    "no CUDA GPU is visible here; TensorRT builds and runs engines on the GPU that will run them "
    "(check nvidia-smi; in Docker pass --gpus all, on Jetson --runtime nvidia)"
)


def detect_gpu(index: int = 0) -> GpuInfo:
    """The GPU ``index``, asked of cuda-python, else pycuda, else torch (a CUDA build)."""
    from sacvit_deploy.backends.device import DeviceError, NoSuchGpuError, gpu_properties

    try:
        name, (major, minor), memory, _source = gpu_properties(index)
    except NoSuchGpuError as exc:
        raise NoGpuError(str(exc)) from None
    except DeviceError as exc:
        raise NoGpuError(f"{NO_GPU} ({exc})") from None
    return GpuInfo(name, f"{major}.{minor}", index, memory)
