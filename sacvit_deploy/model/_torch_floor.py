"""The oldest torch this package runs on, checked when ``sacvit_deploy.model`` is first imported.

2.3 is the oldest torch the floors CI job (scripts/floors_check.sh) installs and passes; JetPack 6.0's
NVIDIA wheel is 2.3. Every use of the model passes through this package, so an older torch gets one
line naming its version and the fix instead of a failure deep inside export or loading.
"""

from __future__ import annotations

import re
from typing import Optional

import torch

from sacvit_deploy.core.errors import SacvitError

TORCH_FLOOR = (2, 3)
_FLOOR = ".".join(map(str, TORCH_FLOOR))


def torch_problem(version: str) -> Optional[str]:
    """Why ``version`` of torch cannot run this package, or None."""
    # Major.minor only: NVIDIA's Jetson builds are pre-releases (2.3.0a0+...nv24.04) of the release they ship.
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None or (int(found.group(1)), int(found.group(2))) >= TORCH_FLOOR:
        return None
    return (
        f"torch {version} is older than sacvit-deploy supports; install torch>={_FLOOR} "
        f"(pip install 'torch>={_FLOOR}'; on Jetson, the NVIDIA torch wheel of JetPack 6 or later)"
    )


_problem = torch_problem(torch.__version__)
if _problem is not None:
    raise SacvitError(_problem)
