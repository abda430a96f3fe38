"""Per-image results and the writers that stream them (table, JSON lines, CSV).

Writers write and flush each batch as it finishes, so an interrupted run keeps every finished row.
Failed images are rows too (with an ``error``), so the output accounts for every input.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.runtime.pipeline import PipelineOutput


@dataclass
class Prediction:
    source: str  # file path, or "<array 3>" style label for in-memory inputs
    classes: List[int] = field(default_factory=list)  # top-k class indices, best first
    probabilities: List[float] = field(default_factory=list)
    names: List[Optional[str]] = field(default_factory=list)
    stage: int = 0  # 1 or 2: the stage that answered; 0 when the image failed
    confidence: float = 0.0  # stage-1 confidence (max softmax of stage 1)
    error: Optional[str] = None

    @property
    def label(self) -> str:
        if not self.classes:
            return ""
        name = self.names[0] if self.names else None
        return name if name is not None else str(self.classes[0])

    def to_dict(self) -> Dict[str, Any]:
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        return {
            "path": self.source,
            "top": [
                {"class": c, "name": n, "probability": round(p, 6)}
                for c, n, p in zip(self.classes, self.names, self.probabilities)
            ],
            "stage": self.stage,
            "confidence": round(self.confidence, 6),
        }


def to_predictions(
    output: PipelineOutput, sources: Sequence[str], topk: int, class_names: Optional[Sequence[str]]
) -> List[Prediction]:
    probs = softmax(np.asarray(output.logits, dtype=np.float32))
    k = min(topk, probs.shape[1])
    # Best first; ties keep the lower class index first (a stable sort of the negated probabilities).
    index = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(probs, index, axis=1)
    stage = np.asarray(output.stage).tolist()
    conf = np.asarray(output.confidence, dtype=np.float32).tolist()
    preds = []
    for i, src in enumerate(sources):
        classes = index[i].tolist()
        preds.append(
            Prediction(
                source=src,
                classes=classes,
                probabilities=values[i].tolist(),
                names=[class_names[c] if class_names else None for c in classes],
                stage=int(stage[i]),
                confidence=float(conf[i]),
            )
        )
    return preds


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32 (max subtracted first, as torch does)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class RowWriteError(SacvitError):
    """Writing results failed (disk full, closed pipe); the output holds ``saved`` whole rows."""

    def __init__(self, message: str, saved: int) -> None:
        super().__init__(message)
        self.saved = saved


class ResultWriter:
    """Base writer: ``write(predictions)`` per batch, ``close()`` at the end.

    Subclasses turn predictions into whole lines (:meth:`lines`); the writer sends each line in one
    write, so a file never holds half a row: on a write error it is cut back to its last complete row
    and :class:`RowWriteError` says how many rows it keeps. ``clean`` is applied to every string a
    row shows (paths, names, errors) when the output is a terminal; the CLI passes its escaping helper.
    """

    def __init__(
        self,
        stream: Optional[IO[str]],
        topk: int,
        path: Optional[Path] = None,
        clean: Optional[Callable[[str], str]] = None,
    ) -> None:
        self.stream = stream
        self.topk = topk
        self.path = path
        self.rows = 0  # whole rows written (header not counted)
        self.clean = clean or (lambda text: text)
        self._fd: Optional[int] = None
        self._good = 0  # byte offset just after the last complete line
        self._failed: Optional[RowWriteError] = None
        if path is not None:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            except OSError as exc:
                raise RowWriteError(
                    f"{path}: cannot write the results ({exc.strerror or exc}); pick a writable --output",
                    0,
                ) from None
        for line in self.header():
            self._send(line, row=False)

    # ---- formatting (per format) ----------------------------------------------------------------
    def header(self) -> List[str]:
        return []

    def lines(self, p: Prediction) -> str:
        raise NotImplementedError

    # ---- output ---------------------------------------------------------------------------------
    def write(self, predictions: Sequence[Prediction]) -> None:
        for p in predictions:
            self._send(self.lines(p), row=True)
        if self.stream is not None:
            self._guard(self.stream.flush)

    def _send(self, text: str, row: bool) -> None:
        if self._failed is not None:
            raise self._failed
        if self._fd is not None:
            data = text.encode("utf-8")
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                self._fail(exc)
            self._good += len(data)
        else:
            assert self.stream is not None
            self._guard(lambda: self.stream.write(text))  # type: ignore[union-attr]
        if row:
            self.rows += 1

    def _guard(self, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        where = str(self.path) if self.path is not None else "standard output"
        kept = ""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, self._good)
                kept = ", cut back to its last complete row"
            except OSError:
                kept = ", and could not be cut back to its last complete row"
        self._failed = RowWriteError(
            f"{where}: writing the results failed ({exc.strerror or exc}) after {self.rows} rows{kept}; "
            "free space or pick another --output",
            self.rows,
        )
        raise self._failed

    def close(self) -> None:
        """Flush and close; never raises a second time for an error :meth:`write` already raised."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as exc:
                if self._failed is None:
                    self._fail(exc)
        elif self.stream is not None and self._failed is None:
            self._guard(self.stream.flush)


