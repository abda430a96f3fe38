"""Real images for engine builds (INT8 calibration, the parity check) and the INT8 entropy calibrator.

INT8 with a calibrator exists up to TensorRT 10.x (deprecated since 10.1, removed in 11.0, where INT8
means Q/DQ nodes in the ONNX graph). The calibrator feeds TensorRT batches of what each engine sees:
stage 1 the preprocessed images, stage 2 the images plus stage 1's outputs on them (computed by the
reference runner). TensorRT writes the resulting scales to a calibration cache file, kept in the
engines folder; a later build reuses it only when the graph and the images are the same.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sacvit_deploy.core.errors import SacvitError

DEFAULT_PARITY_IMAGES = 32
CALIBRATION_SUFFIX = ".calib"
_log = logging.getLogger(__name__)


class ImagesError(SacvitError):
    """No usable images for calibration or the parity check."""


def load_images(
    folder: Path | None,
    preprocess_cfg: Any,
    limit: int | None = None,
) -> tuple[np.ndarray, str]:
    """Preprocessed images (N, 3, R, R) float32 from ``folder``, or the bundled samples; and where from.

    Unreadable files are skipped (logged as warnings). Raises :class:`ImagesError` when none loads.
    """
    from sacvit_deploy.runtime.image_folder import load_image_folder

    loaded = load_image_folder(folder, preprocess_cfg, limit, on_skip=lambda m: _log.warning("skipped %s", m))
    if not loaded.paths:
        raise ImagesError(f"{loaded.source}: no image could be loaded; pass a folder of JPEG/PNG images")
    return loaded.images, loaded.describe()


def fingerprint(arrays: Sequence[np.ndarray]) -> str:
    """sha256 of the preprocessed calibration data: a cache is reused only for the same images."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def calibration_batches(feeds: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Split whole-dataset feeds into full batches (TensorRT calibrates on fixed-size batches)."""
    n = next(iter(feeds.values())).shape[0]
    return [
        {name: np.ascontiguousarray(a[start : start + batch_size]) for name, a in feeds.items()}
        for start in range(0, n - batch_size + 1, batch_size)
    ]


class _DeviceFeed:
    """Device copies of one calibration batch, kept alive until the next batch (TensorRT holds the pointers)."""

    def __init__(self, buffers: str) -> None:
        self.buffers = buffers
        self._held: list[Any] = []
        self._context: Any = None

    def upload(self, arrays: dict[str, np.ndarray], names: Sequence[str]) -> list[int]:
        self.free()
        if self.buffers == "pycuda":
            import pycuda.driver as cuda

            if self._context is None:
                # TensorRT uses the CUDA runtime, i.e. the device's primary context.
                cuda.init()
                self._context = cuda.Device(0).retain_primary_context()
                self._context.push()
            pointers = []
            for name in names:
                allocation = cuda.mem_alloc(arrays[name].nbytes)
                cuda.memcpy_htod(allocation, arrays[name])
                self._held.append(allocation)
                pointers.append(int(allocation))
            return pointers
        import torch

        tensors = [torch.from_numpy(arrays[name]).to("cuda") for name in names]
        torch.cuda.synchronize()
        self._held = tensors
        return [int(t.data_ptr()) for t in tensors]

    def free(self) -> None:
        for item in self._held:
            if hasattr(item, "free"):
                item.free()
        self._held = []

    def close(self) -> None:
        self.free()
        if self._context is not None:
            self._context.pop()
            self._context = None


def make_entropy_calibrator(
    trt: Any,
    batches: list[dict[str, np.ndarray]],
    cache_out: Path,
    cache_in: bytes | None = None,
    buffers: str = "torch",
) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches``; the cache is written to ``cache_out``.

    ``cache_in``: a previous calibration cache for the same graph and images (calibration is skipped).
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 needs the base initialised explicitly
            self.batches = batches
            self.index = 0
            self.feed = _DeviceFeed(buffers)
            self.cache_out = cache_out
            self.cache_in = cache_in
            self.batch_size = next(iter(batches[0].values())).shape[0] if batches else 1

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names: list[str], *_: Any) -> list[int] | None:
            if self.index >= len(self.batches):
                self.feed.close()
                return None
            batch = self.batches[self.index]
            self.index += 1
            return self.feed.upload(batch, names)

        def read_calibration_cache(self) -> bytes | None:
            return self.cache_in or None

        def write_calibration_cache(self, cache: Any) -> None:
            self.cache_out.write_bytes(bytes(cache))

    return EntropyCalibrator()
