"""One backend protocol, Polygraphy-style: a *runner* executes one graph.

Building a runner and using it are separate: construction only records what to load; ``activate()``
loads it (creates the ONNX Runtime session, deserializes the engine); ``infer(feed)`` runs it;
``deactivate()`` frees it. Runners are context managers. ``infer`` checks the feed against the
runner's declared input specs (names, dtypes, ranks, static dims) before running, so a wrong tensor
fails with a message naming the graph and the tensor instead of a backend stack trace.

The currency is ``numpy.ndarray`` on the host. CPU runners return numpy arrays; GPU runners that
keep their outputs on the device return *device arrays* (duck-typed, see ``backends/arrays.py``),
which ``check_feed`` accepts too (it reads only ``.shape`` and ``.dtype``). No GPU library and no
torch is imported here.
"""

from __future__ import annotations

import abc
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from sacvit_deploy.backends.arrays import DTYPES
from sacvit_deploy.backends.errors import BackendError
from sacvit_deploy.core.manifest import TensorSpec

__all__ = ["BackendError", "Runner", "check_graph_io", "format_shape"]


class Runner(abc.ABC):
    """Runs one graph. Subclasses implement ``_activate``, ``_infer`` and ``_deactivate``."""

    backend: str = "abstract"

    def __init__(self, name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self.name = name  # e.g. "stage1.onnx", used in messages
        self.input_specs = {t.name: t for t in inputs}
        self.output_specs = {t.name: t for t in outputs}
        self.is_active = False
        # check_feed runs on every call: resolve dtypes and static dims once, here. The usual spec
        # (a dynamic or fixed batch, every other dim static) is checked with one tuple comparison.
        self._checks = tuple(
            (
                t.name,
                DTYPES.get(t.dtype) or np.dtype(t.dtype),
                len(t.shape),
                t.shape[0] if t.shape and isinstance(t.shape[0], int) else None,
                tuple(t.shape[1:]) if all(isinstance(d, int) for d in t.shape[1:]) else None,
                tuple((i, d) for i, d in enumerate(t.shape) if isinstance(d, int)),
            )
            for t in inputs
        )
        first = inputs[0].shape[0] if inputs and inputs[0].shape else None
        self._fixed_batch = first if isinstance(first, int) else None
        self._names = frozenset(self.input_specs)

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
    def infer(self, feed: Mapping[str, Any], check: bool = True) -> Dict[str, Any]:
        """Run the graph on ``feed`` (numpy arrays, or this runner's device arrays); returns numpy
        arrays (CPU runners) or device arrays (GPU runners that keep outputs on the device)."""
        if not self.is_active:
            raise BackendError(
                f"{self.name}: runner is not active; call activate() or use it as a context manager"
            )
        if check:
            self.check_feed(feed)
        return self._infer(feed)

    def check_feed(self, feed: Mapping[str, Any]) -> None:
        if len(feed) != len(self._names) or not self._names.issuperset(feed):
            raise BackendError(
                f"{self.name}: feed has inputs {sorted(feed)} but the graph takes {sorted(self.input_specs)}"
            )
        batch = None
        for name, dtype, rank, dim0, tail, static in self._checks:
            a = feed[name]
            shape = a.shape
            if a.dtype != dtype:
                raise BackendError(
                    f"{self.name}: input '{name}' is {_dtype_name(a.dtype)}, expected {dtype.name}"
                )
            if tail is not None:
                bad = len(shape) != rank or shape[1:] != tail or (dim0 is not None and shape[0] != dim0)
            else:
                bad = len(shape) != rank or any(shape[i] != d for i, d in static)
            if bad:
                raise BackendError(
                    f"{self.name}: input '{name}' has shape {tuple(shape)}, "
                    f"expected {format_shape(self.input_specs[name].shape)}"
                )
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:
                raise BackendError(
                    f"{self.name}: inputs disagree on the batch size ({batch} vs {shape[0]} for '{name}')"
                )

    @property
    def fixed_batch(self) -> Optional[int]:
        """The batch size the graph was built for, or None when the batch axis is dynamic."""
        return self._fixed_batch

    @property
    def max_batch(self) -> Optional[int]:
        """The largest batch the runner accepts (an engine profile's max), or None for unbounded."""
        return self.fixed_batch

    @property
    def device(self) -> str:
        """Where the runner's outputs live: "cpu" or "cuda:N"."""
        return "cpu"

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.backend, "graph": self.name, "device": self.device}

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: Mapping[str, Any]) -> Dict[str, Any]: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...


def format_shape(shape: Sequence[Union[int, str, None]]) -> str:
    """``(batch, 3, 224, 224)``; a dim a runtime reports as None (dynamic, unnamed) shows as ``?``."""
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


def check_graph_io(
    path: Any,
    kind: str,
    graph: Mapping[str, Any],
    specs: Mapping[str, TensorSpec],
    listed: Optional[Sequence[str]] = None,
) -> None:
    """One side of a loaded graph (``kind``: "input" or "output") against the manifest's ``specs``.

    ``graph``: {name: (dtype name, dims)} as the runtime reports them (a dim is an int, or None / a
    name where dynamic); ``listed``: the graph's names as the message shows them (default: ``graph``'s
    keys). Every declared name must be there (and no undeclared input), with the declared dtype, rank
    and static dims: a graph swapped for another model's (96 px instead of 224, the baseline as stage 1)
    fails here, naming the file, instead of deep inside a run. Every backend that reads the ONNX files
    checks through this."""
    shown = sorted(graph if listed is None else listed)
    missing = sorted(set(specs) - set(graph))
    extra = sorted(set(shown) - set(specs)) if kind == "input" else []
    if missing or extra:
        raise BackendError(
            f"{path}: the graph's {kind}s {shown} are not the manifest's {sorted(specs)}; "
            "the file belongs to another export: re-export the folder"
        )
    for name, spec in specs.items():
        dtype, dims = graph[name]
        dims = tuple(dims)
        static_differs = any(
            isinstance(d, int) and isinstance(w, int) and d != w for d, w in zip(dims, spec.shape)
        )
        if dtype != spec.dtype or len(dims) != len(spec.shape) or static_differs:
            raise BackendError(
                f"{path}: {kind} '{name}' is {dtype} {format_shape(dims)} in the graph but "
                f"{spec.dtype} {format_shape(spec.shape)} in the manifest; re-export the folder"
            )


def _dtype_name(dtype: Any) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)
