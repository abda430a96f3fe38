"""The float16 ONNX rewrite (the TensorRT 11 FP16 path), checked with onnx.checker and ONNX Runtime (CPU)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from sacvit_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner
from sacvit_deploy.core.manifest import Manifest
from sacvit_deploy.engine.fp16 import convert_to_fp16, decomposed_layernorms, fp32_islands
from sacvit_deploy.model.config import PreprocessConfig
from sacvit_deploy.runtime.images import load_image, preprocess
from sacvit_deploy.runtime.pipeline import EarlyExitPipeline, mixed_threshold
from tests.fakes.fixtures import shared_export
from tests.fakes.pictures import make_images

ROLES = ("stage1", "stage2", "baseline")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    native = shared_export(tmp_path_factory)[1]
    decomposed = shared_export(tmp_path_factory, target_trt="8.5")[1]
    return {"native": native, "decomposed": decomposed}


@pytest.fixture(scope="module")
def real_images(tmp_path_factory):
    """Generated pictures (gradients and shapes), preprocessed the DeiT way at the tiny model's 128 px."""
    folder = tmp_path_factory.mktemp("pictures")
    cfg = PreprocessConfig(input_size=128, resize_size=146)
    arrays = [preprocess(load_image(p), cfg) for p in make_images(folder, count=12)]
    return torch.from_numpy(np.stack(arrays))


def types_of(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in [*g.input, *g.value_info, *g.output]:
        types[v.name] = v.type.tensor_type.elem_type
    return types


@pytest.mark.parametrize("role", ROLES)
def test_fp16_graph_keeps_islands_io_and_integers_in_their_types(exports, role):
    original = onnx.load(str(exports["native"] / f"{role}.onnx"))
    conversion = convert_to_fp16(original)  # runs onnx.checker (full check) itself
    model = conversion.model
    io = lambda m: {v.name: v.type.tensor_type.elem_type for v in [*m.graph.input, *m.graph.output]}  # noqa: E731
    assert io(model) == io(original)  # the runtime contract is unchanged
    types = types_of(model)
    island = {original.graph.node[i].name for i in conversion.islands.nodes}
    for node in model.graph.node:
        floats = {types.get(n) for n in [*node.input, *node.output] if types.get(n) in (1, 10)}
        if node.op_type == "Cast" or not floats:
            continue
        # every node computes in one type: float32 in the islands, float16 elsewhere
        assert floats == ({TensorProto.FLOAT} if node.name in island else {TensorProto.FLOAT16}), node.name
        if node.op_type in ("LayerNormalization", "Softmax", "ReduceMax", "TopK", "ArgMax"):
            assert node.name in island
        if node.op_type in ("Gemm", "Conv", "Erf") or node.name.endswith("qkv/MatMul"):
            assert node.name not in island
    ints = {t.name: t for t in original.graph.initializer if t.data_type != TensorProto.FLOAT}
    for t in model.graph.initializer:
        if t.name in ints:
            assert t == ints[t.name]  # integer tensors untouched
    assert conversion.initializers > 0 and conversion.casts > 0
    counts = conversion.islands.counts()
    assert counts["layernorm"] == sum(n.op_type == "LayerNormalization" for n in original.graph.node)
    if role == "stage1":
        assert counts["gate"] == 2 and counts["token-score"] > 0
    else:
        assert "gate" not in counts and "token-score" not in counts


def test_decomposed_layernorm_is_found(exports):
    model = onnx.load(str(exports["decomposed"] / "stage1.onnx"))
    assert "LayerNormalization" not in {n.op_type for n in model.graph.node}
    found = decomposed_layernorms(model.graph)
    # 9 LayerNorms (2 per block x 4 + the final norm), each ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, *w, +b
    assert len(found) == 9 * 9
    assert {model.graph.node[i].op_type for i in found} == {"ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Div"}
    assert fp32_islands(model).counts()["layernorm"] == 81
    convert_to_fp16(model)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["native", "decomposed"])
