"""SAC-ViT early exit as a Triton Python-backend model (BLS): stage 1 on every sample, stage 2 on the
hard ones only.

`sacvit-deploy triton` copies this file to ``<repository>/<name>/1/model.py``. It runs inside
Triton's Python backend with numpy and ``triton_python_backend_utils`` (torch only when the model's
``bls_tensors`` parameter is "torch"); sacvit_deploy never imports it. Python 3.8+ (the Triton
release for JetPack 5 runs 3.8): no newer syntax here.

Per ``execute()`` call (the dynamic batcher may hand over several client requests at once):

1. The images of all requests are concatenated; stage 1 runs on them in one request.
2. The gate, per sample, exactly as ``EarlyExitPipeline``: a sample exits when
   ``confidence >= threshold``. The threshold is the request's ``exit_threshold`` parameter, else
   the model's (config.pbtxt), compared in the confidence's own dtype.
3. The hard samples' images and stage-1 features are gathered into ONE stage-2 request (split only
   beyond the stage model's max batch); stage 2 is skipped when every sample exits.
4. Stage-2 logits are scattered back; each request gets its rows of ``logits`` (FP32),
   ``stage`` (INT32, 1 or 2) and ``confidence`` (FP32, stage 1's).
"""

import json
import math
import os

import numpy as np
import triton_python_backend_utils as pb_utils

MODEL_JSON = "sacvit_deploy.json"
THRESHOLD_PARAMETER = "exit_threshold"
IMAGE = "image"
STAGE1_NEEDED = ("logits", "confidence")


def goes_to_stage2(confidence, thresholds):
    """The exit rule, copied: a sample exits when ``confidence >= threshold``, so it goes on when
    ``confidence < threshold`` (numpy arrays or torch tensors). This file runs inside Triton without
    sacvit_deploy, so it cannot import ``sacvit_deploy.core.exit_rule``; tests hold the two equal."""
    return confidence < thresholds


class StageError(Exception):
    """A stage model answered with an error; every request of the execute() call gets it."""


class NumpyTensors:
    """Host arrays. Stage outputs are asked for in CPU memory (`preferred_memory`, Triton 23.05 and later)."""

    def __init__(self):
        self.preferred_memory = None
        if hasattr(pb_utils, "PreferredMemory"):
            self.preferred_memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def array(self, tensor):
        if not tensor.is_cpu():
            raise StageError(
                "a stage output arrived in GPU memory; use Triton 23.05+ or set the parameter "
                "bls_tensors to 'torch' (needs torch in the Python backend)"
            )
        return tensor.as_numpy()

    def tensor(self, name, array):
        return pb_utils.Tensor(name, np.ascontiguousarray(array))

    def concat(self, arrays):
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def hard_samples(self, confidence, thresholds):
        return np.flatnonzero(goes_to_stage2(confidence, thresholds))

    def per_sample(self, values, counts, like):
        return np.repeat(np.asarray(values, dtype=like.dtype), counts)

    def take(self, array, index):
        return np.take(array, index, axis=0)

    def gate_outputs(self, logits1, hard, logits2):
        logits = np.array(logits1, dtype=np.float32)  # a copy: stage 1's buffer is not ours
        stage = np.ones((logits.shape[0], 1), dtype=np.int32)
        if logits2 is not None:
            logits[hard] = logits2.astype(np.float32)
            stage[hard] = 2
        return logits, stage

    def column(self, array):
        return np.asarray(array, dtype=np.float32).reshape(-1, 1)


class TorchTensors:
    """Tensors shared with Triton through DLPack: stage outputs stay where the stage put them (GPU)."""

    def __init__(self):
        import torch  # only in this mode: Triton's stock container has no torch
        import torch.utils.dlpack

        self.torch = torch
        self.dlpack = torch.utils.dlpack
        self.preferred_memory = None

    def array(self, tensor):
        return self.dlpack.from_dlpack(tensor.to_dlpack())

    def tensor(self, name, array):
        return pb_utils.Tensor.from_dlpack(name, self.dlpack.to_dlpack(array.contiguous()))

    def concat(self, arrays):
        return arrays[0] if len(arrays) == 1 else self.torch.cat(arrays)

    def hard_samples(self, confidence, thresholds):
        return self.torch.nonzero(goes_to_stage2(confidence, thresholds)).flatten()

    def per_sample(self, values, counts, like):
        t = self.torch.tensor(values, dtype=like.dtype, device=like.device)
        return t.repeat_interleave(self.torch.tensor(counts, device=like.device))

    def take(self, array, index):
        return array.index_select(0, index.to(array.device))

    def gate_outputs(self, logits1, hard, logits2):
        logits = logits1.float().clone()
        stage = self.torch.ones((logits.shape[0], 1), dtype=self.torch.int32, device=logits.device)
        if logits2 is not None:
            index = hard.to(logits.device)
            logits.index_copy_(0, index, logits2.to(logits.device, self.torch.float32))
            stage.index_fill_(0, index, 2)
        return logits, stage

    def column(self, array):
        return array.float().reshape(-1, 1)


TENSOR_MODES = {"numpy": NumpyTensors, "torch": TorchTensors}


