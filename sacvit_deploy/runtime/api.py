"""The Python API: ``Pipeline.from_artifacts("export/").predict(images)``.

    from sacvit_deploy import Pipeline  # or: from sacvit_deploy.runtime.api import Pipeline

    with Pipeline.from_artifacts("export/", backend="onnxruntime") as pipe:
        for p in pipe.predict(["cat.jpg", pil_image, numpy_array], topk=3):
            print(p.source, p.label, p.probabilities[0], "stage", p.stage)

Inputs are paths, PIL images or numpy arrays (HxWx3 uint8, like a decoded image); they are
preprocessed exactly as the manifest says. ``run(batch)`` takes an already preprocessed batch: a
numpy array, or a torch tensor when torch is installed (a CPU tensor is read without a copy; a CUDA
tensor goes to TensorRT as it is, wrapped as a device array without a copy, and is copied to the host
for the other backends). Results are numpy arrays. torch is never imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

from sacvit_deploy.backends.arrays import as_host_batch
from sacvit_deploy.core import validate
from sacvit_deploy.runtime.loader import OpenedPipeline, open_pipeline
from sacvit_deploy.runtime.pipeline import PipelineOutput
from sacvit_deploy.runtime.predict import PredictedBatch, predict_files
from sacvit_deploy.runtime.results import Prediction, to_predictions


class Pipeline:
    """An artifact folder opened on a backend, ready to classify images."""

    def __init__(self, opened: OpenedPipeline) -> None:
        self._opened = opened
        self.manifest = opened.manifest
        self.backend = opened.choice
        self.class_names = opened.manifest.class_names

    @classmethod
    def from_artifacts(
        cls,
        folder: Optional[Union[str, Path]] = None,
        backend: str = "auto",
        device: Optional[str] = None,
        threshold: Optional[float] = None,
        **options: Any,
    ) -> Pipeline:
        """Open ``folder`` (default: ``engines/`` if it has engines, else ``export/``)."""
        return cls(open_pipeline(folder, backend=backend, device=device, threshold=threshold, **options))

    @property
    def threshold(self) -> float:
        return self._opened.pipeline.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._opened.pipeline.threshold = validate.threshold(value)

    def __enter__(self) -> Pipeline:
        self._opened.pipeline.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._opened.pipeline.deactivate()

    def run(self, images: Any, threshold: Optional[float] = None) -> PipelineOutput:
        """A preprocessed batch (B, 3, R, R) float32 (numpy, or a torch tensor) -> numpy logits,
        answering stage, confidence."""
        validate.image_batch(images, self.manifest.preprocess.input_size)
        threshold = None if threshold is None else validate.threshold(threshold)
        pipeline = self._opened.pipeline
        pipeline.activate()
        return pipeline.run(self._batch(images), threshold)

    def _batch(self, images: Any) -> Any:
        """The batch in the runners' currency: a CUDA torch tensor on the GPU both TensorRT stages run
        on stays there (a device array over its memory: no copy); anything else becomes numpy."""
        if not isinstance(images, np.ndarray) and getattr(images, "is_cuda", False) is True:
            where = f"cuda:{images.device.index or 0}"
            pipeline = self._opened.pipeline
            if pipeline.takes_device_arrays and pipeline.stage1.device == pipeline.stage2.device == where:
                from sacvit_deploy.backends.device import wrap_torch

                return wrap_torch(images.detach())
        return as_host_batch(images)

    def preprocess(self, images: Iterable[Any]) -> np.ndarray:
        """Decode and preprocess images into one (B, 3, R, R) float32 numpy batch."""
        from sacvit_deploy.runtime.images import load_image, preprocess

        cfg = self.manifest.preprocess
        images = list(images)
        for i, img in enumerate(images):
            if isinstance(img, np.ndarray):
                validate.raw_image(img, i)
        return np.stack([preprocess(load_image(img), cfg) for img in images])

    def predict(
        self, images: Any, topk: int = 5, batch_size: int = 32, threshold: Optional[float] = None
    ) -> List[Prediction]:
        """Classify paths, PIL images or arrays (one or a sequence); returns one Prediction each."""
        topk, batch_size = validate.topk(topk), validate.batch_size(batch_size)
        items: Sequence[Any] = images if isinstance(images, (list, tuple)) else [images]
        preds: List[Prediction] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            out = self.run(self.preprocess(chunk), threshold)
            sources = [_label(x, start + i) for i, x in enumerate(chunk)]
            preds += to_predictions(out, sources, topk, self.class_names)
        return preds

    def predict_files(
        self,
        paths: Sequence[Union[str, Path]],
        topk: int = 5,
        batch_size: int = 32,
        workers: int = 2,
        threshold: Optional[float] = None,
        class_names: Optional[Sequence[str]] = None,
    ) -> Iterator[PredictedBatch]:
        """Stream image files batch by batch (decoded ahead on ``workers`` threads); a file that
        cannot be read is a Prediction with ``error``, and the run goes on."""
        topk, batch_size = validate.topk(topk), validate.batch_size(batch_size)
        workers = validate.workers(workers, minimum=1)
        threshold = None if threshold is None else validate.threshold(threshold)
        self._opened.pipeline.activate()
        names = class_names if class_names is not None else self.class_names
        yield from predict_files(
            self._opened.pipeline,
            paths,
            self.manifest.preprocess,
            topk,
            names,
            batch_size,
            workers,
            threshold,
        )


def _label(item: Any, index: int) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    return f"<{type(item).__name__} {index}>"
