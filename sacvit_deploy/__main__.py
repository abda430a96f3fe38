"""``python -m sacvit_deploy`` and the ``sacvit-deploy`` console script.

Kept free of heavy imports: Ctrl-C (or SIGTERM) while typer, torch or onnx are still importing
ends the program with "interrupted" and exit code 130, not a traceback.
"""

from __future__ import annotations

import signal
import sys


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM is handled like Ctrl-C everywhere
    try:
        from sacvit_deploy.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