class JsonlWriter(ResultWriter):
    def lines(self, p: Prediction) -> str:
        # Non-finite numbers would be written as bare NaN (not JSON): null instead.
        d = _finite(p.to_dict())
        return (
            json.dumps(d, ensure_ascii=self._fd is None and _is_terminal(self.stream), allow_nan=False) + "\n"
        )


class CsvWriter(ResultWriter):
    def header(self) -> List[str]:
        names = ["path", "stage", "confidence"]
        for i in range(1, self.topk + 1):
            names += [f"top{i}_class", f"top{i}_name", f"top{i}_probability"]
        return [self._csv_line([*names, "error"])]

    def lines(self, p: Prediction) -> str:
        row: List[Any] = [p.source, p.stage or "", f"{p.confidence:.6f}" if p.error is None else ""]
        for i in range(self.topk):
            if i < len(p.classes):
                row += [p.classes[i], p.names[i] or "", f"{p.probabilities[i]:.6f}"]
            else:
                row += ["", "", ""]
        return self._csv_line([*row, p.error or ""])

    def _csv_line(self, row: List[Any]) -> str:
        buf = io.StringIO()
        terminal = self._fd is None and _is_terminal(self.stream)
        csv.writer(buf).writerow([self.clean(str(v)) if terminal else v for v in row])
        return buf.getvalue()


class TableWriter(ResultWriter):
    """Aligned text rows, printed as each batch finishes (a table that streams). Always for a human:
    every shown string goes through ``clean``."""

    def header(self) -> List[str]:
        return [f"{'stage':>5}  {'conf':>6}  {'prob':>6}  {'prediction':<28}  path\n"]

    def lines(self, p: Prediction) -> str:
        c = self.clean
        if p.error is not None:
            return f"{'-':>5}  {'-':>6}  {'-':>6}  {'FAILED':<28}  {c(p.source)}: {c(p.error)}\n"
        label = c(p.label)
        label = label if len(label) <= 28 else label[:27] + "…"
        extra = ""
        if self.topk > 1 and len(p.classes) > 1:
            rest = [
                f"{c(name) if name is not None else cls} {prob:.2f}"
                for cls, name, prob in zip(p.classes[1:], p.names[1:], p.probabilities[1:])
            ]
            extra = "  (" + ", ".join(rest) + ")"
        return f"{p.stage:>5}  {p.confidence:>6.3f}  {p.probabilities[0]:>6.3f}  {label:<28}  {c(p.source)}{extra}\n"


WRITERS = {"table": TableWriter, "jsonl": JsonlWriter, "csv": CsvWriter}


def open_writer(
    fmt: str, output: Optional[Path], topk: int, clean: Optional[Callable[[str], str]] = None
) -> ResultWriter:
    """A writer to ``output`` (a file, created or truncated) or, when None, to standard output."""
    if output is None:
        return WRITERS[fmt](sys.stdout, topk, None, clean)
    return WRITERS[fmt](None, topk, output, clean)


def _is_terminal(stream: Optional[IO[str]]) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):
        return False


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
