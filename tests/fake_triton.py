"""A Triton stand-in for tests: a server that loads a model repository and the client modules that reach it.

:class:`FakeServer` reads every ``config.pbtxt`` with Triton's schema (from tritonclient), runs
``onnxruntime_onnx`` models with ONNX Runtime and Python models by importing their ``1/model.py``
with a fake ``triton_python_backend_utils`` (:func:`make_pb_utils`). It enforces what Triton
enforces on the way in and out: tensor names, data types, ``[batch] + dims`` shapes,
``max_batch_size`` and ``reshape``. Every stage request the BLS model sends is recorded.

:func:`make_tritonclient` builds fake ``tritonclient.http`` / ``tritonclient.grpc`` /
``tritonclient.utils`` modules whose ``InferenceServerClient`` calls the server in-process, with the
same signatures and return shapes as the real ones (HTTP: config as a dict; gRPC: ``as_json`` gives
``{"config": ...}``).

:func:`serve_http` and :func:`serve_grpc` put the server behind Triton's real wire protocols on a
localhost port, so the real tritonclient can be tested end to end.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import sys
import threading
import types
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TYPES = {
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
}
API_TYPES = {"FP32": np.float32, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64}


def _dtype(data_type: int) -> type:
    from tritonclient.grpc import model_config_pb2

    return TYPES[model_config_pb2.DataType.Name(data_type)]


class InferError(Exception):
    """What Triton would answer with an error status."""


@dataclass
class Call:
    model: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


# ---- triton_python_backend_utils ------------------------------------------------------------------------
def make_pb_utils(server: FakeServer) -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TRITONSERVER_MEMORY_CPU = 0
    pb.TRITONSERVER_MEMORY_GPU = 1

    class TritonModelException(Exception):
        pass

    class TritonError:
        def __init__(self, message: str, code: int | None = None) -> None:
            self._message = message

        def message(self) -> str:
            return self._message

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            if not isinstance(array, np.ndarray):
                raise TypeError(f"pb_utils.Tensor({name!r}) takes a numpy array, got {type(array).__name__}")
            self._name, self._array = name, array

        def name(self) -> str:
            return self._name

        def as_numpy(self) -> np.ndarray:
            return self._array

        def shape(self) -> list[int]:
            return list(self._array.shape)

        def is_cpu(self) -> bool:
            return True

        def to_dlpack(self) -> Any:
            return torch.utils.dlpack.to_dlpack(torch.from_numpy(np.ascontiguousarray(self._array)))

        @staticmethod
        def from_dlpack(name: str, capsule: Any) -> Tensor:
            return Tensor(name, torch.utils.dlpack.from_dlpack(capsule).cpu().numpy())

    class PreferredMemory:
        def __init__(self, memory_type: int, device_id: int = 0) -> None:
            self.memory_type, self.device_id = memory_type, device_id

    class InferenceResponse:
        def __init__(
            self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None
        ) -> None:
            self._outputs = list(output_tensors or [])
            self._error = error

        def has_error(self) -> bool:
            return self._error is not None

        def error(self) -> TritonError | None:
            return self._error

        def output_tensors(self) -> list[Tensor]:
            return self._outputs

    class InferenceRequest:
        """Both a BLS request (built by model.py, ``exec()``) and a request handed to ``execute()``."""

        def __init__(
            self,
            model_name: str = "",
            requested_output_names: list[str] | None = None,
            inputs: list[Tensor] | None = None,
            parameters: dict | str | None = None,
            **kwargs: Any,
        ) -> None:
            unknown = set(kwargs) - {
                "request_id",
                "correlation_id",
                "model_version",
                "flags",
                "timeout",
                "preferred_memory",
            }
            if unknown:
                raise TypeError(f"InferenceRequest got unexpected arguments {sorted(unknown)}")
            self.model_name = model_name
            self._outputs = list(requested_output_names or [])
            self._inputs = list(inputs or [])
            self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters or {})
            self.preferred_memory = kwargs.get("preferred_memory")

        def inputs(self) -> list[Tensor]:
            return self._inputs

        def parameters(self) -> str:
            return self._parameters

        def requested_output_names(self) -> list[str]:
            return self._outputs

        def exec(self) -> InferenceResponse:
            try:
                outputs = server.infer(
                    self.model_name, {t.name(): t.as_numpy() for t in self._inputs}, self._outputs, bls=True
                )
            except InferError as exc:
                return InferenceResponse(error=TritonError(str(exc)))
            return InferenceResponse([Tensor(k, v) for k, v in outputs.items()])

    def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
        return next((t for t in request.inputs() if t.name() == name), None)

    def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
        return next((t for t in response.output_tensors() if t.name() == name), None)

    for obj in (
        TritonModelException,
        TritonError,
        Tensor,
        PreferredMemory,
        InferenceResponse,
        InferenceRequest,
        get_input_tensor_by_name,
        get_output_tensor_by_name,
    ):
        setattr(pb, obj.__name__, obj)
    return pb


# ---- the server ------------------------------------------------------------------------------------------
class FakeServer:
    def __init__(self, repository: Path, monkeypatch: Any) -> None:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        self.repository = Path(repository)
        self.calls: list[Call] = []
        self.fail: dict[str, str] = {}  # model -> error message to answer with
        self.pb_utils = make_pb_utils(self)
        monkeypatch.setitem(sys.modules, "triton_python_backend_utils", self.pb_utils)
        self.configs: dict[str, Any] = {}
        self.models: dict[str, Any] = {}
        for folder in sorted(
            p for p in self.repository.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            text = (folder / "config.pbtxt").read_text(encoding="utf-8")
            cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
            assert cfg.name == folder.name, f"{folder}: config name {cfg.name!r}"
            self.configs[cfg.name] = cfg
            if cfg.platform == "onnxruntime_onnx":
                import onnxruntime as ort

                self.models[cfg.name] = ort.InferenceSession(
                    str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
                )
            elif cfg.backend == "python":
                self.models[cfg.name] = self._load_python(folder, cfg)
            else:
                raise AssertionError(f"{folder}: the fake serves ONNX and Python models only")

    def _load_python(self, folder: Path, cfg: Any) -> Any:
        from google.protobuf import json_format

        spec = importlib.util.spec_from_file_location(f"triton_model_{cfg.name}", folder / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.TritonPythonModel()
        config_json = json_format.MessageToJson(cfg, preserving_proto_field_name=True)
        model.initialize(
            {
                "model_config": config_json,
                "model_instance_kind": "CPU",
                "model_instance_name": f"{cfg.name}_0",
                "model_instance_device_id": "0",
                "model_repository": str(folder),
                "model_version": "1",
                "model_name": cfg.name,
            }
        )
        return model

    def config_dict(self, model: str) -> dict[str, Any]:
        from google.protobuf import json_format

        return json_format.MessageToDict(self.configs[model], preserving_proto_field_name=True)

    # -- Triton's checks on the way in and out
    def _check_inputs(self, cfg: Any, inputs: dict[str, np.ndarray]) -> int:
        want = {t.name: t for t in cfg.input}
        if set(inputs) != set(want):
            raise InferError(f"{cfg.name}: expected inputs {sorted(want)}, got {sorted(inputs)}")
        batches = {a.shape[0] for a in inputs.values()}
        if len(batches) != 1:
            raise InferError(f"{cfg.name}: inputs disagree on the batch size {sorted(batches)}")
        n = batches.pop()
        if not 1 <= n <= cfg.max_batch_size:
            raise InferError(f"{cfg.name}: batch {n} outside 1..{cfg.max_batch_size}")
        for name, t in want.items():
            dtype = _dtype(t.data_type)
            a = inputs[name]
            if a.dtype != dtype:
                raise InferError(f"{cfg.name}: input '{name}' is {a.dtype}, expected {np.dtype(dtype)}")
            if list(a.shape) != [n, *t.dims]:
                raise InferError(
                    f"{cfg.name}: input '{name}' has shape {list(a.shape)}, expected {[n, *t.dims]}"
                )
        return n

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        parameters: dict[str, Any] | None = None,
        bls: bool = False,
    ) -> dict[str, np.ndarray]:
        if model not in self.configs:
            raise InferError(f"Request for unknown model: '{model}' is not found")
        cfg = self.configs[model]
        n = self._check_inputs(cfg, inputs)
        requested = list(outputs) if outputs else [t.name for t in cfg.output]
        self.calls.append(
            Call(model, {k: v.copy() for k, v in inputs.items()}, requested, dict(parameters or {}))
        )
        if model in self.fail:
            raise InferError(self.fail[model])
        if cfg.backend == "python":
            result = self.execute(model, [(inputs, parameters)])[0]
            if isinstance(result, Exception):
                raise result
            return result
        by_name = {t.name: t for t in cfg.input}
        feed = {
            k: v.reshape([n, *by_name[k].reshape.shape]) if by_name[k].HasField("reshape") else v
            for k, v in inputs.items()
        }
        session = self.models[model]
        result = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
        out_cfg = {t.name: t for t in cfg.output}
        answer = {}
        for name in requested:
            t = out_cfg[name]
            inner = [n, *(t.reshape.shape if t.HasField("reshape") else t.dims)]
            assert list(result[name].shape) == inner, (model, name, result[name].shape, inner)
            answer[name] = result[name].reshape([n, *t.dims])
        return answer

    def execute(self, model: str, requests: list[tuple[dict[str, np.ndarray], dict | None]]) -> list[Any]:
        """Several client requests in one ``execute()`` call, as the dynamic batcher hands them over.

        Returns, per request, its outputs (dict) or the InferError its response carried.
        """
        pb = self.pb_utils
        cfg = self.configs[model]
        batch = [
            pb.InferenceRequest(
                inputs=[pb.Tensor(k, v) for k, v in inputs.items()],
                requested_output_names=[t.name for t in cfg.output],
                parameters=params or {},
            )
            for inputs, params in requests
        ]
        responses = self.models[model].execute(batch)
        assert len(responses) == len(requests) and all(r is not None for r in responses)
        results: list[Any] = []
        for (inputs, _), response in zip(requests, responses, strict=True):
            if response.has_error():
                results.append(InferError(response.error().message()))
                continue
            outs = {t.name(): t.as_numpy() for t in response.output_tensors()}
            n = next(iter(inputs.values())).shape[0]
            for t in cfg.output:  # what Triton checks on a Python model's response
                dtype = _dtype(t.data_type)
                assert outs[t.name].dtype == dtype and list(outs[t.name].shape) == [n, *t.dims], (
                    t.name,
                    outs[t.name],
                )
            results.append(outs)
        return results

    def stage_calls(self, model: str) -> list[Call]:
        return [c for c in self.calls if c.model == model]


# ---- tritonclient ----------------------------------------------------------------------------------------
def make_tritonclient(server: FakeServer | None, ready: bool = True) -> dict[str, types.ModuleType]:
    """Fake tritonclient modules routed to ``server`` (None: nothing listens)."""
    root = types.ModuleType("tritonclient")
    utils = types.ModuleType("tritonclient.utils")

    class InferenceServerException(Exception):
        def __init__(self, msg: str, status: str | None = None, debug_details: Any = None) -> None:
            super().__init__(msg)
            self._msg, self._status = msg, status

        def __str__(self) -> str:
            return f"[{self._status}] {self._msg}" if self._status else self._msg

        def message(self) -> str:
            return self._msg

    utils.InferenceServerException = InferenceServerException
    modules = {"tritonclient": root, "tritonclient.utils": utils}

    for protocol in ("http", "grpc"):
        mod = types.ModuleType(f"tritonclient.{protocol}")

        class InferInput:
            def __init__(self, name: str, shape: list[int], datatype: str) -> None:
                self._name, self._shape, self._datatype = name, list(shape), datatype
                self._data: np.ndarray | None = None

            def name(self) -> str:
                return self._name

            def set_data_from_numpy(self, array: np.ndarray, binary_data: bool = True) -> InferInput:
                if array.dtype != API_TYPES[self._datatype] or list(array.shape) != self._shape:
                    raise InferenceServerException(
                        f"got {array.dtype} {list(array.shape)} for {self._datatype} {self._shape}"
                    )
                self._data = array
                return self

        class InferRequestedOutput:
            def __init__(self, name: str, binary_data: bool = True, class_count: int = 0) -> None:
                self._name = name

            def name(self) -> str:
                return self._name

        class InferResult:
            def __init__(self, outputs: dict[str, np.ndarray]) -> None:
                self._outputs = outputs

            def as_numpy(self, name: str) -> np.ndarray | None:
                return self._outputs.get(name)

        def make_client(protocol: str = protocol) -> type:
            class InferenceServerClient:
                def __init__(self, url: str, verbose: bool = False, ssl: bool = False, **kwargs: Any) -> None:
                    if "://" in url:
                        raise InferenceServerException("url should not include the scheme")
                    self.url = url
                    self.closed = False

                def _server(self) -> FakeServer:
                    if server is None:
                        if protocol == "http":
                            raise ConnectionRefusedError(111, "Connection refused")
                        raise InferenceServerException(
                            "failed to connect to all addresses", "StatusCode.UNAVAILABLE"
                        )
                    return server

                def is_server_live(self, headers: Any = None, **kwargs: Any) -> bool:
                    self._server()
                    return True

                def is_model_ready(self, model_name: str, model_version: str = "", **kwargs: Any) -> bool:
                    return ready and model_name in self._server().configs

                def get_model_config(
                    self, model_name: str, model_version: str = "", as_json: bool = False, **kwargs: Any
                ) -> Any:
                    config = self._server().config_dict(model_name)
                    if protocol == "grpc":
                        assert as_json, "the real gRPC client returns a protobuf unless as_json=True"
                        return {"config": config}
                    return config

                def infer(
                    self,
                    model_name: str,
                    inputs: list,
                    outputs: list | None = None,
                    parameters: dict | None = None,
                    **kwargs: Any,
                ) -> InferResult:
                    for value in (parameters or {}).values():
                        assert isinstance(value, (str, int, bool, float)), value
                    try:
                        result = self._server().infer(
                            model_name,
                            {i.name(): i._data for i in inputs},
                            [o.name() for o in outputs] if outputs else None,
                            parameters,
                        )
                    except InferError as exc:
                        raise InferenceServerException(
                            str(exc), "StatusCode.INTERNAL" if protocol == "grpc" else "400"
                        ) from None
                    return InferResult(result)

                def close(self) -> None:
                    self.closed = True

            return InferenceServerClient

        mod.InferInput = InferInput
        mod.InferRequestedOutput = InferRequestedOutput
        mod.InferenceServerClient = make_client()
        setattr(root, protocol, mod)
        modules[f"tritonclient.{protocol}"] = mod
    root.utils = utils
    return modules


# ---- the wire: Triton's HTTP/REST and gRPC protocols in front of the fake server (for the REAL tritonclient)
NP_TO_API = {np.dtype(v): k for k, v in API_TYPES.items()}


def _param_value(p: Any) -> Any:
    return getattr(p, p.WhichOneof("parameter_choice"))


@contextlib.contextmanager
def serve_grpc(server: FakeServer) -> Iterator[str]:
    """KServe v2 gRPC (Triton's GRPCInferenceService) on a free localhost port; yields ``grpc://...``."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerLiveResponse(live=True)

        def ModelReady(self, request: Any, context: Any) -> Any:
            return service_pb2.ModelReadyResponse(ready=request.name in server.configs)

        def ModelConfig(self, request: Any, context: Any) -> Any:
            return service_pb2.ModelConfigResponse(config=server.configs[request.name])

        def ModelInfer(self, request: Any, context: Any) -> Any:
            inputs = {
                t.name: np.frombuffer(raw, API_TYPES[t.datatype]).reshape(list(t.shape)).copy()
                for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
            }
            params = {k: _param_value(v) for k, v in request.parameters.items()}
            try:
                result = server.infer(
                    request.model_name, inputs, [o.name for o in request.outputs] or None, params
                )
            except InferError as exc:
                context.abort(grpc.StatusCode.INTERNAL, str(exc))
            response = service_pb2.ModelInferResponse(model_name=request.model_name)
            for name, array in result.items():
                response.outputs.add(name=name, datatype=NP_TO_API[array.dtype], shape=list(array.shape))
                response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
            return response

    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        grpc_server.stop(None)


@contextlib.contextmanager
def serve_http(server: FakeServer) -> Iterator[str]:
    """KServe v2 HTTP/REST with Triton's binary-tensor extension; yields ``http://...``."""
    from google.protobuf import json_format

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            if parts == ["v2", "health", "live"]:
                return self._send(200, b"")
            if len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "ready":
                return self._send(200 if parts[2] in server.configs else 400, b"")
            if len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "config":
                if parts[2] not in server.configs:
                    return self._json(400, {"error": f"Request for unknown model: '{parts[2]}' is not found"})
                cfg = json_format.MessageToDict(server.configs[parts[2]], preserving_proto_field_name=True)
                return self._json(200, cfg)
            return self._json(404, {"error": "Not Found"})

        def do_POST(self) -> None:
            parts = self.path.strip("/").split("/")
            body = self.rfile.read(int(self.headers["Content-Length"]))
            size = int(self.headers.get("Inference-Header-Content-Length") or len(body))
            request, binary = json.loads(body[:size]), body[size:]
            inputs, offset = {}, 0
            for t in request["inputs"]:
                n = t["parameters"]["binary_data_size"]
                inputs[t["name"]] = (
                    np.frombuffer(binary[offset : offset + n], API_TYPES[t["datatype"]])
                    .reshape(t["shape"])
                    .copy()
                )
                offset += n
            outputs = [o["name"] for o in request.get("outputs", [])] or None
            try:
                result = server.infer(parts[2], inputs, outputs, request.get("parameters"))
            except InferError as exc:
                return self._json(400, {"error": str(exc)})
            header = {"model_name": parts[2], "outputs": []}
            blobs = []
            for name, array in result.items():
                blob = np.ascontiguousarray(array).tobytes()
                header["outputs"].append(
                    {
                        "name": name,
                        "datatype": NP_TO_API[array.dtype],
                        "shape": list(array.shape),
                        "parameters": {"binary_data_size": len(blob)},
                    }
                )
                blobs.append(blob)
            head = json.dumps(header).encode()
            self._send(200, head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))})

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
