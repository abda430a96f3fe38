"""One backend protocol, Polygraphy-style: a *runner* executes one graph.

Building a runner and using it are separate: construction only records what to load; ``activate()``
loads it (creates the ONNX Runtime session, deserializes the engine); ``infer(feed)`` runs it;
``deactivate()`` frees it. Runners are context managers. ``infer`` checks the feed against the
runner's declared input specs (names, dtypes, ranks, static dims) before running, so a wrong tensor
fails with a message naming the graph and the tensor instead of a backend stack trace.

The currency is ``torch.Tensor`` (CPU or CUDA): the pipeline's exit gate and compaction run on the
device with torch ops whatever the backend, and GPU backends avoid host copies.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import TensorSpec

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
    "uint8": torch.uint8,
}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


class BackendError(SacvitError):
    """A backend that cannot run: missing package or provider, bad feed, incompatible engine."""


class Runner(abc.ABC):
    """Runs one graph. Subclasses implement ``_activate``, ``_infer`` and ``_deactivate``."""

    backend: str = "abstract"

    def __init__(self, name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self.name = name  # e.g. "stage1.onnx", used in messages
        self.input_specs = {t.name: t for t in inputs}
        self.output_specs = {t.name: t for t in outputs}
        self.is_active = False

    # ---- lifecycle -----------------------------------------------------------------------------
    def activate(self) -> Runner:
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # ---- running -------------------------------------------------------------------------------
    def infer(self, feed: Mapping[str, torch.Tensor], check: bool = True) -> dict[str, torch.Tensor]:
        if not self.is_active:
            raise BackendError(
                f"{self.name}: runner is not active; call activate() or use it as a context manager"
            )
        if check:
            self.check_feed(feed)
        return self._infer(feed)

    def check_feed(self, feed: Mapping[str, torch.Tensor]) -> None:
        missing = set(self.input_specs) - set(feed)
        extra = set(feed) - set(self.input_specs)
        if missing or extra:
            raise BackendError(
                f"{self.name}: feed has inputs {sorted(feed)} but the graph takes {sorted(self.input_specs)}"
            )
        batch = None
        for name, spec in self.input_specs.items():
            t = feed[name]
            want = TORCH_DTYPES[spec.dtype]
            if t.dtype != want:
                raise BackendError(
                    f"{self.name}: input '{name}' is {DTYPE_NAMES.get(t.dtype, t.dtype)}, expected {spec.dtype}"
                )
            if t.dim() != len(spec.shape) or any(
                isinstance(d, int) and d != s for d, s in zip(spec.shape, t.shape, strict=False)
            ):
                raise BackendError(
                    f"{self.name}: input '{name}' has shape {tuple(t.shape)}, expected {format_shape(spec.shape)}"
                )
            if batch is None:
                batch = t.shape[0]
            elif t.shape[0] != batch:
                raise BackendError(
                    f"{self.name}: inputs disagree on the batch size ({batch} vs {t.shape[0]} for '{name}')"
                )

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph was built for, or None when the batch axis is dynamic."""
        first = next(iter(self.input_specs.values()))
        return first.shape[0] if isinstance(first.shape[0], int) else None

    @property
    def max_batch(self) -> int | None:
        """The largest batch the runner accepts (an engine profile's max), or None for unbounded."""
        return self.fixed_batch

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "graph": self.name, "device": str(self.device)}

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...


def format_shape(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
