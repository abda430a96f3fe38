"""Classify through a Triton server: ``sacvit-deploy infer --triton URL`` and the Python API.

Images are preprocessed here, exactly as the served model's manifest says; the server runs stage 1,
the gate and stage 2 (the BLS model written by ``sacvit-deploy triton``). Where the preprocessing
comes from: the BLS model's config carries it (parameter ``sacvit_client``, fetched with the
model's config), so a client needs nothing but the URL. ``--artifacts`` may name a local export or
engines folder, or the repository itself, instead; it must hold the very graphs the server runs.

:class:`TritonRunner` follows the runner lifecycle (``activate`` / ``infer`` / ``deactivate``);
:class:`TritonPipeline` wraps it with ``EarlyExitPipeline``'s ``run(images, threshold)`` so the
results go through the same ``to_predictions`` and writers as local inference.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Optional, Tuple, Type, Union
from urllib.parse import urlsplit

import numpy as np

from sacvit_deploy.backends.arrays import as_host_batch
from sacvit_deploy.core.config import ModelConfig
from sacvit_deploy.core.errors import ConfigError, SacvitError
from sacvit_deploy.core.extras import install_hint
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.core.validate import parse_json
from sacvit_deploy.runtime.pipeline import PipelineOutput
from sacvit_deploy.triton import config as tc
from sacvit_deploy.triton.reply import validate_reply

TRITON_EXTRA = install_hint("triton")
SCHEMES = {"http": ("http", False), "https": ("http", True), "grpc": ("grpc", False), "grpcs": ("grpc", True)}
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
TIMEOUT_S = 60.0


class TritonClientError(SacvitError):
    """The server cannot be reached, the model is not ready, or a request failed."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed ``--triton`` URL: ``http(s)://host:port`` or ``grpc(s)://host:port``."""

    url: str  # as the user gave it, for messages
    protocol: str  # "http" or "grpc"
    address: str  # host:port, what tritonclient takes
    ssl: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise TritonClientError(
                f"--triton {url!r}: use http://HOST:8000 (HTTP) or grpc://HOST:8001 (gRPC), https/grpcs for TLS"
            )
        if parts.path not in ("", "/") or parts.query:
            raise TritonClientError(f"--triton {url!r}: give only the server, e.g. http://localhost:8000")
        protocol, ssl = SCHEMES[parts.scheme]
        try:
            port = parts.port or DEFAULT_PORTS[protocol]
        except ValueError:
            raise TritonClientError(f"--triton {url!r}: the port is not a number") from None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(url.rstrip("/"), protocol, f"{host}:{port}", ssl)


