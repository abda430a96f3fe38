"""Path options: every one declared as input or output (:class:`PathRole`), one output policy for
all commands, and the output files a command writes on request (--json)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Tuple,
    Union,
)

from typing_extensions import Annotated

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.fileinfo import is_within, resolved


# ---- path options: every one declared as input or output, one policy for all -------------------------
class PathRole:
    """Annotated metadata declaring what a command does with a path parameter (typer ignores it):

    ``INPUT`` a file or folder it reads; ``ARTIFACTS`` an artifact folder it reads (no output may go
    into it); ``OUTPUT_FILE`` / ``OUTPUT_FOLDER`` what it writes; ``CACHE_FILE`` a file it reads if
    present and rewrites (checked as an output, but may be itself).
    """

    def __init__(
        self, kind: str, default: Optional[Callable[[Dict[str, Any]], Optional[Path]]] = None
    ) -> None:
        self.kind = kind
        # The folder used when the option is not given (artifacts), from the command's arguments.
        self.default = default

    def __repr__(self) -> str:
        return f"PathRole({self.kind})"


INPUT = PathRole("input")
ARTIFACTS = PathRole("artifacts")
OUTPUT_FILE = PathRole("output file")
OUTPUT_FOLDER = PathRole("output folder")
CACHE_FILE = PathRole("cache file")


def _default_artifacts(arguments: Dict[str, Any]) -> Optional[Path]:
    """./export (or the one folder there is), unless the run is remote: ``--triton`` reads no local
    artifact folder, so outputs may go anywhere the other rules allow."""
    from sacvit_deploy.runtime.loader import default_artifacts

    if arguments.get("triton"):
        return None
    try:
        return Path(default_artifacts())
    except SacvitError:
        return None


RUN_ARTIFACTS = PathRole("artifacts", default=_default_artifacts)


def _is_path_type(tp: Any) -> bool:
    import typing_extensions as typing  # Annotated-aware hints on Python 3.8 too (typer needs it)

    if tp is Path:
        return True
    return any(_is_path_type(a) for a in typing.get_args(tp) if a is not type(None))


def path_roles(fn: Callable[..., Any]) -> Dict[str, Tuple[PathRole, str]]:
    """parameter -> (role, option as typed) for every path parameter of command ``fn``. A path
    parameter without a role is a bug of the command, raised when it is defined."""
    import inspect

    import typing_extensions as typing  # Annotated-aware hints on Python 3.8 too (typer needs it)

    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation this Python cannot evaluate: tests/test_mechanisms.py checks
        return {}
    roles: Dict[str, Tuple[PathRole, str]] = {}
    for name in inspect.signature(fn).parameters:
        hint = hints.get(name)
        if typing.get_origin(hint) is not Annotated:
            continue
        base, *meta = typing.get_args(hint)
        if not _is_path_type(base):
            continue
        role = next((m for m in meta if isinstance(m, PathRole)), None)
        if role is None:
            raise TypeError(
                f"command {fn.__name__}: parameter {name} is a path; declare it INPUT, ARTIFACTS, "
                "OUTPUT_FILE, OUTPUT_FOLDER or CACHE_FILE (cli/_paths.py) in its Annotated[...]"
            )
        roles[name] = (role, option_name(name, list(meta)))
    return roles


def _paths(value: Any) -> List[Path]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [Path(v) for v in value if v is not None]
    text = str(value)
    if text.startswith(("http://", "https://", "grpc://")) or text == "-":
        return []
    return [Path(value)]


def check_paths(
    fn: Callable[..., Any], roles: Dict[str, Tuple[PathRole, str]], args: tuple, kwargs: dict
) -> None:
    """The output policy, for every declared output of a command, before it does any work: an output
    is never one of the inputs, never inside an artifact folder it reads (nor one of its files), never
    another output; a file's folder, and the nearest existing folder of an output folder, must be
    a folder it can write in."""
    if not roles:
        return
    import inspect

    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    bound.apply_defaults()
    inputs: List[Path] = []
    artifacts: List[Path] = []
    outputs: List[Tuple[Path, str, PathRole]] = []
    given = {name: _paths(bound.arguments.get(name)) for name in roles}
    if not any(given[name] for name, (role, _) in roles.items() if role.kind not in ("input", "artifacts")):
        return  # nothing written: no default folder to look up
    for name, (role, option) in roles.items():
        value = given[name]
        if not value and role.default is not None:
            default = role.default(bound.arguments)
            value = [] if default is None else [default]
        if role.kind in ("input", "artifacts"):
            inputs += value
            if role.kind == "artifacts":
                artifacts += value
        else:
            outputs += [(p, option, role) for p in value]
    seen: Dict[Path, str] = {}
    for path, option, role in outputs:
        target = resolved(path)
        if target in seen:
            raise SacvitError(f"{option} {path}: is also {seen[target]}; give each output its own path")
        seen[target] = f"{option} {path}"
        if role.kind == "output folder":
            check_output_folder(path, option, inputs, artifacts)
        else:
            for folder in artifacts or [None]:
                check_output(path, option, inputs, folder, self_ok=role.kind == "cache file")
            _not_a_file_of_an_input_folder(path, option, target, inputs)


def _not_a_file_of_an_input_folder(path: Path, option: str, target: Path, inputs: List[Path]) -> None:
    """An existing file inside a folder the command reads (calibration images, data) is an input
    too, even when it is not one the command will pick (a PNG that is not decodable)."""
    if not os.path.lexists(target):
        return
    for item in inputs:
        folder = resolved(item)
        if folder in target.parents and folder.is_dir():
            raise SacvitError(
                f"{option} {path}: is one of the inputs (it lies in the input folder {item}); writing "
                "it would destroy it; write elsewhere"
            )


def check_output_folder(
    path: Path, option: str, inputs: Iterable[Path] = (), artifacts: Iterable[Path] = ()
) -> Path:
    """Refuse, before any work, an output folder that is a file, is or lies inside one of the inputs
    (an artifact folder, the data), or whose nearest existing folder cannot be written in."""
    shown = f"{option} {path}"
    try:
        if path.exists() and not path.is_dir():
            raise SacvitError(
                f"{shown}: exists and is not a folder; give a folder (it is created if missing)"
            )
    except PermissionError:
        raise SacvitError(
            f"{shown}: cannot look into its parent folder (permission denied); pick another"
        ) from None
    target = resolved(path)
    for item in inputs:
        source = resolved(item)
        if source.is_file():
            continue  # a file: the output folder cannot lie in it (the walk below names that)
        if is_within(target, source):
            what = "the artifact folder" if Path(item) in list(artifacts) else "the input"
            raise SacvitError(
                f"{shown}: is inside {what} {item}, which it would change; write elsewhere"
                if target != source
                else f"{shown}: is {what} {item}; writing there would replace what it reads; write elsewhere"
            )
    existing = target
    while True:
        try:
            if existing.exists():
                break
        except PermissionError:
            raise SacvitError(
                f"{shown}: cannot look into {existing.parent} (permission denied); pick another folder"
            ) from None
        if existing == existing.parent:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise SacvitError(f"{shown}: {existing} is a file, not a folder; pick another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SacvitError(
            f"{shown}: cannot create or write in {existing}; pick another folder or fix its permissions"
        )
    return path


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """A JSON report the user asked for (--json FILE); an unwritable path is a one-line error."""
    import json

    from sacvit_deploy.core.atomic import write_text

    write_text(path, json.dumps(data, indent=2) + "\n")  # a full disk or a read-only folder: one line


def check_output(
    path: Path,
    option: str,
    inputs: Iterable[Path] = (),
    artifacts: Optional[Union[Path, str]] = None,
    self_ok: bool = False,
) -> Path:
    """Refuse, before any work, an output file that would destroy an input or cannot be written.

    ``path`` must not resolve to (or be a hard link of) one of ``inputs``, must not lie in the
    artifact folder being used (its manifest, graphs, engines), must not be a folder, and its folder
    must exist and be writable.
    """
    shown = f"{option} {path}"
    try:
        if path.is_dir():
            raise SacvitError(f"{shown}: is a folder; give a file name, e.g. {path / 'results.out'}")
    except PermissionError:
        raise SacvitError(
            f"{shown}: cannot look into its folder (permission denied); pick another path"
        ) from None
    target = resolved(path)
    if artifacts is not None and not str(artifacts).startswith(("http://", "https://", "grpc://")):
        folder = resolved(Path(artifacts))
        if target == folder or (folder in target.parents and _is_artifact(folder, target)):
            raise SacvitError(
                f"{shown}: is a file of the artifact folder {artifacts}, which it would damage; write elsewhere"
            )
        if folder in target.parents:  # a stranger in the folder: the next export into it refuses it
            raise SacvitError(
                f"{shown}: inside the artifact folder {artifacts}, where a later export or build-engine "
                "would refuse a file it did not write; write it elsewhere (e.g. the current folder)"
            )
    for item in inputs:
        if self_ok and resolved(item) == target:
            continue
        if _same_file(path, target, Path(item)):
            raise SacvitError(f"{shown}: is one of the inputs ({item}); writing it would destroy it")
    parent = target.parent
    if not parent.is_dir():
        raise SacvitError(
            f"{shown}: the folder {parent} does not exist; create it first or pick another path"
        )
    if path.exists():
        if not os.access(path, os.W_OK):
            raise SacvitError(f"{shown}: not writable; pick another path or fix its permissions")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise SacvitError(
            f"{shown}: cannot create files in {parent}; pick another path or fix its permissions"
        )
    return path


def check_manifest_writable(path: Path) -> None:
    """``calibrate --write`` changes a manifest in place: refuse, before any work, one that is
    read-only (or not ours to rewrite), rather than replacing it with a file of another mode/owner."""
    if not path.is_file():
        return  # the artifact folder's own check names the problem
    st = path.stat()
    if not os.access(path, os.W_OK) or not st.st_mode & 0o222:  # mode bits: root can write anything
        raise SacvitError(
            f"{path}: read-only; make it writable (chmod u+w) to store the threshold, or drop --write"
        )
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid() and os.geteuid() != 0:
        raise SacvitError(
            f"{path}: owned by another user; rewriting it would change its owner; ask its owner to run --write"
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise SacvitError(f"{path.parent}: not writable (the manifest is replaced atomically); drop --write")


def _is_artifact(folder: Path, target: Path) -> bool:
    """A file the artifact folder holds or may hold: its manifest, anything the manifest lists, a
    name of this tool's artifact scheme (graphs, engines, weights, caches), anything in a subfolder."""
    from sacvit_deploy.core.manifest import MANIFEST_NAME, Manifest
    from sacvit_deploy.core.publish import ARTIFACT_NAME

    if target.parent != folder:
        return True
    if target.name == MANIFEST_NAME or ARTIFACT_NAME.match(target.name):
        return True
    try:
        return target.name in Manifest.load(folder).owned_files()
    except SacvitError:
        return False


def _same_file(path: Path, target: Path, other: Path) -> bool:
    if resolved(other) == target:
        return True
    try:
        return os.path.samefile(path, other)  # hard links too
    except OSError:
        return False


def option_name(name: str, meta: List[Any]) -> str:
    from typer.models import ArgumentInfo, ParameterInfo

    info = next((m for m in meta if isinstance(m, ParameterInfo)), None)
    if isinstance(info, ArgumentInfo):
        return name.upper()
    # Annotated style: typer.Option("--out") holds "--out" as its default until typer moves it.
    default = getattr(info, "default", None)
    names = [default] if isinstance(default, str) else []
    decls = [d for d in [*names, *(getattr(info, "param_decls", None) or ())] if d.startswith("--")]
    return decls[0] if decls else "--" + name.replace("_", "-")
