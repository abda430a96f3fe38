"""The repository index, ``sacvit_triton.json``: what `sacvit-deploy triton` wrote into a model
repository, read by re-runs (replace only this), ``triton --check`` and ``infer --triton``.

Its own module so that writing (:mod:`.repository`) and checking (:mod:`.validate`) a repository
both depend on it without depending on each other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Set, Union

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.validate import parse_json
from sacvit_deploy.core.version import __version__

INDEX_NAME = "sacvit_triton.json"
INDEX_SCHEMA = "sacvit-deploy/triton-repository"
MODEL_SCHEMA = "sacvit-deploy/triton-model"
CLIENT_SCHEMA = "sacvit-deploy/triton-client"
SCHEMA_VERSION = 1
MODEL_JSON = "sacvit_deploy.json"  # the name bls_model.py reads
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,100}$")


class RepositoryError(SacvitError):
    """A Triton repository that cannot be written or does not check out."""


@dataclass
class RepositoryIndex:
    """``sacvit_triton.json``: what a run wrote, for re-runs (replace only this) and ``--check``."""

    name: str
    backend: str
    models: Dict[str, str]  # role (bls, stage1, stage2) -> model folder
    files: Dict[str, str]  # path relative to the repository -> sha256
    source: Dict[str, Any] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)
    created: str = ""
    package_version: str = __version__

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema": INDEX_SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "package_version": self.package_version,
            "name": self.name,
            "backend": self.backend,
            "models": self.models,
            "files": self.files,
            "source": self.source,
            "options": self.options,
        }

    def save(self, folder: Path) -> Path:
        from sacvit_deploy.core.atomic import write_text

        return write_text(Path(folder) / INDEX_NAME, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Union[str, Path]) -> RepositoryIndex:
        path = Path(folder) / INDEX_NAME
        if not path.is_file():
            raise RepositoryError(
                f"{folder}: no {INDEX_NAME}; not a repository written by `sacvit-deploy triton` (write one with it)"
            )
        try:
            d = parse_json(path.read_text(encoding="utf-8"))
            if d.get("schema") != INDEX_SCHEMA:
                raise ValueError(f"schema {d.get('schema')!r}")
            if int(d.get("schema_version", 0)) > SCHEMA_VERSION:
                raise RepositoryError(f"{path}: written by a newer sacvit-deploy; upgrade sacvit-deploy")
            index = cls(
                name=str(d["name"]),
                backend=str(d["backend"]),
                models={str(k): str(v) for k, v in d["models"].items()},
                files={str(k): str(v) for k, v in d["files"].items()},
                source=dict(d.get("source") or {}),
                options=dict(d.get("options") or {}),
                created=str(d.get("created", "")),
                package_version=str(d.get("package_version", "")),
            )
        except RepositoryError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RepositoryError(
                f"{path}: malformed ({exc}); re-run `sacvit-deploy triton` to rewrite the repository"
            ) from None
        for model in index.models.values():
            if not _MODEL_NAME.match(model):
                raise RepositoryError(f"{path}: model name {model!r} is not a plain folder name")
        return index

    def owned(self) -> Set[str]:
        return {INDEX_NAME, *self.models.values()}
