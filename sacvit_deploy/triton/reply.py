"""Replies from a Triton server are untrusted, like manifests: every field is checked before a row
is written. numpy only (the client's currency after the numpy conversion of the runtime).

A reply must hold, for the ``rows`` images sent: ``logits`` (rows, classes) finite floats,
``stage`` (rows,) or (rows, 1) integers in {1, 2}, ``confidence`` (rows,) or (rows, 1) finite floats
in [0, 1]. Anything else is one :class:`ReplyError` naming the server, the output and what is wrong.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

from sacvit_deploy.core.errors import SacvitError


class ReplyError(SacvitError):
    """A server's reply that cannot be a SAC-ViT answer (wrong rows, shape, dtype, values)."""


def _column(value: np.ndarray, rows: int) -> Optional[np.ndarray]:
    """(rows,) or (rows, 1) as (rows,); None for any other shape."""
    if value.shape == (rows,):
        return value
    if value.shape == (rows, 1):
        return value.reshape(rows)
    return None


def validate_reply(
    reply: Mapping[str, Any], rows: int, num_classes: Optional[int], where: str
) -> Dict[str, np.ndarray]:
    """The checked reply: ``logits`` float32 (rows, classes), ``stage`` int64 (rows,),
    ``confidence`` float32 (rows,). ``where`` names the server and model in the error."""

    def bad(name: str, problem: str) -> ReplyError:
        return ReplyError(
            f"{where}: its reply is not a SAC-ViT answer ({name} {problem}); nothing was written for "
            "these images; check that the server runs the repository `sacvit-deploy triton` wrote"
        )

    arrays: Dict[str, np.ndarray] = {}
    for name in ("logits", "stage", "confidence"):
        value = reply.get(name)
        if value is None:
            raise bad(name, "is missing")
        if not isinstance(value, np.ndarray):
            raise bad(name, f"is a {type(value).__name__}, not an array")
        arrays[name] = value

    logits = arrays["logits"]
    if logits.dtype.kind != "f":
        raise bad("logits", f"has dtype {logits.dtype}, not floating point")
    if logits.ndim != 2 or logits.shape[0] != rows:
        raise bad("logits", f"has shape {logits.shape} for {rows} image(s); expected ({rows}, classes)")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise bad("logits", f"has {logits.shape[1]} classes; the served model has {num_classes}")
    if logits.shape[1] < 1:
        raise bad("logits", "has no classes")
    with np.errstate(over="ignore"):  # float64 beyond float32's range: checked as what is kept
        logits = np.ascontiguousarray(logits, dtype=np.float32)
    if not np.isfinite(logits).all():
        raise bad("logits", "holds NaN or infinite values (as float32)")

    stage = _column(arrays["stage"], rows)
    if stage is None:
        raise bad("stage", f"has shape {arrays['stage'].shape} for {rows} image(s)")
    if stage.dtype.kind not in "iu":
        raise bad("stage", f"has dtype {stage.dtype}, not an integer")
    wrong = stage[(stage != 1) & (stage != 2)]
    if wrong.size:
        raise bad("stage", f"holds {wrong[0]}; a stage is 1 or 2")

    confidence = _column(arrays["confidence"], rows)
    if confidence is None:
        raise bad("confidence", f"has shape {arrays['confidence'].shape} for {rows} image(s)")
    if confidence.dtype.kind != "f":
        raise bad("confidence", f"has dtype {confidence.dtype}, not floating point")
    if not np.isfinite(confidence).all():
        raise bad("confidence", "holds NaN or infinite values")
    if ((confidence < 0) | (confidence > 1 + 1e-6)).any():
        raise bad(
            "confidence",
            f"holds {float(confidence[(confidence < 0) | (confidence > 1 + 1e-6)][0]):g}; it lies in [0, 1]",
        )

    return {
        "logits": logits,
        "stage": stage.astype(np.int64),
        "confidence": np.ascontiguousarray(confidence, dtype=np.float32),
    }
