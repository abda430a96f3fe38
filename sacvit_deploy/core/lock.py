"""One run-folder lock for every long writer (``train --out``): a second run into the same folder is
refused while the first holds it; a lock left by a dead process is taken over, with a line.

The lock is ``FOLDER/.sacvit-lock`` holding the owner's pid and host. On POSIX it is also an
``flock`` held for the whole run, so the kernel releases it when the process dies however it dies
(kill -9 included); the pid in the file only names the holder in the error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from sacvit_deploy.core.errors import SacvitError

LOCK_NAME = ".sacvit-lock"


class FolderBusyError(SacvitError):
    """Another live process writes into this folder."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return "another process"
    return f"process {text[0]}" + (f" on {text[1]}" if len(text) > 1 else "") if text else "another process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(
    folder: Union[Path, str], what: str = "run", note: Optional[Callable[[str], None]] = None
) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block (the folder must exist). Raises FolderBusyError, one line
    naming the folder and the holder, when a live process holds it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the pid file alone decides
            fcntl = None  # type: ignore[assignment]
        stale = _holder(path) if os.fstat(fd).st_size else None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise FolderBusyError(
                    f"{folder}: another {what} is writing here ({_holder(path)}); wait for it to end or "
                    "pick another --out"
                ) from None
        elif stale is not None:
            words = stale.split()
            if len(words) > 1 and words[1].isdigit() and _alive(int(words[1])):
                raise FolderBusyError(
                    f"{folder}: another {what} is writing here ({stale}); wait for it to end or pick another --out"
                )
        if stale is not None and note is not None:
            note(f"{folder}: took over the lock of an earlier {what} ({stale}), which is no longer running")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # an empty lock file: nobody holds it, nothing stale to report
    finally:
        os.close(fd)
