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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sacvit_deploy.core.errors import SacvitError

DEFAULT_PARITY_IMAGES = 32
CALIBRATION_SUFFIX = ".calib"
_log = logging.getLogger(__name__)


class ImagesError(SacvitError):
    """No usable images for calibration or the parity check."""


def load_images(
    folder: Optional[Path],
    preprocess_cfg: Any,
    limit: Optional[int] = None,
) -> Tuple[np.ndarray, str]:
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


def calibration_batches(feeds: Dict[str, np.ndarray], batch_size: int) -> List[Dict[str, np.ndarray]]:
    """Split whole-dataset feeds into full batches (TensorRT calibrates on fixed-size batches)."""
    n = next(iter(feeds.values())).shape[0]
    return [
        {name: np.ascontiguousarray(a[start : start + batch_size]) for name, a in feeds.items()}
        for start in range(0, n - batch_size + 1, batch_size)
    ]


class _DeviceFeed:
    """Device copies of one calibration batch, kept alive until the next batch (TensorRT holds the pointers).

    Through :mod:`sacvit_deploy.backends.device` (cuda-python, pycuda or torch, as ``buffers`` says).
    """

    def __init__(self, buffers: str) -> None:
        self.buffers = buffers
        self._held: List[Any] = []
        self._memory: Any = None

    def upload(self, arrays: Dict[str, np.ndarray], names: Sequence[str]) -> List[int]:
        from sacvit_deploy.backends.device import open_memory

        self.free()
        if self._memory is None:
            self._memory = open_memory(self.buffers, 0)
        self._held = [self._memory.from_host(arrays[name]) for name in names]
        self._memory.synchronize()  # TensorRT reads them on its own stream once get_batch returns
        return [a.ptr for a in self._held]

    def free(self) -> None:
        self._held = []  # back to the memory's pool, reused by the next batch

    def close(self) -> None:
        self.free()
        if self._memory is not None:
            self._memory.close()
            self._memory = None


def make_entropy_calibrator(
    trt: Any,
    batches: List[Dict[str, np.ndarray]],
    cache_out: Path,
    cache_in: Optional[bytes] = None,
    buffers: str = "auto",
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

        def get_batch(self, names: List[str], *_: Any) -> Optional[List[int]]:
            if self.index >= len(self.batches):
                self.feed.close()
                return None
            batch = self.batches[self.index]
            self.index += 1
            return self.feed.upload(batch, names)

        def read_calibration_cache(self) -> Optional[bytes]:
            return self.cache_in or None

        def write_calibration_cache(self, cache: Any) -> None:
            self.cache_out.write_bytes(bytes(cache))

    return EntropyCalibrator()
