"""Output folders that commands fill atomically (``export/``, ``engines/``, a Triton model repository).

A folder may receive new output when it is new, empty, or holds only what a previous run of the same
command wrote there: the folder's index file (``manifest.json``, ``sacvit_triton.json``) lists what
it owns, and only that is replaced. Everything is written into a ``.staging-<pid>`` folder inside it
and moved in at the end, the index last, so a crash or a failed check never leaves a valid-looking
folder. Entries may be files or folders (a Triton repository's model folders).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import MANIFEST_NAME, Manifest

STAGING_PREFIX = ".staging-"


class FolderIndex(Protocol):
    """What :func:`publish` writes last: a manifest, or any index with a ``save(folder)``."""

    def save(self, folder: Path) -> Path: ...


def previous_artifacts(out: Path) -> set[str]:
    """Names an artifact folder's manifest owns (overwritable); empty when ``out`` has no manifest."""
    try:
        old = Manifest.load(out)
    except SacvitError:
        return set()
    return old.owned_files()


def prepare_output_folder(
    out: Path,
    error: type[SacvitError] = SacvitError,
    what: str = "export",
    owned: Callable[[Path], set[str]] = previous_artifacts,
) -> set[str]:
    """Check that ``out`` can receive output; returns the names of old entries to replace.

    ``owned(out)`` names the entries a previous run left (files or folders); anything else in ``out``
    makes it unusable. ``error`` is the exception type raised, ``what`` names the folder kind.
    """
    if out.exists() and not out.is_dir():
        raise error(f"{out}: exists and is not a folder; choose another --out")
    if not out.exists():
        try:
            out.mkdir(parents=True)
        except OSError as exc:
            raise error(
                f"{out}: cannot create the output folder ({exc.strerror}); choose another --out"
            ) from None
        return set()
    if not os.access(out, os.W_OK | os.X_OK):
        raise error(f"{out}: not writable; choose another --out or fix its permissions")
    previous = owned(out)
    others = sorted(
        p.name for p in out.iterdir() if p.name not in previous and not p.name.startswith(STAGING_PREFIX)
    )
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise error(
            f"{out}: holds other files ({shown}); {what} into an empty folder or a previous {what} folder (--out)"
        )
    return previous


@contextlib.contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A fresh ``out/.staging-<pid>`` folder, removed on exit whatever happens."""
    staging = out / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(
    staging: Path, out: Path, index: FolderIndex, previous: set[str], index_name: str = MANIFEST_NAME
) -> None:
    """Move the staged entries into ``out``, drop the stale ones, and write ``index`` last.

    The old index goes first, so a crash in between never leaves a valid-looking folder. A staged
    folder replaces an old one of the same name (moved aside into ``staging``, which the caller's
    :func:`staging_folder` removes).
    """
    (out / index_name).unlink(missing_ok=True)
    staged = sorted(p for p in staging.iterdir() if not p.name.startswith(STAGING_PREFIX))
    new_names = {p.name for p in staged}
    for p in staged:
        target = out / p.name
        if p.is_dir() and target.is_dir() and not target.is_symlink():
            os.replace(target, staging / f"{STAGING_PREFIX}old-{p.name}")
        os.replace(p, target)
    for stale in previous - new_names - {index_name}:
        _remove(out / stale)
    index.save(out)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
