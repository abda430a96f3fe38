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
import re
import shutil
import stat
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Type, Union

from sacvit_deploy.core.atomic import write_errors
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import MANIFEST_NAME, Manifest, sha256_file

STAGING_PREFIX = ".staging-"


class FolderIndex(Protocol):
    """What :func:`publish` writes last: a manifest, or any index with a ``save(folder)``."""

    def save(self, folder: Path) -> Path: ...


# What an export or engine folder may hold: the names this tool gives its artifacts. A manifest that
# lists anything else (``thesis.tex`` as "external data") owns nothing by that entry.
ARTIFACT_NAME = re.compile(
    r"^(?:[a-z0-9_]+\.onnx(?:\.data)?|[a-z0-9_]+\.engine|[a-z0-9_]+\.calib|model\.safetensors)$"
)


def previous_artifacts(out: Path) -> Dict[str, Optional[str]]:
    """The entries of ``out`` a previous export or build wrote, by name -> sha256 (None for the
    manifest itself); empty when ``out`` has no readable manifest. Only names of this tool's naming
    scheme count (see :func:`owned_entry_problem` for the checks before one is replaced)."""
    try:
        old = Manifest.load(out)
    except SacvitError:
        return {}
    owned: Dict[str, Optional[str]] = {MANIFEST_NAME: None}
    entries = [*old.graphs.values(), *old.engines.values(), *([old.weights] if old.weights else [])]
    for entry in entries:
        owned[entry.file] = entry.sha256
        if entry.external_data:
            owned[entry.external_data] = entry.external_sha256
    if old.tensorrt is not None:
        for role in old.engines:
            cache = old.tensorrt.calibration_cache(role)
            if isinstance(cache.get("file"), str) and isinstance(cache.get("sha256"), str):
                owned[cache["file"]] = cache["sha256"]
    return {
        name: sha
        for name, sha in owned.items()
        if name == MANIFEST_NAME or (ARTIFACT_NAME.match(name) and isinstance(sha, str))
    }


def owned_entry_problem(
    folder: Path, name: str, sha256: Optional[Union[str, Dict[str, str]]]
) -> Optional[str]:
    """Why ``folder/name`` may not be replaced or deleted, or None when this tool provably wrote it.

    ``sha256`` is what was recorded when it was written: a file's digest (None: the folder's index
    file, checked by parsing it), or for a folder the digest of every file under it by relative path;
    the folder must hold exactly those files, each matching.
    """
    path = folder / name
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if isinstance(sha256, dict):
        if not stat.S_ISDIR(st.st_mode):
            return "is not the folder this tool wrote"
        return _folder_problem(path, sha256)
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a folder or a link); this tool only ever wrote a file there"
    if sha256 is None:  # the index file itself: the owned() callable read and parsed it
        return None
    if not isinstance(sha256, str) or sha256_file(path) != sha256:
        return "does not match the sha256 recorded when it was written (changed, or not written by sacvit-deploy)"
    return None


def _folder_problem(path: Path, files: Dict[str, str]) -> Optional[str]:
    found = 0
    for root, dirs, names in os.walk(path):
        for d in dirs:
            if (Path(root) / d).is_symlink():
                return f"holds a link {Path(root, d).relative_to(path)} this tool did not write"
        for n in names:
            rel = (Path(root) / n).relative_to(path).as_posix()
            expected = files.get(f"{path.name}/{rel}")
            if expected is None:
                return f"holds {rel}, which this tool did not write"
            problem = owned_entry_problem(Path(root), n, expected)
            if problem is not None:
                return f"{rel} {problem}"
            found += 1
    return None if found else "is a folder this tool did not write (it holds none of the recorded files)"


