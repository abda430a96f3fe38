"""The PyTorch backend: the reference. Runs the model's stages eagerly on CPU or CUDA.

The only backend module that imports torch (the factory imports it lazily, on demand). Like every
runner it takes and returns numpy arrays: CPU inputs become tensors without a copy, outputs come
back to the host.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from sacvit_deploy.backends.arrays import to_host
from sacvit_deploy.backends.base import BackendError, Runner
from sacvit_deploy.core.manifest import TensorSpec


class TorchRunner(Runner):
    """Runs ``module(*inputs)`` in inference mode; the module returns a tensor or a tuple of tensors."""

    backend = "torch"

    def __init__(
        self,
        name: str,
        module: nn.Module,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: Union[str, torch.device] = "cpu",
    ) -> None:
        super().__init__(name, inputs, outputs)
        self._module = module
        self._device = torch.device(device)
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(
                "torch backend: --device cuda asked but torch sees no CUDA GPU; use --device cpu"
            )
        if self._device.type == "cuda" and self._device.index is None:
            self._device = torch.device("cuda", torch.cuda.current_device())

    @property
    def device(self) -> str:
        return str(self._device)

    def _activate(self) -> None:
        self._module = self._module.to(self._device).eval()

    def _infer(self, feed: Mapping[str, Any]) -> Dict[str, Any]:
        args = [
            torch.from_numpy(np.ascontiguousarray(to_host(feed[name]))).to(self._device, non_blocking=True)
            for name in self.input_specs
        ]
        with torch.inference_mode():
            out = self._module(*args)
        if isinstance(out, torch.Tensor):
            out = (out,)
        return {name: out[i].detach().cpu().numpy() for i, name in enumerate(self.output_specs)}

    def _deactivate(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)


def model_runners(
    model: nn.Module, roles: Sequence[str], device: Union[str, torch.device] = "cpu"
) -> Dict[str, Runner]:
    """The eager PyTorch model as one runner per graph role: the reference is just another runner."""
    from sacvit_deploy.model.graphs import graph_module, graph_specs

    runners: Dict[str, Runner] = {}
    for role in roles:
        inputs, outputs = graph_specs(model.cfg, role)
        runners[role] = TorchRunner(f"{role} (PyTorch)", graph_module(model, role), inputs, outputs, device)
    return runners