def test_fp16_graphs_agree_with_fp32_on_real_images(exports, real_images, tmp_path, kind):
    folder = exports[kind]
    runners = {}
    for role in ("stage1", "stage2"):
        entry = Manifest.load(folder).graphs[role]
        path = tmp_path / f"{role}.onnx"
        onnx.save(convert_to_fp16(onnx.load(str(folder / f"{role}.onnx"))).model, str(path))
        runners[f"{role}32"] = OnnxRuntimeRunner(
            folder / f"{role}.onnx", entry.inputs, entry.outputs, threads=1
        )
        runners[f"{role}16"] = OnnxRuntimeRunner(path, entry.inputs, entry.outputs, threads=1)
    ref = EarlyExitPipeline(runners["stage132"], runners["stage232"], 0.5)
    half = EarlyExitPipeline(runners["stage116"], runners["stage216"], 0.5)
    x = np.asarray(real_images)  # runners take numpy
    with ref, half:
        s1 = runners["stage132"].infer({"image": x})
        s1h = runners["stage116"].infer({"image": x})
        for th in (0.5, mixed_threshold(s1["confidence"])):
            a, b = ref.run(x, th), half.run(x, th)
            diff = float(np.abs(a.logits - b.logits).max())
            top1 = float((a.logits.argmax(1) == b.logits.argmax(1)).mean())
            exits = float((a.stage == b.stage).mean())
            print(
                f"{kind} fp16 vs fp32 @ {th:.3f}: max|dlogit| {diff:.2e}, top-1 {top1:.3f}, exit {exits:.3f}"
            )
            assert diff < 0.05 and top1 == 1.0 and exits == 1.0
        assert float(np.abs(s1["confidence"] - s1h["confidence"]).max()) < 5e-3
        np.testing.assert_array_equal(np.sort(s1["target_index"], 1), np.sort(s1h["target_index"], 1))


def test_rewrite_details_on_a_small_graph():
    """Outputs of float16 nodes get a Cast back; an initializer used on both sides is duplicated."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "W")
    g = numpy_helper.from_array(np.full(4, 1.5, np.float32), "g")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    big = numpy_helper.from_array(np.array([1e6, -1e6, 2.0, 3.0], np.float32), "big")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"], name="mm"),
        helper.make_node("LayerNormalization", ["a", "g", "b"], ["n"], name="ln", axis=-1),
        helper.make_node("Mul", ["n", "g"], ["c"], name="scale"),
        helper.make_node("Add", ["c", "big"], ["y"], name="shift"),
        helper.make_node("ArgMax", ["c"], ["i64"], name="argmax", axis=1, keepdims=0),
        helper.make_node("Cast", ["i64"], ["index"], name="to_int", to=TensorProto.INT32),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("index", TensorProto.INT32, ["batch"]),
        ],
        [w, g, b, big],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    conversion = convert_to_fp16(model)
    out = conversion.model
    inits = {t.name: t for t in out.graph.initializer}
    assert inits["W"].data_type == TensorProto.FLOAT16
    assert inits["g"].data_type == TensorProto.FLOAT and inits["g__fp16"].data_type == TensorProto.FLOAT16
    assert numpy_helper.to_array(inits["big"]).tolist()[:2] == [65504.0, -65504.0] and conversion.clipped == 2
    producer = {o: n for n in out.graph.node for o in n.output}
    assert producer["y"].op_type == "Cast" and producer["y"].input == ["y__fp16"]
    assert producer["index"].op_type == "Cast" and producer["index"].input == ["i64"]  # integers untouched
    assert producer["n"].op_type == "LayerNormalization" and producer["n"].input[0] == "a__to_fp32"
    x = rng.standard_normal((3, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    assert got[0].dtype == np.float32 and got[1].dtype == np.int32
    np.testing.assert_allclose(got[0][:, 2:], want[0][:, 2:], atol=2e-2)
    assert (got[1] == want[1]).all()
