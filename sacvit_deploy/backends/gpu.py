"""The CUDA GPU that builds or runs engines: name and compute capability, via torch or pycuda."""

from __future__ import annotations

from dataclasses import dataclass

from sacvit_deploy.backends.base import BackendError


class NoGpuError(BackendError):
    """No CUDA GPU is visible to this process."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.6"
    index: int = 0
    memory_bytes: int | None = None


NO_GPU = (
    "no CUDA GPU is visible here; TensorRT builds and runs engines on the GPU that will run them "
    "(check nvidia-smi; in Docker pass --gpus all, on Jetson --runtime nvidia)"
)


def detect_gpu(index: int = 0) -> GpuInfo:
    """The GPU ``index``, asked of torch (CUDA build) or else of pycuda."""
    import torch

    if torch.cuda.is_available():
        if index >= torch.cuda.device_count():
            raise NoGpuError(
                f"GPU {index} does not exist: torch sees {torch.cuda.device_count()} CUDA GPU(s)"
            )
        props = torch.cuda.get_device_properties(index)
        return GpuInfo(props.name, f"{props.major}.{props.minor}", index, int(props.total_memory))
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise NoGpuError(NO_GPU) from None
    try:
        cuda.init()
        device = cuda.Device(index)
        major, minor = device.compute_capability()
        return GpuInfo(device.name(), f"{major}.{minor}", index, int(device.total_memory()))
    except Exception as exc:  # pycuda raises its own error types when there is no driver or device
        raise NoGpuError(f"{NO_GPU} (pycuda: {str(exc).splitlines()[0][:120]})") from None
