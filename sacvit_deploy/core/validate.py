"""One place where the values every front end takes are checked: the CLI (every command, through
``cli._command.handle_errors``, by parameter name) and the Python API (``runtime.api``) call the same
functions, so ``--topk 0`` and ``predict(..., topk=0)`` get the same one-line error.

Errors are :class:`InvalidValue`: a SacvitError (the CLI prints one line) and a ValueError (what
Python callers expect from a bad argument). ``name`` is how the caller spells the value:
``--batch-size`` on the command line, ``batch_size`` in Python.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Union

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.exit_rule import check_threshold

# The largest inference batch: 1024 images of 224 px are 0.6 GB of float32 input (profile keeps a
# pool that size, infer decodes up to 3 batches ahead); beyond it a typo allocates tens of GB.
MAX_BATCH = 1024
# Threads decoding images or loading data: more than this is a typo, not a machine.
MAX_WORKERS = 256


class InvalidValue(SacvitError, ValueError):
    """An argument outside what it may be; the message names it, the value and the fix."""


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidValue(f"{name} {value!r}: give a whole number")
    return int(value)


def threshold(value: Any, name: str = "threshold") -> float:
    """A finite number >= 0 (above 1: no image exits at stage 1; see :func:`threshold_note`)."""
    try:
        return check_threshold(value, name)
    except SacvitError as exc:
        raise InvalidValue(str(exc)) from None


def threshold_note(value: float, name: str = "threshold") -> Optional[str]:
    """What a legal but surprising threshold means, said once, or None."""
    if value > 1.0:
        return (
            f"{name} {value:g} is above 1, the largest confidence: no image exits at stage 1 "
            "(every image runs both stages)"
        )
    return None


def topk(value: Any, name: str = "topk") -> int:
    """Classes reported per image: at least 1 (capped at the class count where it is used)."""
    k = _integer(value, name)
    if k < 1:
        raise InvalidValue(f"{name} {k}: give 1 or more (classes reported per image)")
    return k


def batch_size(value: Any, name: str = "batch_size", maximum: int = MAX_BATCH) -> int:
    b = _integer(value, name)
    if not 1 <= b <= maximum:
        raise InvalidValue(
            f"{name} {b}: give a batch size from 1 to {maximum} (larger batches do not run faster here)"
        )
    return b


def workers(value: Any, name: str = "workers", minimum: int = 0) -> int:
    w = _integer(value, name)
    if not minimum <= w <= MAX_WORKERS:
        raise InvalidValue(f"{name} {w}: give {minimum} to {MAX_WORKERS} workers")
    return w


def image_batch(array: Any, resolution: Optional[int] = None, name: str = "images") -> Any:
    """A preprocessed batch as the runners take it: (B, 3, R, R), B >= 1, floating point, finite.
    Accepts numpy arrays and anything with ``.numpy()`` / ``__array__`` (a CPU torch tensor);
    returns it unchanged."""
    import numpy as np

    shape = tuple(getattr(array, "shape", ()))
    dtype = getattr(array, "dtype", None)
    if len(shape) != 4 or shape[1] != 3 or shape[0] < 1:
        want = f"(B, 3, {resolution}, {resolution})" if resolution else "(B, 3, R, R)"
        raise InvalidValue(f"{name}: shape {shape}; give a batch {want} with B >= 1 (preprocess() makes one)")
    if resolution is not None and shape[2:] != (resolution, resolution):
        raise InvalidValue(
            f"{name}: {shape[2]}x{shape[3]} pixels; the model takes {resolution}x{resolution} (preprocess() resizes)"
        )
    if dtype is not None and "float" not in str(dtype):
        raise InvalidValue(
            f"{name}: dtype {dtype}; give floating-point pixels, normalised as preprocess() does"
        )
    if hasattr(array, "detach"):  # a torch tensor: checked where it lies (a CUDA one is not copied here)
        finite = bool(array.detach().isfinite().all())
    else:
        finite = bool(np.isfinite(np.asarray(array)).all())
    if not finite:
        raise InvalidValue(f"{name}: holds NaN or infinite values; give finite pixels")
    return array


def raw_image(array: Any, index: int, name: str = "images") -> Any:
    """A decoded image given as an array (H, W, 3) or (H, W): finite, non-empty; values are pixels."""
    import numpy as np

    a = np.asarray(array)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)) or 0 in a.shape:
        raise InvalidValue(f"{name}[{index}]: an array of shape {a.shape}; give an image HxWx3 (uint8)")
    if a.dtype.kind not in "uif":
        raise InvalidValue(f"{name}[{index}]: an array of dtype {a.dtype}; give uint8 pixels")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InvalidValue(f"{name}[{index}]: holds NaN or infinite values; give finite pixels")
    return array


def finite(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidValue(f"{name} {value!r}: give a number") from None
    if not math.isfinite(v):
        raise InvalidValue(f"{name} {value!r}: give a finite number")
    return v


def parse_json(text: Union[str, bytes]) -> Any:
    """JSON from an untrusted source (a manifest, a config, a server reply): a document nested too
    deep is a ValueError like any other malformed JSON (``json`` raises RecursionError for it, which
    no ``except ValueError`` catches)."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deep") from None
