"""Per-image results and the writers that stream them (table, JSON lines, CSV).

Writers write and flush each batch as it finishes, so an interrupted run keeps every finished row.
Failed images are rows too (with an ``error``), so the output accounts for every input.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from sacvit_deploy.runtime.pipeline import PipelineOutput


@dataclass
class Prediction:
    source: str  # file path, or "<array 3>" style label for in-memory inputs
    classes: list[int] = field(default_factory=list)  # top-k class indices, best first
    probabilities: list[float] = field(default_factory=list)
    names: list[str | None] = field(default_factory=list)
    stage: int = 0  # 1 or 2: the stage that answered; 0 when the image failed
    confidence: float = 0.0  # stage-1 confidence (max softmax of stage 1)
    error: str | None = None

    @property
    def label(self) -> str:
        if not self.classes:
            return ""
        name = self.names[0] if self.names else None
        return name if name is not None else str(self.classes[0])

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        return {
            "path": self.source,
            "top": [
                {"class": c, "name": n, "probability": round(p, 6)}
                for c, n, p in zip(self.classes, self.names, self.probabilities, strict=True)
            ],
            "stage": self.stage,
            "confidence": round(self.confidence, 6),
        }


def to_predictions(
    output: PipelineOutput, sources: Sequence[str], topk: int, class_names: Sequence[str] | None
) -> list[Prediction]:
    probs = output.logits.float().softmax(dim=-1).cpu()
    k = min(topk, probs.shape[1])
    top = probs.topk(k, dim=1)
    stage = output.stage.cpu().tolist()
    conf = output.confidence.float().cpu().tolist()
    preds = []
    for i, src in enumerate(sources):
        classes = top.indices[i].tolist()
        preds.append(
            Prediction(
                source=src,
                classes=classes,
                probabilities=top.values[i].tolist(),
                names=[class_names[c] if class_names else None for c in classes],
                stage=int(stage[i]),
                confidence=float(conf[i]),
            )
        )
    return preds


class ResultWriter:
    """Base writer: ``write(predictions)`` per batch, ``close()`` at the end."""

    def __init__(self, stream: IO[str], topk: int) -> None:
        self.stream = stream
        self.topk = topk

    def write(self, predictions: Sequence[Prediction]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stream.flush()
        if self.stream not in (sys.stdout, sys.stderr):
            self.stream.close()


class JsonlWriter(ResultWriter):
    def write(self, predictions: Sequence[Prediction]) -> None:
        for p in predictions:
            self.stream.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
        self.stream.flush()


class CsvWriter(ResultWriter):
    def __init__(self, stream: IO[str], topk: int) -> None:
        super().__init__(stream, topk)
        self._csv = csv.writer(stream)
        header = ["path", "stage", "confidence"]
        for i in range(1, topk + 1):
            header += [f"top{i}_class", f"top{i}_name", f"top{i}_probability"]
        self._csv.writerow([*header, "error"])
        stream.flush()

    def write(self, predictions: Sequence[Prediction]) -> None:
        for p in predictions:
            row: list[Any] = [p.source, p.stage or "", f"{p.confidence:.6f}" if p.error is None else ""]
            for i in range(self.topk):
                if i < len(p.classes):
                    row += [p.classes[i], p.names[i] or "", f"{p.probabilities[i]:.6f}"]
                else:
                    row += ["", "", ""]
            self._csv.writerow([*row, p.error or ""])
        self.stream.flush()


class TableWriter(ResultWriter):
    """Aligned text rows, printed as each batch finishes (a table that streams)."""

    def __init__(self, stream: IO[str], topk: int) -> None:
        super().__init__(stream, topk)
        self._header_done = False

    def write(self, predictions: Sequence[Prediction]) -> None:
        if not self._header_done:
            self.stream.write(f"{'stage':>5}  {'conf':>6}  {'prob':>6}  {'prediction':<28}  path\n")
            self._header_done = True
        for p in predictions:
            if p.error is not None:
                self.stream.write(f"{'-':>5}  {'-':>6}  {'-':>6}  {'FAILED':<28}  {p.source}: {p.error}\n")
                continue
            label = p.label if len(p.label) <= 28 else p.label[:27] + "…"
            extra = ""
            if self.topk > 1 and len(p.classes) > 1:
                rest = [
                    f"{(n if n is not None else c)} {pr:.2f}"
                    for c, n, pr in zip(p.classes[1:], p.names[1:], p.probabilities[1:], strict=True)
                ]
                extra = "  (" + ", ".join(rest) + ")"
            self.stream.write(
                f"{p.stage:>5}  {p.confidence:>6.3f}  {p.probabilities[0]:>6.3f}  {label:<28}  {p.source}{extra}\n"
            )
        self.stream.flush()


WRITERS = {"table": TableWriter, "jsonl": JsonlWriter, "csv": CsvWriter}


def open_writer(fmt: str, output: Path | None, topk: int) -> ResultWriter:
    stream: IO[str] = sys.stdout if output is None else output.open("w", encoding="utf-8", newline="")
    return WRITERS[fmt](stream, topk)


def as_batch_tensor(images: Any) -> torch.Tensor:
    """numpy (n,3,R,R) float32 -> torch, without a copy."""
    return images if isinstance(images, torch.Tensor) else torch.from_numpy(images)
