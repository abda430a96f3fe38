"""Open an artifact folder as a ready-to-run EarlyExitPipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

from sacvit_deploy.backends.base import Runner
from sacvit_deploy.backends.factory import BackendChoice, choose_backend, make_runner
from sacvit_deploy.core.manifest import MANIFEST_NAME, Manifest
from sacvit_deploy.runtime.pipeline import DEFAULT_BUCKETS, EarlyExitPipeline

DEFAULT_EXPORT_DIR = Path("export")
DEFAULT_ENGINE_DIR = Path("engines")


def default_artifacts() -> Path:
    """``engines/`` when it holds engines, else ``export/`` (both in the working directory)."""
    if (DEFAULT_ENGINE_DIR / MANIFEST_NAME).is_file():
        try:
            if Manifest.load(DEFAULT_ENGINE_DIR).engines:
                return DEFAULT_ENGINE_DIR
        except Exception:  # a broken engines/ folder is reported when it is used explicitly
            pass
    return DEFAULT_EXPORT_DIR


@dataclass
class OpenedPipeline:
    pipeline: EarlyExitPipeline
    manifest: Manifest
    folder: Path
    choice: BackendChoice

    def baseline_runner(self, **options: Any) -> Runner:
        return make_runner(self.folder, self.manifest, "baseline", self.choice, **options)


def open_pipeline(
    folder: Optional[Union[str, Path]] = None,
    backend: str = "auto",
    device: Optional[str] = None,
    provider: Optional[str] = None,
    threshold: Optional[float] = None,
    buckets: Optional[Tuple[int, ...]] = None,
    **options: Any,
) -> OpenedPipeline:
    folder = Path(folder) if folder is not None else default_artifacts()
    manifest = Manifest.load(folder)
    choice = choose_backend(manifest, backend, device, provider)
    stage1 = make_runner(folder, manifest, "stage1", choice, **options)
    stage2 = make_runner(folder, manifest, "stage2", choice, **options)
    if buckets is None and choice.provider == "tensorrt":
        # ONNX Runtime's TensorRT provider builds an engine per new shape: keep the shapes few.
        buckets = DEFAULT_BUCKETS
    th = manifest.exit_threshold if threshold is None else threshold
    return OpenedPipeline(EarlyExitPipeline(stage1, stage2, th, buckets), manifest, folder, choice)
