"""One adapter module per checkpoint format; the rows of ``core.formats.CHECKPOINT_FORMATS`` name them.

``adapter_for(name)`` imports the module the row names (``row.adapter``: a module in this package, or
a dotted module path for a format that lives outside it) and builds its ``Adapter`` with the row.
"""

from __future__ import annotations

import importlib
from typing import Dict

from sacvit_deploy.core.errors import CheckpointError
from sacvit_deploy.core.formats import AUTO, CHECKPOINT_FORMATS
from sacvit_deploy.model.formats.base import FormatAdapter, RawCheckpoint

__all__ = ["FormatAdapter", "RawCheckpoint", "adapter_for"]

_CACHE: Dict[str, FormatAdapter] = {}


def adapter_for(name: str) -> FormatAdapter:
    """The adapter of format ``name`` (one of ``CHECKPOINT_FORMATS``)."""
    row = CHECKPOINT_FORMATS.get(name)
    if row is None:
        raise CheckpointError(
            f"unknown checkpoint format {name!r}; use one of: {AUTO}, {', '.join(CHECKPOINT_FORMATS)}"
        )
    cached = _CACHE.get(name)
    if cached is not None and cached.row is row:
        return cached
    module = row.adapter if "." in row.adapter else f"{__name__}.{row.adapter}"
    adapter = importlib.import_module(module).Adapter(row)
    _CACHE[name] = adapter
    return adapter
