"""Artifact folders (``export/``, ``engines/``): checked before writing, filled atomically.

Shared by ``export`` and ``build-engine``. A folder may receive artifacts when it is new, empty, or a
previous artifact folder (its manifest lists what it owns, and only that is replaced). Files are
written into a ``.staging-<pid>`` folder inside it and moved in at the end, the manifest last, so a
crash or a failed verification never leaves a valid-looking folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from sacvit_deploy.errors import SacvitError
from sacvit_deploy.export.manifest import MANIFEST_NAME, Manifest

STAGING_PREFIX = ".staging-"


def previous_artifacts(out: Path) -> set[str]:
    """Files a previous run wrote into ``out`` (overwritable); anything else makes ``out`` unusable."""
    try:
        old = Manifest.load(out)
    except SacvitError:
        return set()
    return old.owned_files()


def prepare_output_folder(
    out: Path, error: type[SacvitError] = SacvitError, what: str = "export"
) -> set[str]:
    """Check ``out`` can receive artifacts; returns the names of old artifacts to replace.

    ``error`` is the exception type to raise, ``what`` names the folder kind in messages.
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
    previous = previous_artifacts(out)
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


def publish(staging: Path, out: Path, manifest: Manifest, previous: set[str]) -> None:
    """Move the staged files into ``out``; the manifest goes last, so a crash never leaves a valid-looking folder."""
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    new_names = {p.name for p in staging.iterdir()}
    for p in staging.iterdir():
        os.replace(p, out / p.name)
    for stale in previous - new_names - {MANIFEST_NAME}:
        (out / stale).unlink(missing_ok=True)
    manifest.save(out)
