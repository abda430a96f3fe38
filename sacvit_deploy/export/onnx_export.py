"""Export the two stages (and optionally the DeiT baseline) to ONNX, with a manifest.

Choices, and why:

* The TorchScript-based exporter (``dynamo=False``). The dynamo exporter in torch 2.9+ emits opset
  18 at least, and TensorRT 8.5/8.6 (JetPack 5/6.0) parse opset 17 at most. Our graphs have static
  shapes except the batch, which ``dynamic_axes`` keeps symbolic (traced with batch 2, so batch 1 is
  not baked in); export verification runs other batch sizes to prove it.
* Attention exported as explicit MatMul/Softmax (fused SDPA off): every parser reads it.
* ``--target-trt 8.5`` swaps LayerNorm for its decomposition (the 8.5 parser has no
  LayerNormalization); 8.6+ keep the native op, which TensorRT computes in FP32.
* ``Constant`` nodes are folded into initializers, so TopK's K is an initializer, as the 8.5 parser
  requires.
* One file per graph unless it is over protobuf's 2 GB limit, then weights go to ``<graph>.data``.
"""

from __future__ import annotations

import copy
import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn

from sacvit_deploy.core import publish
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.exit_rule import check_threshold
from sacvit_deploy.core.manifest import (
    ArtifactFile,
    ExitCalibration,
    ExporterInfo,
    Manifest,
    TensorSpec,
    Verification,
    sha256_file,
)
from sacvit_deploy.core.trt_families import TRT_FAMILIES
from sacvit_deploy.core.version import __version__
from sacvit_deploy.model.checkpoint import save_checkpoint
from sacvit_deploy.model.graphs import graph_module, graph_specs
from sacvit_deploy.model.layers import set_fused_attn
from sacvit_deploy.model.sacvit import SACViT

DEFAULT_OPSET = 17
MIN_OPSET = 17  # LayerNormalization and the opset-17 TopK/Resize semantics
MAX_TORCHSCRIPT_OPSET = 20
PROTOBUF_LIMIT = 2**31 - 1
WEIGHTS_NAME = "model.safetensors"


class ExportError(SacvitError):
    """Export cannot proceed (bad option, unusable output folder, failed verification)."""


@dataclass
class ExportOptions:
    batch: Optional[int] = None  # None: dynamic batch axis
    opset: Optional[int] = None
    target_trt: str = "10"
    threshold: Optional[float] = None
    baseline: bool = False
    weights: bool = True  # model.safetensors beside the graphs, for the torch backend

    def resolved_opset(self) -> int:
        if self.target_trt not in TRT_FAMILIES:
            raise ExportError(
                f"unknown --target-trt {self.target_trt!r}; use one of {', '.join(TRT_FAMILIES)}"
            )
        limit = min(TRT_FAMILIES[self.target_trt].max_opset, MAX_TORCHSCRIPT_OPSET)
        opset = self.opset if self.opset is not None else DEFAULT_OPSET
        if not MIN_OPSET <= opset <= limit:
            raise ExportError(
                f"--opset {opset} is outside {MIN_OPSET}..{limit} for --target-trt {self.target_trt}; "
                f"use --opset {min(max(opset, MIN_OPSET), limit)}"
            )
        return opset


@dataclass
class ExportResult:
    folder: Path
    manifest: Manifest
    seconds: float
    files: Dict[str, int] = field(default_factory=dict)  # name -> size in bytes


class DecomposedLayerNorm(nn.Module):
    """LayerNorm from ReduceMean/Sub/Mul/Sqrt/Div, for parsers without LayerNormalization (TRT 8.5)."""

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        self.weight = ln.weight
        self.bias = ln.bias
        self.eps = ln.eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        centered = x - mean
        var = (centered * centered).mean(dim=-1, keepdim=True)
        return centered / torch.sqrt(var + self.eps) * self.weight + self.bias


def decompose_layernorms(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.LayerNorm):
            setattr(module, name, DecomposedLayerNorm(child))
        else:
            decompose_layernorms(child)
    return module


def prepare_for_export(model: nn.Module, target_trt: str) -> nn.Module:
    """A copy of the model on the ONNX-safe path for the given TensorRT target."""
    model = copy.deepcopy(model).cpu().float().eval()
    set_fused_attn(model, False)
    if TRT_FAMILIES[target_trt].decompose_layernorm:
        decompose_layernorms(model)
    return model


