"""One SAC-ViT stage graph (stage1.onnx or stage2.onnx) run by ONNX Runtime inside Triton's Python
backend: the stage flavour for servers that have only the Python backend (PyTriton's tritonserver).

`sacvit-deploy triton --backend python` copies this file to ``<repository>/<stage>/1/model.py``, the
graph beside it as ``1/model.onnx``. It runs inside Triton's Python backend with numpy and
onnxruntime (which the backend's Python must have: ``pip install onnxruntime``; with numpy < 2 for
stubs built against numpy 1.x); sacvit_deploy never imports it. Python 3.8+: no newer syntax here.

Per ``execute()`` call the dynamic batcher hands over one or more requests (the BLS model's stage
requests): their inputs are concatenated, the graph runs once, and each request gets its rows of the
outputs it asked for.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

GRAPH = "model.onnx"
THREADS_PARAMETER = "onnxruntime_threads"


class TritonPythonModel:
    def initialize(self, args):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise pb_utils.TritonModelException(
                "this stage runs its ONNX graph with onnxruntime, which the Python backend's environment "
                f"lacks ({exc}): pip install onnxruntime into the environment whose python3 is first on the "
                "server's PATH (the stub's Python)"
            ) from None
        config = json.loads(args["model_config"])
        params = {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        folder = args.get("model_repository") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.path.join(folder, str(args.get("model_version") or "1"), GRAPH)
        options = ort.SessionOptions()
        threads = int(params.get(THREADS_PARAMETER) or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        # Stage 1 and stage 2 are separate processes sharing the cores: idle spinning threads of one
        # would slow the other (the same reason the project's ONNX Runtime runner turns it off).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if (
            args.get("model_instance_kind") == "GPU"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            device = int(args.get("model_instance_device_id") or 0)
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as exc:  # a damaged or foreign file fails in many ways inside onnxruntime
            raise pb_utils.TritonModelException(
                "{}: onnxruntime cannot load it ({}); re-run `sacvit-deploy triton`".format(
                    path, " ".join(str(exc).split())
                )
            ) from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        feeds = {name: [] for name in self.inputs}
        counts = []
        for request in requests:
            n = None
            for name in self.inputs:
                array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                feeds[name].append(array)
                n = int(array.shape[0])
            counts.append(n or 0)
        feed = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in feeds.items()}
        try:
            results = self.session.run(self.outputs, feed)
        except Exception as exc:
            message = "onnxruntime failed: " + " ".join(str(exc).split())
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in requests]
        by_name = dict(zip(self.outputs, results))
        responses = []
        start = 0
        for request, n in zip(requests, counts):
            wanted = self.requested(request)
            rows = slice(start, start + n)
            start += n
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(by_name[name][rows])) for name in wanted]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def requested(self, request):
        names = request.requested_output_names() if hasattr(request, "requested_output_names") else None
        return [n for n in self.outputs if n in names] if names else list(self.outputs)
