"""The predict loop over image files: decode ahead on threads, run, and give every file one row.

:func:`predict_files` is what ``Pipeline.predict_files`` and ``sacvit-deploy infer`` run: batches
of Predictions in input order, a file that cannot be read as a row with its ``error``, so a caller
that writes each batch as it comes keeps every finished row.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Protocol, Sequence, Union

import numpy as np

from sacvit_deploy.runtime.pipeline import PipelineOutput
from sacvit_deploy.runtime.results import Prediction, to_predictions


class RunsBatches(Protocol):
    def run(self, images: np.ndarray, threshold: Optional[float] = None) -> PipelineOutput: ...


@dataclass
class PredictedBatch:
    predictions: List[Prediction]  # input order; failed files carry an error
    seconds: float  # time in the pipeline (not decoding)

    @property
    def classified(self) -> int:
        return sum(1 for p in self.predictions if p.error is None)

    @property
    def failed(self) -> int:
        return sum(1 for p in self.predictions if p.error is not None)

    @property
    def stage1(self) -> int:
        return sum(1 for p in self.predictions if p.error is None and p.stage == 1)


def predict_files(
    pipeline: RunsBatches,
    paths: Sequence[Union[str, Path]],
    preprocess: Any,  # PreprocessConfig
    topk: int,
    class_names: Optional[Sequence[str]],
    batch_size: int = 32,
    workers: int = 2,
    threshold: Optional[float] = None,
) -> Iterator[PredictedBatch]:
    """Classify image files batch by batch; a bad file is its own row, never the end of the run."""
    from sacvit_deploy.runtime.images import iter_batches

    order = {str(Path(p)): i for i, p in enumerate(paths)}
    with closing(iter_batches(paths, preprocess, batch_size, workers)) as batches:
        for batch in batches:
            rows = [Prediction(source=str(f.path), error=f.reason) for f in batch.failures]
            seconds = 0.0
            if batch.images.shape[0]:
                t = time.perf_counter()
                result = pipeline.run(batch.images, threshold)
                seconds = time.perf_counter() - t
                rows += to_predictions(result, [str(p) for p in batch.paths], topk, class_names)
            rows.sort(key=lambda r: order[r.source])  # failures and successes back in input order
            yield PredictedBatch(rows, seconds)
