"""Files shipped inside the package (``data/``, the Triton model sources), as paths.

``importlib.resources.files`` is Python 3.9+; the package installs as plain files (setuptools, no
zip), so a path from this module's own location serves every supported Python.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def package_path(*parts: str) -> Path:
    """``package_path("data", "samples")`` -> that folder inside the installed sacvit_deploy."""
    return PACKAGE_ROOT.joinpath(*parts)