# ---- one graph ----------------------------------------------------------------------------------------
def _example_inputs(model: SACViT, role: str, batch: int) -> Tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    cfg = model.cfg
    image = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    if role != "stage2":
        return (image,)
    with torch.no_grad():
        s1 = model.forward_stage1(image)
    return (image, s1.target_index, s1.nontarget_tokens, s1.target_features)


def _fold_constants_into_initializers(graph: Any) -> None:
    """Constant nodes -> initializers (TopK's K must be an initializer for the TensorRT 8.5 parser)."""
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = copy.deepcopy(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _declare_shapes(values: Any, specs: List[TensorSpec]) -> None:
    """Write the designed shapes into the graph's inputs/outputs (the tracer leaves some symbolic);
    the checker's shape inference then confirms they are consistent with the graph."""
    if len(values) != len(specs):
        raise ExportError(f"the graph has {len(values)} inputs/outputs where the design has {len(specs)}")
    for value, spec in zip(values, specs):
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for s in spec.shape:
            dim = dims.add()
            if isinstance(s, str):
                dim.dim_param = s
            else:
                dim.dim_value = s


def _specs_from_graph(values: Any) -> List[TensorSpec]:
    import onnx

    specs = []
    for v in values:
        tt = v.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        shape = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim)
        specs.append(TensorSpec(v.name, "bool" if dtype == "bool" else dtype, shape))
    return specs


def export_graph(
    module: nn.Module,
    example: Tuple[Tensor, ...],
    role: str,
    cfg: Any,
    path: Path,
    opset: int,
    dynamic: bool,
) -> ArtifactFile:
    """Export one graph to ``path`` and describe it for the manifest."""
    import onnx

    # Every graph on the explicit attention path (MatMul/Softmax), whatever module it was built from:
    # fused SDPA exports differently per torch version (and not at all on torch 2.3/2.4).
    set_fused_attn(module, False)
    inputs, outputs = graph_specs(cfg, role, "batch" if dynamic else example[0].shape[0])
    in_names = [t.name for t in inputs]
    out_names = [t.name for t in outputs]
    dynamic_axes = {name: {0: "batch"} for name in in_names + out_names} if dynamic else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python values; verification is the proof
        torch.onnx.export(
            module,
            example,
            buffer,
            opset_version=opset,
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            **_torchscript_exporter(),
        )
    proto = onnx.load_model_from_string(buffer.getvalue())
    _fold_constants_into_initializers(proto.graph)
    _declare_shapes(proto.graph.input, inputs)
    _declare_shapes(proto.graph.output, outputs)
    proto.producer_name = "sacvit-deploy"
    proto.producer_version = __version__
    onnx.helper.set_model_props(proto, {"sacvit_deploy.role": role, "sacvit_deploy.variant": cfg.variant})
    proto.graph.name = f"sacvit_{role}"

    external = None
    if proto.ByteSize() > PROTOBUF_LIMIT:
        external = path.name + ".data"
        onnx.save_model(
            proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=external
        )
        onnx.checker.check_model(str(path), full_check=True)
    else:
        onnx.checker.check_model(proto, full_check=True)
        onnx.save_model(proto, str(path))

    declared_in, declared_out = _specs_from_graph(proto.graph.input), _specs_from_graph(proto.graph.output)
    if declared_in != inputs or declared_out != outputs:
        raise ExportError(
            f"{path.name}: exported tensor specs {declared_in + declared_out} differ from the design"
        )
    return ArtifactFile(
        file=path.name,
        sha256=sha256_file(path),
        size=path.stat().st_size,
        inputs=inputs,
        outputs=outputs,
        external_data=external,
        external_sha256=sha256_file(path.parent / external) if external else None,
        info={"opset": opset, "role": role},
    )


def _torchscript_exporter() -> Dict[str, Any]:
    """``dynamo=False`` where ``torch.onnx.export`` has the switch (torch 2.5+; from 2.9 it defaults to
    the dynamo exporter); older torch only has the TorchScript exporter and refuses the keyword."""
    import inspect

    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


