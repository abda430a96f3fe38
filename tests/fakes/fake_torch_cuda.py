"""torch's CUDA side without a GPU: the torch device memory on CPU tensors, and a "CUDA tensor".

``CpuTorchMemory`` is :class:`sacvit_deploy.backends.device.TorchMemory`'s allocation, wrapping and
copy logic on CPU tensors, with the stream parts stubbed and every copy counted (``copies``: bytes).

``FakeCudaTensor`` stands in for a torch CUDA tensor at the API edge: a CPU tensor that says it lives
on ``cuda:N`` (``is_cuda``, ``device``), refuses ``numpy()`` / ``__array__`` as a real CUDA tensor does,
and counts its copies to the host (``cpu()`` / ``to("cpu")``) in ``host_copies``. Everything else
(``data_ptr``, ``reshape``, ``view``, ``isfinite`` ...) is the CPU tensor's, so
:func:`~sacvit_deploy.backends.device.wrap_torch` can wrap its memory without a copy.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sacvit_deploy.backends import device


class CpuTorchMemory(device.TorchMemory):
    """TorchMemory's allocation and copy logic on CPU tensors (no CUDA here): the stream parts stubbed."""

    def __init__(self) -> None:
        device.DeviceMemory.__init__(self, 0)
        import torch

        self.torch, self.device, self.stream = torch, torch.device("cpu"), None
        self._regions = {}
        self.copies: list[int] = []

    def _after_current_stream(self) -> None:
        self.pending = True

    def _copy(self, dst, src) -> None:
        self.copies.append(dst.numel())
        dst.copy_(src)

    def _sync(self) -> None:
        pass

    @property
    def stream_handle(self) -> int:
        return 1


class FakeCudaTensor:
    """A CPU torch tensor posing as one on GPU ``index`` (see the module docstring)."""

    __module__ = "torch"  # what the API edge recognises torch tensors by (backends.arrays.as_host_batch)

    def __init__(self, tensor: Any, index: int = 0) -> None:
        self._tensor = tensor
        self.device = SimpleNamespace(type="cuda", index=index)
        self.host_copies = 0

    is_cuda = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tensor, name)

    def detach(self) -> FakeCudaTensor:
        return self  # still on the "GPU"

    def cpu(self) -> Any:
        self.host_copies += 1
        return self._tensor.clone()

    def to(self, where: Any, *args: Any, **kwargs: Any) -> Any:
        if str(where) != "cpu":
            raise NotImplementedError(f"FakeCudaTensor.to({where!r})")
        return self.cpu()

    def numpy(self) -> Any:
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        return self.numpy()


def install_cpu_torch_memory(monkeypatch: Any, index: int = 0) -> CpuTorchMemory:
    """Make :func:`~sacvit_deploy.backends.device.wrap_torch` use a :class:`CpuTorchMemory` for GPU ``index``."""
    memory = CpuTorchMemory()
    monkeypatch.setitem(device._TORCH_MEMORIES, index, memory)
    return memory