def parse_threshold(value, where):
    """A threshold from config.pbtxt or a request: a finite number >= 0 (above 1: nothing exits)."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(threshold) or threshold < 0.0:
        raise ValueError(f"{where}: {value!r} must be a finite number >= 0 (above 1: nothing exits)")
    return threshold


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        folder = args.get("model_repository") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(folder, MODEL_JSON), encoding="utf-8") as f:
            spec = json.load(f)
        self.stage1_model = params.get("stage1_model") or spec["stage_models"]["stage1"]
        self.stage2_model = params.get("stage2_model") or spec["stage_models"]["stage2"]
        # Stage-2 inputs besides the image come from stage 1 under the same names.
        self.forwarded = [t["name"] for t in spec["stage2"]["inputs"] if t["name"] != IMAGE]
        self.stage1_outputs = list(STAGE1_NEEDED) + [n for n in self.forwarded if n not in STAGE1_NEEDED]
        self.max_stage_batch = int(spec["max_batch_size"])
        self.num_classes = int(spec["model"]["num_classes"])
        try:
            self.threshold = parse_threshold(
                params.get(THRESHOLD_PARAMETER, spec["exit_threshold"]), "parameter exit_threshold"
            )
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"config.pbtxt: {exc}") from None
        mode = params.get("bls_tensors") or "numpy"
        if mode not in TENSOR_MODES:
            raise pb_utils.TritonModelException(
                f"config.pbtxt: parameter bls_tensors {mode!r} must be one of {sorted(TENSOR_MODES)}"
            )
        self.ops = TENSOR_MODES[mode]()

    def execute(self, requests):
        responses = [None] * len(requests)
        images, thresholds, owners = [], [], []
        for i, request in enumerate(requests):
            try:
                thresholds.append(self.request_threshold(request))
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"request parameter {exc}")
                )
                continue
            images.append(pb_utils.get_input_tensor_by_name(request, IMAGE))
            owners.append(i)
        if not owners:
            return responses
        try:
            arrays = [self.ops.array(image) for image in images]
            counts = [int(a.shape[0]) for a in arrays]
            if not sum(counts):
                for i in owners:
                    responses[i] = self.empty_response()
                return responses
            logits, stage, confidence = self.run(self.ops.concat(arrays), thresholds, counts)
        except StageError as exc:
            for i in owners:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
            return responses
        start = 0
        for i, n in zip(owners, counts):
            rows = slice(start, start + n)
            start += n
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[
                    self.ops.tensor("logits", logits[rows]),
                    self.ops.tensor("stage", stage[rows]),
                    self.ops.tensor("confidence", confidence[rows]),
                ]
            )
        return responses

    def empty_response(self):
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("logits", np.zeros((0, self.num_classes), np.float32)),
                pb_utils.Tensor("stage", np.zeros((0, 1), np.int32)),
                pb_utils.Tensor("confidence", np.zeros((0, 1), np.float32)),
            ]
        )

    def request_threshold(self, request):
        raw = request.parameters() if hasattr(request, "parameters") else ""
        params = json.loads(raw) if raw else {}
        if THRESHOLD_PARAMETER not in params:
            return self.threshold
        return parse_threshold(params[THRESHOLD_PARAMETER], THRESHOLD_PARAMETER)

    def run(self, images, thresholds, counts):
        """The early-exit pipeline on one batch: (logits, stage, confidence) for every sample."""
        out1 = self.infer(self.stage1_model, {IMAGE: images}, self.stage1_outputs)
        confidence = out1["confidence"].reshape(-1)  # Triton's API shape is (n, 1)
        per_sample = self.ops.per_sample(thresholds, counts, confidence)
        hard = self.ops.hard_samples(confidence, per_sample)
        logits2 = None
        if len(hard):
            feed = {IMAGE: self.ops.take(images, hard)}
            for name in self.forwarded:
                feed[name] = self.ops.take(out1[name], hard)
            logits2 = self.infer(self.stage2_model, feed, ["logits"])["logits"]
        logits, stage = self.ops.gate_outputs(out1["logits"], hard, logits2)
        return logits, stage, self.ops.column(confidence)

    def infer(self, model, feed, outputs):
        """One BLS request (several only beyond the stage model's max batch)."""
        n = int(next(iter(feed.values())).shape[0])
        step = self.max_stage_batch if self.max_stage_batch > 0 else n
        parts = []
        for start in range(0, n, step):
            chunk = {k: v[start : start + step] for k, v in feed.items()} if n > step else feed
            parts.append(self.infer_once(model, chunk, outputs))
        if len(parts) == 1:
            return parts[0]
        return {name: self.ops.concat([p[name] for p in parts]) for name in outputs}

    def infer_once(self, model, feed, outputs):
        kwargs = {}
        if self.ops.preferred_memory is not None:
            kwargs["preferred_memory"] = self.ops.preferred_memory
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=list(outputs),
            inputs=[self.ops.tensor(name, value) for name, value in feed.items()],
            **kwargs,
        )
        response = request.exec()
        if response.has_error():
            raise StageError(f"{model}: {response.error().message()}")
        result = {}
        for name in outputs:
            tensor = pb_utils.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise StageError(f"{model}: no output '{name}' in its response")
            result[name] = self.ops.array(tensor)
        return result
