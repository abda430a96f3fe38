"""TensorRT's own log, through ours: never raw to the terminal.

TensorRT writes through an ``ILogger`` the caller gives it; ``trt.Logger`` prints to stderr, unescaped
and beside our one-line errors. This logger keeps errors (the caller puts them into its own message)
and sends each distinct warning once to a Python logger, which the CLI prints as an escaped
``warning:`` line. The builder (engine/build.py) and the runner (tensorrt_backend.py) both use it.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Set

_log = logging.getLogger(__name__)


def make_logger(trt: Any, log: Optional[logging.Logger] = None) -> Any:
    """A TensorRT logger that keeps errors (``.errors``) and logs each warning once to ``log``."""
    target = log or _log
    severity = trt.ILogger.Severity
    errors = {severity.ERROR, severity.INTERNAL_ERROR}

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind11 needs the base initialised explicitly
            self.errors: List[str] = []
            self.seen: Set[str] = set()

        def log(self, level: Any, msg: str) -> None:
            text = str(msg)
            if level in errors:
                self.errors.append(text)
            elif level == severity.WARNING and text not in self.seen:
                self.seen.add(text)
                target.warning("TensorRT: %s", text)

    return Logger()