def import_client(protocol: str) -> Tuple[ModuleType, Type[Exception]]:
    """``tritonclient.http`` or ``tritonclient.grpc``, and its exception type."""
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        raise TritonClientError(
            f"--triton needs tritonclient ({protocol}): {TRITON_EXTRA} ({exc.name or exc} is missing)"
        ) from None
    return module, InferenceServerException


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass
class ServedModel:
    """What the server says about the BLS model: batch limit, default threshold, the client info."""

    name: str
    max_batch: int
    threshold: float
    client: Dict[str, Any]
    stage_models: Tuple[str, str]

    @classmethod
    def from_config(cls, config: Dict[str, Any], where: str) -> ServedModel:
        params = {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        raw = params.get(tc.CLIENT_PARAMETER)
        if not raw:
            raise TritonClientError(
                f"{where}: not a model written by `sacvit-deploy triton` (no {tc.CLIENT_PARAMETER} parameter); "
                "check --triton-model"
            )
        try:
            client = parse_json(raw)
            ModelConfig.from_dict(client["model"])
            threshold = float(params.get(tc.THRESHOLD_PARAMETER, ""))
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            raise TritonClientError(
                f"{where}: unreadable sacvit-deploy parameters ({exc}); rewrite the repository"
            ) from None
        return cls(
            name=str(config.get("name", "")),
            max_batch=int(config.get("max_batch_size") or 0),
            threshold=threshold,
            client=client,
            stage_models=(params.get("stage1_model", "?"), params.get("stage2_model", "?")),
        )

    def manifest(self) -> Manifest:
        """The served model's manifest subset as a Manifest (no files): config, preprocessing, classes."""
        return Manifest(
            model=ModelConfig.from_dict(self.client["model"]),
            source_format=str(self.client.get("source_format", "")),
            exit_threshold=self.threshold,
        )


class TritonRunner:
    """One Triton model behind the runner lifecycle: ``activate()`` connects and checks readiness."""

    def __init__(self, url: str, model: str = "sacvit", timeout: float = TIMEOUT_S) -> None:
        self.endpoint = Endpoint.parse(url)
        self.model = model
        self.timeout = timeout
        self.served: Optional[ServedModel] = None
        self._client: Any = None
        self._module: Optional[ModuleType] = None
        self._error: Type[Exception] = Exception

    @property
    def is_active(self) -> bool:
        return self._client is not None

    def activate(self) -> TritonRunner:
        if self.is_active:
            return self
        module, error = import_client(self.endpoint.protocol)
        self._module, self._error = module, error
        url = self.endpoint.url
        kwargs: Dict[str, Any] = {"url": self.endpoint.address, "ssl": self.endpoint.ssl}
        if self.endpoint.protocol == "http":
            kwargs.update(connection_timeout=self.timeout, network_timeout=self.timeout)
        try:
            client = module.InferenceServerClient(**kwargs)
        except Exception as exc:  # tritonclient raises its own and socket errors alike
            raise TritonClientError(f"Triton at {url}: cannot create a client ({_one_line(exc)})") from None
        try:
            live = client.is_server_live()
        except Exception as exc:
            _close(client)
            raise TritonClientError(
                f"Triton at {url} is unreachable ({_one_line(exc)}); start the server (docs/triton.md) or fix --triton"
            ) from None
        if not live:
            _close(client)
            raise TritonClientError(f"Triton at {url} answers but is not live; see the server log")
        try:
            ready = client.is_model_ready(self.model)
        except Exception as exc:
            _close(client)
            raise TritonClientError(
                f"Triton at {url}: cannot ask for model '{self.model}' ({_one_line(exc)})"
            ) from None
        if not ready:
            _close(client)
            raise TritonClientError(
                f"Triton at {url}: model '{self.model}' is not ready (not in the repository, still loading, or failed "
                "to load: see the server log); check --triton-model"
            )
        try:
            if self.endpoint.protocol == "grpc":
                config = client.get_model_config(self.model, as_json=True).get("config", {})
            else:
                config = client.get_model_config(self.model)
        except Exception as exc:
            _close(client)
            raise TritonClientError(
                f"Triton at {url}: cannot read the config of '{self.model}' ({_one_line(exc)})"
            ) from None
        self.served = ServedModel.from_config(config, f"Triton at {url}: model '{self.model}'")
        self._client = client
        return self

    def deactivate(self) -> None:
        if self._client is not None:
            _close(self._client)
        self._client = None

    def __enter__(self) -> TritonRunner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def infer(self, images: np.ndarray, threshold: Optional[float] = None) -> Dict[str, np.ndarray]:
        """One request: ``image`` (n, 3, R, R) float32 -> ``logits``, ``stage``, ``confidence``."""
        if self._client is None or self._module is None:
            raise TritonClientError("the Triton runner is not active; use it in a `with` block")
        images = np.ascontiguousarray(images, dtype=np.float32)
        m = self._module
        tensor = m.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        outputs = [m.InferRequestedOutput(name) for name, _ in tc.BLS_OUTPUTS]
        # A string parameter: every Triton release takes those (doubles only since 24.03).
        params = None if threshold is None else {tc.THRESHOLD_PARAMETER: repr(float(threshold))}
        try:
            result = self._client.infer(self.model, [tensor], outputs=outputs, parameters=params)
        except self._error as exc:
            raise TritonClientError(
                f"Triton at {self.endpoint.url}: '{self.model}' failed: {_one_line(exc)}"
            ) from None
        except Exception as exc:  # the transport's own: OSError, geventhttpclient's HTTPConnectionClosed
            raise TritonClientError(
                f"Triton at {self.endpoint.url}: connection lost during a request ({type(exc).__name__}: "
                f"{_one_line(exc)}); is the server still running?"
            ) from None
        reply = {name: result.as_numpy(name) for name, _ in tc.BLS_OUTPUTS}
        classes = self.served.manifest().num_classes if self.served is not None else None
        return validate_reply(
            reply, images.shape[0], classes, f"Triton at {self.endpoint.url}, '{self.model}'"
        )


def _close(client: Any) -> None:
    with contextlib.suppress(Exception):  # closing a half-open client must not hide the real error
        client.close()


class TritonPipeline:
    """``EarlyExitPipeline.run`` semantics with the gate on the server: images in, PipelineOutput out."""

    def __init__(self, runner: TritonRunner, threshold: Optional[float] = None) -> None:
        self.runner = runner
        self._override = None if threshold is None else float(threshold)

    @property
    def threshold(self) -> float:
        if self._override is not None:
            return self._override
        return self.runner.served.threshold if self.runner.served else float("nan")

    def activate(self) -> TritonPipeline:
        self.runner.activate()
        return self

    def deactivate(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> TritonPipeline:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def run(self, images: Any, threshold: Optional[float] = None) -> PipelineOutput:
        """images: (B, 3, R, R) float32 numpy (or a torch tensor), normalised; sent in requests of at
        most the model's max batch. Returns numpy arrays, like EarlyExitPipeline."""
        th = self._override if threshold is None else float(threshold)
        array = as_host_batch(images)
        if array.shape[0] == 0:
            raise SacvitError("empty batch: pass at least one image")
        served = self.runner.served
        step = served.max_batch if served and served.max_batch > 0 else array.shape[0]
        parts = [self.runner.infer(array[i : i + step], th) for i in range(0, array.shape[0], step)]
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return PipelineOutput(
            logits=np.ascontiguousarray(merged["logits"], dtype=np.float32),
            stage=merged["stage"].reshape(-1).astype(np.int64),
            confidence=np.ascontiguousarray(merged["confidence"].reshape(-1), dtype=np.float32),
        )


@dataclass
class TritonChoice:
    endpoint: Endpoint
    served: ServedModel

    def describe(self) -> str:
        s1, s2 = self.served.stage_models
        return (
            f"Triton Inference Server at {self.endpoint.url} ({self.endpoint.protocol}), model "
            f"'{self.served.name}' (stages {s1}, {s2}; max batch {self.served.max_batch})"
        )


@dataclass
class OpenedTriton:
    """Shaped like ``runtime.loader.OpenedPipeline`` so ``infer`` swaps one for the other."""

    pipeline: TritonPipeline
    manifest: Manifest
    folder: str
    choice: TritonChoice


def open_triton(
    url: str,
    model: str = "sacvit",
    threshold: Optional[float] = None,
    artifacts: Optional[Union[str, Path]] = None,
    timeout: float = TIMEOUT_S,
) -> OpenedTriton:
    """Connect to the server, check the model is ready, and read its preprocessing."""
    runner = TritonRunner(url, model, timeout).activate()
    served = runner.served
    assert served is not None
    try:
        manifest = served.manifest() if artifacts is None else local_manifest(Path(artifacts), served)
    except BaseException:
        runner.deactivate()
        raise
    folder = f"{runner.endpoint.url}/v2/models/{model}"
    return OpenedTriton(
        TritonPipeline(runner, threshold), manifest, folder, TritonChoice(runner.endpoint, served)
    )


def local_manifest(folder: Path, served: ServedModel) -> Manifest:
    """A local export/engines folder, or the repository, that must hold the graphs the server runs."""
    from sacvit_deploy.triton.index import INDEX_NAME, MODEL_JSON, RepositoryIndex

    if (folder / INDEX_NAME).is_file():
        index = RepositoryIndex.load(folder)
        path = folder / index.models["bls"] / MODEL_JSON
        try:
            d = parse_json(path.read_text(encoding="utf-8"))
            manifest = Manifest(ModelConfig.from_dict(d["model"]), str(d["source_format"]), served.threshold)
            local = {role: d["source"][role]["sha256"] for role in ("stage1", "stage2")}
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
            raise TritonClientError(f"{path}: unreadable ({exc}); re-run `sacvit-deploy triton`") from None
        candidates = [local]
    else:
        manifest = Manifest.load(folder)
        candidates = [
            {role: section[role].sha256 for role in ("stage1", "stage2")}
            for section in (manifest.graphs, manifest.engines)
            if "stage1" in section and "stage2" in section
        ]
    if served.client.get("sha256") not in candidates:
        raise TritonClientError(
            f"--artifacts {folder}: not the graphs the served model '{served.name}' runs (sha256 differs); "
            "point it at the folder the repository was written from, or drop it"
        )
    return manifest
