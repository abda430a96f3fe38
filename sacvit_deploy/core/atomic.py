"""The one way this tool writes a file: staged beside its target, fsynced, renamed into place.

Readers see the old file or the whole new one, never a half-written one. When the write fails for a
reason the user can fix (disk full, quota, read-only file system, permissions, a file-size limit),
the staged file is removed and one :class:`WriteError` names the path and the reason. Folders are
staged the same way by :mod:`sacvit_deploy.core.publish`, which translates its errors with
:func:`write_errors`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Iterator, Optional, Union

from sacvit_deploy.core.errors import SacvitError

# Write failures the user can fix, with what to do; anything else is a bug and keeps its traceback.
_REASONS = {
    errno.ENOSPC: "the disk is full; free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "permission denied; fix the permissions or write elsewhere",
    errno.EPERM: "operation not permitted; fix the permissions or write elsewhere",
    errno.EFBIG: "the file is larger than this file system or the file-size limit allows; write elsewhere",
}
if hasattr(errno, "EDQUOT"):
    _REASONS[errno.EDQUOT] = "the disk quota is exceeded; free some space or write elsewhere"

STAGED_MARK = ".partial-"  # staged files: .partial-<pid>-<name>


class WriteError(SacvitError):
    """A file or folder could not be written (disk full, read-only, permissions); nothing was left."""


def write_failure(path: Union[Path, str], exc: BaseException) -> Optional[WriteError]:
    """The one-line error for ``exc`` raised while writing ``path``, or None when it is not a write
    failure the user can fix."""
    if not isinstance(exc, OSError) or exc.errno not in _REASONS:
        return None
    return WriteError(f"{path}: cannot be written: {_REASONS[exc.errno]}; nothing was written there")


@contextlib.contextmanager
def write_errors(path: Union[Path, str]) -> Iterator[None]:
    """Turn a fixable write failure inside the block into one :class:`WriteError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        error = write_failure(path, exc)
        if error is None:
            raise
        raise error from None


def staged_name(path: Path) -> Path:
    """Where ``path`` is staged: beside it (one file system, so the rename is atomic), hidden, with
    the process id, and keeping the suffix (writers that check it, e.g. safetensors, still work)."""
    return path.with_name(f"{STAGED_MARK}{os.getpid()}-{path.name}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Union[Path, str], keep_mode: bool = False) -> Iterator[Path]:
    """Yield a staging path; write it fully inside the block; on success it is fsynced and renamed
    onto ``path``. On any failure the staged file is removed (a fixable one becomes a WriteError).

    ``keep_mode``: a replaced file keeps its permission bits (a manifest the user chmod'ed).
    """
    path = Path(path)
    tmp = staged_name(path)
    try:
        with write_errors(path):
            yield tmp
            if not tmp.exists():
                raise FileNotFoundError(errno.ENOENT, "the writer wrote nothing", str(tmp))
            if keep_mode and path.exists():
                os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
            _fsync(tmp)
            os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_bytes(path: Union[Path, str], data: bytes, keep_mode: bool = False) -> Path:
    with atomic_path(path, keep_mode) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: Union[Path, str], text: str, keep_mode: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), keep_mode)


def append_line(path: Union[Path, str], line: str) -> None:
    """Append one line (a log record) and fsync it. Not atomic by nature: a crash or a full disk may
    leave a torn last line, which readers of such logs must drop (training's resume does)."""
    with write_errors(path), open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())