# ---- the output folder --------------------------------------------------------------------------------
def prepare_output_folder(out: Path) -> Set[str]:
    """Check ``out`` can receive an export; returns the names of old artifacts to replace."""
    return publish.prepare_output_folder(out, ExportError, "export")


# ---- the whole export ---------------------------------------------------------------------------------
def export_artifacts(
    model: SACViT,
    out: Union[str, Path],
    options: ExportOptions,
    source_format: str,
    source: Optional[Dict[str, Any]] = None,
    verify: Optional[Callable[[Path, Manifest], Dict[str, Any]]] = None,
    log: Callable[[str], None] = lambda _msg: None,
    calibration: Optional[ExitCalibration] = None,
) -> ExportResult:
    """Export stage 1, stage 2 (and the baseline) into ``out`` with a manifest.

    ``verify(staging_folder, manifest)`` runs before anything is published and may raise to abort;
    its report is stored in the manifest. ``calibration``: the record of how the exit threshold was
    chosen (a re-export keeping a calibrated threshold), published in the same manifest; its
    threshold is the export's unless ``options.threshold`` says otherwise, which is an error.
    """
    start = time.perf_counter()
    opset = options.resolved_opset()
    if options.batch is not None and options.batch < 1:
        raise ExportError(f"--batch {options.batch}: use 'dynamic' or a positive batch size")
    threshold = model.cfg.exit_threshold if options.threshold is None else float(options.threshold)
    if calibration is not None:
        if options.threshold is not None and threshold != calibration.threshold:
            raise ExportError(
                f"--threshold {threshold:g}: the calibration record is for {calibration.threshold:g}; "
                "give one of them"
            )
        threshold = calibration.threshold
    try:  # the one rule (core.exit_rule): finite and >= 0; above 1 nothing exits at stage 1
        threshold = check_threshold(threshold, "--threshold")
    except SacvitError as exc:
        raise ExportError(str(exc)) from None
    out = Path(out)
    previous = prepare_output_folder(out)
    with publish.staging_folder(out) as staging:
        prepared = prepare_for_export(model, options.target_trt)
        cfg = model.cfg.replace(exit_threshold=threshold)
        dynamic = options.batch is None
        trace_batch = 2 if dynamic else options.batch
        roles = ["stage1", "stage2"] + (["baseline"] if options.baseline else [])
        graphs: Dict[str, ArtifactFile] = {}
        for role in roles:
            t = time.perf_counter()
            module = graph_module(prepared, role)
            if role == "baseline" and TRT_FAMILIES[options.target_trt].decompose_layernorm:
                decompose_layernorms(module)
            example = _example_inputs(prepared, role, trace_batch)
            graphs[role] = export_graph(module, example, role, cfg, staging / f"{role}.onnx", opset, dynamic)
            log(f"staged {role}.onnx ({graphs[role].size / 2**20:.1f} MB, {time.perf_counter() - t:.1f} s)")
        weights = None
        if options.weights:
            model_for_weights = SACViT(cfg)
            model_for_weights.load_state_dict(model.state_dict())
            path = save_checkpoint(model_for_weights, staging / WEIGHTS_NAME)
            weights = ArtifactFile(WEIGHTS_NAME, sha256_file(path), path.stat().st_size, [], [])
        manifest = Manifest(
            model=cfg,
            source_format=source_format,
            exit_threshold=threshold,
            graphs=graphs,
            weights=weights,
            exporter=ExporterInfo(
                opset=opset,
                target_trt=options.target_trt,
                layernorm="decomposed" if TRT_FAMILIES[options.target_trt].decompose_layernorm else "native",
                details={
                    "exporter": "torch.onnx (TorchScript)",
                    "torch": torch.__version__,
                    "onnx": _version_of("onnx"),
                    "batch": "dynamic" if dynamic else options.batch,
                },
            ),
            source=source or {},
            calibration=calibration,
        )
        if verify is not None:
            manifest.verification = Verification.from_dict(verify(staging, manifest))
        publish.publish(staging, out, manifest, previous)
    files = {e.file: e.size for e in manifest.graphs.values()}
    if manifest.weights:
        files[manifest.weights.file] = manifest.weights.size
    return ExportResult(out, manifest, time.perf_counter() - start, files)


def _version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