def prepare_output_folder(
    out: Path,
    error: Type[SacvitError] = SacvitError,
    what: str = "export",
    owned: Callable[[Path], Mapping[str, Optional[Union[str, Dict[str, str]]]]] = previous_artifacts,
) -> Dict[str, Optional[Union[str, Dict[str, str]]]]:
    """Check that ``out`` can receive output; returns the old entries that may be replaced.

    ``owned(out)`` names the entries a previous run left (files or folders) with the sha256 recorded
    when they were written; each is checked (:func:`owned_entry_problem`) and anything else in
    ``out`` makes it unusable, the error naming it. A folder this creates and cannot fill is removed
    again by :func:`staging_folder`.
    """
    if out.is_symlink() and not out.exists():
        raise error(f"{out}: a broken link; choose another --out")
    if out.exists() and not out.is_dir():
        raise error(f"{out}: exists and is not a folder; choose another --out")
    if not out.exists():
        created = []
        for p in [out, *out.parents]:
            if p.exists():
                break
            created.append(p)
        try:
            out.mkdir(parents=True)
        except OSError as exc:
            raise error(
                f"{out}: cannot create the output folder ({exc.strerror}); choose another --out"
            ) from None
        _CREATED[out] = created
        return {}
    if not os.access(out, os.W_OK | os.X_OK):
        raise error(f"{out}: not writable; choose another --out or fix its permissions")
    previous = dict(owned(out))
    for name, sha in sorted(previous.items()):
        problem = owned_entry_problem(out, name, sha)
        if problem is not None:
            raise error(f"{out / name}: {problem}; move it away, or {what} into an empty folder (--out)")
    others = sorted(
        p.name for p in out.iterdir() if p.name not in previous and not p.name.startswith(STAGING_PREFIX)
    )
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise error(
            f"{out}: holds other files ({shown}); {what} into an empty folder or a previous {what} folder (--out)"
        )
    return previous


# Folders prepare_output_folder created (out and missing parents), removed again if nothing lands.
_CREATED: Dict[Path, List[Path]] = {}


@contextlib.contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A fresh ``out/.staging-<pid>`` folder, removed on exit whatever happens. A full disk, a
    read-only file system or a permission error inside the block becomes one WriteError naming
    ``out`` (core.atomic), with nothing left behind."""
    staging = out / f"{STAGING_PREFIX}{os.getpid()}"
    published = False
    try:
        with write_errors(out):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            yield staging
        published = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        created = _CREATED.pop(out, [])
        if not published:
            # A failed first export into a new folder leaves no empty folder behind.
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty: never a folder with anything in it


def publish(
    staging: Path,
    out: Path,
    index: FolderIndex,
    previous: Mapping[str, Optional[Union[str, Dict[str, str]]]],
    index_name: str = MANIFEST_NAME,
) -> None:
    """Move the staged entries into ``out``, drop the stale ones, and write ``index`` last.

    The old index goes first, so a crash in between never leaves a valid-looking folder. A staged
    folder replaces an old one of the same name (moved aside into ``staging``, which the caller's
    :func:`staging_folder` removes).
    """
    staged = sorted(p for p in staging.iterdir() if not p.name.startswith(STAGING_PREFIX))
    new_names = {p.name for p in staged}
    # Checked again now (the slow work in between leaves time for changes): only what this tool
    # provably wrote is replaced or deleted; anything else stops the publish, nothing moved yet.
    for p in staged:
        target = out / p.name
        if not os.path.lexists(target):
            continue
        if p.name not in previous:
            raise SacvitError(f"{target}: appeared while the output was staged; move it away and re-run")
    for name, sha in previous.items():
        problem = owned_entry_problem(out, name, sha)
        if problem is not None:
            raise SacvitError(f"{out / name}: {problem}; move it away and re-run")
    (out / index_name).unlink(missing_ok=True)
    for p in staged:
        target = out / p.name
        if p.is_dir() and target.is_dir() and not target.is_symlink():
            os.replace(target, staging / f"{STAGING_PREFIX}old-{p.name}")
        os.replace(p, target)
    for stale in sorted(set(previous) - new_names - {index_name}):
        path = out / stale
        if path.is_dir() and not path.is_symlink():
            # A folder of this tool's files only (checked above): moved aside, removed with staging.
            os.replace(path, staging / f"{STAGING_PREFIX}old-{stale}")
        else:
            path.unlink(missing_ok=True)
    index.save(out)
