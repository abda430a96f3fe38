"""What a path that is not a plain file is, in words: link loops, broken links, FIFOs, devices.

``open()`` on a FIFO blocks forever and a link loop reads as "no such file"; commands name these
for what they are instead. Also :func:`resolved`, the one way paths are compared ("is this output
one of the inputs?").
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Optional, Union


def not_a_regular_file(path: Union[Path, str]) -> Optional[str]:
    """Why ``path`` is not a readable regular file (a phrase for "PATH: <phrase>"), or None if it is one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (
            "a broken symbolic link (its target does not exist)" if os.path.islink(path) else "no such file"
        )
    except PermissionError:
        return "permission denied; make it readable"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop (the link points back to itself)"
        return f"cannot be read ({exc.strerror or exc})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a file; reading it would wait for a writer"
    if stat.S_ISSOCK(mode):
        return "a socket, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a file"
    return "not a regular file"


def resolved(path: Union[Path, str]) -> Path:
    """``path`` made absolute (``~`` expanded) with its links followed; a link loop gives the plain
    absolute path."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def is_within(path: Union[Path, str], folder: Union[Path, str]) -> bool:
    """``path`` is ``folder`` or lies inside it, links followed (:func:`resolved`): where an output
    would change what a command reads."""
    target, root = resolved(path), resolved(folder)
    return target == root or root in target.parents
