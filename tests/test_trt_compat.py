"""The static TensorRT parser check: one hand-made graph per rule, the CLI, and the real exported graphs."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.manifest import ArtifactError, ArtifactFile, ExporterInfo, Manifest, sha256_file
from sacvit_deploy.export import trt_support as ts
from sacvit_deploy.export.trt_compat import Problem, check_folder, check_model
from sacvit_deploy.model import tiny_config
from sacvit_deploy.model.graphs import graph_specs
from sacvit_deploy.model.layers import set_fused_attn
from tests.conftest import make_tiny

VERSIONS = ts.VERSIONS
FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
runner = CliRunner()


# ---- graph building --------------------------------------------------------------------------------
def vinfo(name: str, dtype: int = FLOAT, shape=("N", 4)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def const(name: str, values, dtype=np.int64) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def model(
    nodes, inputs=None, outputs=None, inits=(), opset: int = 17, domains=(), functions=()
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs or [vinfo("x")], outputs or [vinfo("y")], initializer=list(inits)
    )
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    m = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    m.ir_version = 8
    return m


def clean_model() -> onnx.ModelProto:
    """A ViT-ish clean graph: MatMul, Add, Erf-GELU, Softmax, TopK with an initializer K."""
    return model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Erf", ["h"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "h"], ["a"], name="add"),
            helper.make_node("Softmax", ["a"], ["y"], name="softmax", axis=-1),
            helper.make_node("TopK", ["y", "k"], ["vals", "idx"], name="topk", axis=1),
        ],
        outputs=[vinfo("y"), vinfo("vals", FLOAT, ("N", 2))],
        inits=[const("w", np.eye(4), np.float32), const("k", [2])],
    )


def rules(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.rule, p.severity) for p in problems]


def by_version(m: onnx.ModelProto) -> dict[str, list[tuple[str, str]]]:
    return {v: rules(check_model(m, v)) for v in VERSIONS}


# ---- the support table -----------------------------------------------------------------------------
def test_support_table_facts():
    assert [ts.support(v).max_opset for v in VERSIONS] == [17, 17, 20, 24]
    assert ts.support("10").min_opset == 9
    assert "LayerNormalization" not in ts.support("8.5").ops
    assert "LayerNormalization" in ts.support("8.6").ops
    assert "Attention" not in ts.support("10").ops and "Attention" in ts.support("11").ops
    # Every later version parses what an earlier one does.
    for older, newer in itertools.pairwise(VERSIONS):
        assert ts.support(older).ops <= ts.support(newer).ops
    with pytest.raises(ValueError, match="unknown TensorRT version '9'"):
        ts.support("9")


# ---- rules -------------------------------------------------------------------------------------------
def test_clean_graph_passes_every_version():
    assert by_version(clean_model()) == {v: [] for v in VERSIONS}


def test_unsupported_op_from_a_later_version():
    # ONNX Attention (opset 23) needs TensorRT 10.14+: an error for "10" (10.0-10.3), fine for 11.
    q = [vinfo(n, FLOAT, (1, 2, 3, 4)) for n in ("q", "k", "v")]
    m = model([helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")], q, [vinfo("y")], opset=23)
    problems = check_model(m, "10")
    assert rules(problems) == [("opset", "error"), ("unsupported-op", "error")]
    assert problems[1].node == "attn" and "10.14" in problems[1].message and "--trt 11" in problems[1].fix
    assert check_model(m, "11") == []
    # CastLike (opset 15) is in the 10.0 table but not in 8.6's.
    m = model([helper.make_node("CastLike", ["x", "x"], ["y"], name="cl")], opset=15)
    assert by_version(m) == {
        "8.5": [("unsupported-op", "error")],
        "8.6": [("unsupported-op", "error")],
        "10": [],
        "11": [],
    }


def test_custom_domain_op_is_an_error():
    node = helper.make_node("FusedGemm", ["x", "x"], ["y"], name="fg", domain="com.microsoft")
    problems = check_model(model([node], domains=["com.microsoft"]), "11")
    assert rules(problems) == [("custom-op", "error")]
    assert "com.microsoft::FusedGemm" in problems[0].message


@pytest.mark.parametrize(
    ("opset", "expected"),
    [
        (18, {"8.5": True, "8.6": True, "10": False, "11": False}),
        (8, {"8.5": False, "8.6": False, "10": True, "11": True}),
    ],
)
def test_opset_range(opset, expected):
    m = model([helper.make_node("Relu", ["x"], ["y"], name="relu")], opset=opset)
    for v in VERSIONS:
        assert (("opset", "error") in rules(check_model(m, v))) == expected[v], v


def topk_model(k_nodes, k_name="k", inits=(), sorted_=1, width=8) -> onnx.ModelProto:
    return model(
        [*k_nodes, helper.make_node("TopK", ["x", k_name], ["y", "i"], name="topk", axis=1, sorted=sorted_)],
        inputs=[vinfo("x", FLOAT, ("N", width))],
        outputs=[vinfo("y", FLOAT, ("N", None))],
        inits=inits,
    )


def test_topk_k_initializer_or_constant_passes_8_5():
    assert check_model(topk_model([], inits=[const("k", [2])]), "8.5") == []
    k_node = helper.make_node("Constant", [], ["k"], name="kc", value=const("kv", [2]))
    assert check_model(topk_model([k_node]), "8.5") == []


def test_topk_k_from_shape_fails_8_5_passes_8_6():
    k_nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "one"], ["d"], name="dim", axis=0),
        helper.make_node("Unsqueeze", ["d", "zero"], ["k"], name="k"),
    ]
    m = topk_model(k_nodes, inits=[const("one", 1), const("zero", [0])])
    problems = check_model(m, "8.5")
    assert rules(problems) == [("topk-dynamic-k", "error")] and problems[0].node == "topk"
    assert check_model(m, "8.6") == []


def test_topk_k_limit_and_unsorted():
    m = topk_model([], inits=[const("k", [3840])], width=5000)
    assert by_version(m) == {v: [("topk-k-limit", "error")] for v in VERSIONS}
    m = topk_model([], inits=[const("k", [3839])], width=5000, sorted_=0)
    assert by_version(m) == {v: [("topk-unsorted", "warning")] for v in VERSIONS}


def layernorm_node(outputs=("y",)) -> onnx.NodeProto:
    return helper.make_node("LayerNormalization", ["x", "g", "b"], list(outputs), name="ln", axis=-1)


LN_INITS = [const("g", np.ones(4), np.float32), const("b", np.zeros(4), np.float32)]


def test_layernorm_on_8_5():
    problems = check_model(model([layernorm_node()], inits=LN_INITS), "8.5")
    assert rules(problems) == [("layernorm", "error")]
    assert problems[0].fix == "re-export with `sacvit-deploy export --target-trt 8.5` (decomposed LayerNorm)"
    assert check_model(model([layernorm_node()], inits=LN_INITS), "8.6") == []


def test_layernorm_statistics_outputs():
    m = model([layernorm_node(("y", "mean", "inv_std"))], inits=LN_INITS)
    assert rules(check_model(m, "10")) == [("layernorm-outputs", "error")]


def test_nonzero_data_dependent_shape():
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"], name="nz"),
        helper.make_node("Cast", ["nz"], ["y"], name="to32", to=TensorProto.INT32),
    ]
    m = model(nodes, outputs=[vinfo("y", TensorProto.INT32, (2, None))])
    assert by_version(m) == {
        "8.5": [("data-dependent-shape", "error")],
        "8.6": [("data-dependent-shape", "warning")],
        "10": [("data-dependent-shape", "warning")],
        "11": [("data-dependent-shape", "warning")],
    }


def scatter_model(op: str, reduction: str | None) -> onnx.ModelProto:
    """Scatter one row of ones into x (N, 4), with or without a ``reduction`` attribute."""
    extra = {} if reduction is None else {"reduction": reduction}
    idx = const("idx", [[0]] if op == "ScatterND" else [[0, 1, 2, 3]])
    upd = const("upd", np.ones((1, 4)), np.float32)
    node = helper.make_node(op, ["x", "idx", "upd"], ["y"], name="scatter", **extra)
    return model([node], inits=[idx, upd], opset=16)


def test_scatter_reduction():
    assert by_version(scatter_model("ScatterElements", "add")) == {
        "8.5": [("scatter-reduction", "error")],  # silently ignored by 8.x
        "8.6": [("scatter-reduction", "error")],
        "10": [("scatter-reduction", "warning")],  # ScatterElements plugin
        "11": [("scatter-reduction", "warning")],
    }
    assert by_version(scatter_model("ScatterND", "mul")) == {
        v: [("scatter-reduction", "error")] for v in VERSIONS
    }
    # 10.0/10.1 reject any reduction attribute on ScatterND, even "none".
    assert by_version(scatter_model("ScatterND", "none")) == {
        "8.5": [],
        "8.6": [],
        "10": [("scatter-reduction", "error")],
        "11": [],
    }
    assert by_version(scatter_model("ScatterElements", None)) == {v: [] for v in VERSIONS}


def test_gridsample_warns():
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="gs")
    m = model(
        [node],
        inputs=[vinfo("x", FLOAT, (1, 1, 4, 4)), vinfo("grid", FLOAT, (1, 4, 4, 2))],
        outputs=[vinfo("y", FLOAT, (1, 1, 4, 4))],
        opset=16,
    )
    assert by_version(m) == {v: [("gridsample", "warning")] for v in VERSIONS}


def test_int64_io_warns_on_8x_only():
    m = model(
        [helper.make_node("Cast", ["ids"], ["y"], name="to32", to=TensorProto.INT32)],
        inputs=[vinfo("ids", INT64, ("N", 4))],
        outputs=[vinfo("y", TensorProto.INT32, ("N", 4))],
    )
    problems = check_model(m, "8.5")
    assert rules(problems) == [("int64-io", "warning")]
    assert "ids" in problems[0].message and "int32" in problems[0].fix
    assert check_model(m, "10") == [] and check_model(m, "11") == []


def test_int64_cast_warns_on_8x_only_for_data():
    data = helper.make_node("Cast", ["x"], ["y"], name="to64", to=INT64)
    m = model([data], outputs=[vinfo("y", INT64, ("N", 4))])
    assert by_version(m)["8.6"] == [("int64-io", "warning"), ("int64-cast", "warning")]
    assert by_version(m)["10"] == []
    # Shape arithmetic (a scalar) is what every 8.x graph does: no warning.
    shape_math = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["d"], name="d", axis=0),
        helper.make_node("Cast", ["d"], ["df"], name="tof", to=FLOAT),
        helper.make_node("Cast", ["df"], ["d64"], name="to64", to=INT64),
        helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape"),
    ]
    m = model(shape_math, inits=[const("zero", 0), const("shape", [-1, 4])])
    assert check_model(m, "8.5") == []


def test_widening_int32_to_int64_is_lossless_on_8x():
    # torch.gather needs int64 indices: a graph that keeps indices in int32 widens them just before.
    node = helper.make_node("Cast", ["idx"], ["y"], name="widen", to=INT64)
    m = model(
        [node, helper.make_node("Cast", ["y"], ["z"], name="back", to=TensorProto.INT32)],
        inputs=[vinfo("idx", TensorProto.INT32, ("N", 4))],
        outputs=[vinfo("z", TensorProto.INT32, ("N", 4))],
    )
    assert check_model(m, "8.5") == [] and check_model(m, "8.6") == []


def test_int64_initializer_larger_than_a_shape_warns_on_8x():
    table = const("table", np.arange(64).reshape(16, 4))
    node = helper.make_node("Gather", ["table", "idx"], ["y"], name="gather", axis=0)
    m = model(
        [node],
        inputs=[vinfo("idx", TensorProto.INT32, ("N",))],
        outputs=[vinfo("y", INT64, ("N", 4))],
        inits=[table],
    )
    problems = check_model(m, "8.5")
    assert rules(problems) == [("int64-io", "warning"), ("int64-initializer", "warning")]
    assert "'table'" in problems[1].message and "lossless" in problems[1].message
    assert check_model(m, "10") == []
    # The same table as a Constant node, with a value INT32 cannot hold.
    big = helper.make_node("Constant", [], ["table"], name="tc", value=const("t", [[2**40] * 4] * 16))
    m = model([big, node], inputs=m.graph.input, outputs=[vinfo("y", TensorProto.INT32, ("N", 4))])
    m.graph.node[1].input[0] = "table"
    problems = check_model(m, "8.6")
    assert [(p.rule, p.node) for p in problems] == [("int64-initializer", "tc")]
    assert "CLAMPED" in problems[0].message


def test_double_tensors_warn():
    cast = helper.make_node("Cast", ["x"], ["xd"], name="tod", to=TensorProto.DOUBLE)
    back = helper.make_node("Cast", ["xd"], ["y"], name="tof", to=FLOAT)
    m = model([cast, back], inits=[const("unused", [1.0], np.float64)])
    for v in VERSIONS:
        problems = check_model(m, v)
        assert rules(problems) == [("double", "warning")] * 2, v
        assert {p.node for p in problems} == {"", "tod"}


def test_bfloat16_is_an_error_on_8x():
    node = helper.make_node("Cast", ["x"], ["y"], name="tobf16", to=TensorProto.BFLOAT16)
    m = model([node], outputs=[vinfo("y", TensorProto.BFLOAT16, ("N", 4))])
    assert by_version(m) == {
        "8.5": [("unsupported-dtype", "error")],
        "8.6": [("unsupported-dtype", "error")],
        "10": [],
        "11": [],
    }


def test_axes_computed_at_run_time():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "zero", "one"], ["axes"], name="axes"),
        helper.make_node("Sub", ["axes", "axes"], ["ax0"], name="ax0"),
        helper.make_node("Unsqueeze", ["x", "ax0"], ["y"], name="unsq"),
    ]
    m = model(nodes, inits=[const("zero", [0]), const("one", [1])], outputs=[vinfo("y", FLOAT, (1, "N", 4))])
    assert by_version(m) == {
        "8.5": [("const-input", "error")],
        "8.6": [("const-input", "error")],
        "10": [("const-input", "error")],
        "11": [],
    }
    reduce = [*nodes[:3], helper.make_node("ReduceSum", ["x", "ax0"], ["y"], name="rsum")]
    m = model(reduce, inits=[const("zero", [0]), const("one", [1])], outputs=[vinfo("y", FLOAT, (1, 4))])
    problems = check_model(m, "11")
    assert rules(problems) == [("const-input", "error")] and problems[0].node == "rsum"


def test_squeeze_without_axes_on_dynamic_dims():
    m = model([helper.make_node("Squeeze", ["x"], ["y"], name="sq")], inputs=[vinfo("x", FLOAT, ("N", 1, 4))])
    assert by_version(m) == {v: [("const-input", "error")] for v in VERSIONS}
    static = model(
        [helper.make_node("Squeeze", ["x"], ["y"], name="sq")],
        inputs=[vinfo("x", FLOAT, (2, 1, 4))],
        outputs=[vinfo("y", FLOAT, (2, 4))],
    )
    assert check_model(static, "8.5") == []


def if_model(cond_const: bool) -> onnx.ModelProto:
    """What the legacy exporter makes of `.squeeze(1)` on a dim it cannot prove is 1."""
    then_g = helper.make_graph(
        [helper.make_node("Squeeze", ["x", "axes"], ["t"], name="sq")],
        "then",
        [],
        [vinfo("t", FLOAT, ("N",))],
        initializer=[const("axes", [1])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="id")], "else", [], [vinfo("e", FLOAT, ("N", 1))]
    )
    nodes = [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)]
    inits = []
    inputs = [vinfo("x", FLOAT, ("N", 1))]
    if cond_const:
        inits.append(numpy_helper.from_array(np.array(True), "cond"))
    else:
        inputs.append(vinfo("cond", TensorProto.BOOL, ()))
    return model(nodes, inputs=inputs, outputs=[helper.make_tensor_value_info("y", FLOAT, None)], inits=inits)


def test_if_branches_of_different_rank():
    problems = check_model(if_model(cond_const=False), "10")
    assert rules(problems) == [("if-branch-rank", "error")] and problems[0].node == "if"
    # A constant condition: the parser imports only the chosen branch.
    assert by_version(if_model(cond_const=True)) == {v: [] for v in VERSIONS}


def test_subgraphs_are_walked():
    body = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["u"], name="uniq")], "then", [], [vinfo("u", FLOAT, None)]
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["o"], name="id")], "else", [], [vinfo("o", FLOAT, None)]
    )
    node = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=body, else_branch=other)
    m = model([node], inits=[numpy_helper.from_array(np.array(True), "cond")])
    problems = check_model(m, "11")
    assert [(p.rule, p.node, p.op) for p in problems] == [("unsupported-op", "if/then_branch/uniq", "Unique")]


def test_resize_modes():
    def resize(**attrs):
        node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", **attrs)
        x = vinfo("x", FLOAT, (1, 1, 4, 4))
        return model(
            [node],
            inputs=[x],
            outputs=[vinfo("y", FLOAT, (1, 1, 8, 8))],
            inits=[const("scales", [1, 1, 2, 2], np.float32)],
            opset=18,
        )

    assert check_model(resize(mode="cubic"), "10") == []
    assert check_model(resize(mode="linear", coordinate_transformation_mode="align_corners"), "10") == []
    problems = check_model(resize(mode="linear", antialias=1), "10")
    assert rules(problems) == [("resize-mode", "error")] and "antialias=1" in problems[0].message
    assert rules(check_model(resize(coordinate_transformation_mode="tf_crop_and_resize"), "11")) == [
        ("resize-mode", "error")
    ]


def test_einsum_diagonal_and_ellipsis():
    def einsum(eq: str) -> onnx.ModelProto:
        node = helper.make_node("Einsum", ["x"], ["y"], name="es", equation=eq)
        return model(
            [node], inputs=[vinfo("x", FLOAT, (2, 3, 3))], outputs=[vinfo("y", FLOAT, None)], opset=17
        )

    assert by_version(einsum("bii->bi")) == {
        "8.5": [("einsum", "error")],
        "8.6": [("einsum", "error")],
        "10": [("einsum", "error")],
        "11": [],
    }
    assert rules(check_model(einsum("...ij->...ji"), "8.6")) == [("einsum", "error")]
    assert check_model(einsum("bij->bji"), "8.5") == []


def test_local_functions():
    func = helper.make_function(
        "custom",
        "MyRelu",
        ["a"],
        ["b"],
        [helper.make_node("Relu", ["a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    call = helper.make_node("MyRelu", ["x"], ["y"], name="call", domain="custom")
    m = model([call], domains=["custom"], functions=[func])
    assert by_version(m) == {
        "8.5": [("local-function", "error")],
        "8.6": [("local-function", "error")],
        "10": [],
        "11": [],
    }
    # The body is checked on the versions that expand functions.
    func.node[0].op_type = "Unique"
    m = model([call], domains=["custom"], functions=[func])
    problems = check_model(m, "10")
    assert [(p.rule, p.node) for p in problems] == [("unsupported-op", "call/Unique#0")]


def test_problem_line_format():
    p = Problem("error", "topk-dynamic-k", "topk", "TopK", "K is dynamic", "make K constant")
    assert (
        p.line("stage1.onnx")
        == "stage1.onnx: error [topk-dynamic-k] node 'topk' (TopK): K is dynamic — fix: make K constant"
    )
    g = Problem("warning", "int64-io", "", "", "graph input 'ids' is INT64", "export int32")
    assert (
        g.line("stage2.onnx")
        == "stage2.onnx: warning [int64-io]: graph input 'ids' is INT64 — fix: export int32"
    )
    assert p.to_dict()["rule"] == "topk-dynamic-k" and p.is_error and not g.is_error


def test_unreadable_file_is_an_artifact_error(tmp_path):
    bad = tmp_path / "stage1.onnx"
    bad.write_bytes(b"\x08\x07garbage\xff\xff\xff")
    with pytest.raises(ArtifactError, match=r"stage1\.onnx: not"):
        check_model(bad, "10")
    bad.write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"stage1\.onnx: not an ONNX graph"):
        check_model(str(bad), "10")
    with pytest.raises(ArtifactError, match="missing"):
        check_model(tmp_path / "nope.onnx", "10")


# ---- folders and the CLI -------------------------------------------------------------------------------
def write_folder(folder, graphs: dict[str, onnx.ModelProto | bytes], target_trt: str | None = None) -> None:
    folder.mkdir(exist_ok=True)
    cfg = tiny_config()
    entries = {}
    for role, m in graphs.items():
        path = folder / f"{role}.onnx"
        path.write_bytes(m if isinstance(m, bytes) else m.SerializeToString())
        entries[role] = ArtifactFile(
            file=path.name,
            sha256=sha256_file(path),
            size=path.stat().st_size,
            # The manifest describes the designed graphs (what its validation checks); the check
            # itself reads the ONNX files, which are the small test graphs.
            inputs=graph_specs(cfg, role)[0],
            outputs=graph_specs(cfg, role)[1],
        )
    exporter = ExporterInfo(opset=17, target_trt=target_trt, layernorm="native") if target_trt else None
    Manifest(model=cfg, source_format="sacvit", exit_threshold=0.5, graphs=entries, exporter=exporter).save(
        folder
    )


def test_check_folder(tmp_path):
    write_folder(tmp_path, {"stage1": clean_model(), "stage2": model([layernorm_node()], inits=LN_INITS)})
    assert check_folder(tmp_path, "8.6") == {"stage1": [], "stage2": []}
    result = check_folder(tmp_path, "8.5")
    assert result["stage1"] == [] and rules(result["stage2"]) == [("layernorm", "error")]


def test_cli_groups_the_same_problem_on_many_nodes(tmp_path):
    report_path = tmp_path.parent / f"{tmp_path.name}-report.json"  # never inside the artifact folder
    chain = [
        helper.make_node("LayerNormalization", [src, "g", "b"], [dst], name=f"ln{i}", axis=-1)
        for i, (src, dst) in enumerate([("x", "a"), ("a", "c"), ("c", "y")])
    ]
    write_folder(tmp_path, {"stage1": model(chain, inits=LN_INITS), "stage2": clean_model()})
    result = runner.invoke(app, ["check", str(tmp_path), "--trt", "8.5", "--json", str(report_path)])
    assert result.exit_code == 2, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "stage1.onnx: error [layernorm] 3 nodes (LayerNormalization), e.g. 'ln0': LayerNormalization"
    )
    assert lines[1:] == [
        "stage1.onnx: will NOT parse on TensorRT 8.5 (3 errors)",
        "stage2.onnx: parses on TensorRT 8.5",
        "verdict: FAIL (parser check: some graph will NOT parse on TensorRT 8.5; exit code 2)",
    ]
    # the JSON report keeps every node
    report = json.loads(report_path.read_text())
    assert [p["node"] for p in report["results"][0]["problems"]] == ["ln0", "ln1", "ln2"]


def test_cli_clean_folder_exits_0(tmp_path):
    write_folder(tmp_path, {"stage1": clean_model(), "stage2": clean_model()})
    result = runner.invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines == [f"stage{s}.onnx: parses on TensorRT {v}" for v in VERSIONS for s in (1, 2)] + [
        f"verdict: OK (parser check: every graph parses on TensorRT {', '.join(VERSIONS)}; exit code 0)"
    ]


def test_cli_reports_problems_and_exits_2(tmp_path):
    report_path = tmp_path.parent / f"{tmp_path.name}-report.json"  # never inside the artifact folder
    write_folder(tmp_path, {"stage1": model([layernorm_node()], inits=LN_INITS), "stage2": clean_model()})
    result = runner.invoke(app, ["check", str(tmp_path), "--trt", "8.5", "--json", str(report_path)])
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines() == [
        "stage1.onnx: error [layernorm] node 'ln' (LayerNormalization): LayerNormalization (opset 17) is not "
        "supported by the TensorRT 8.5 parser — fix: re-export with `sacvit-deploy export --target-trt 8.5` "
        "(decomposed LayerNorm)",
        "stage1.onnx: will NOT parse on TensorRT 8.5 (1 error)",
        "stage2.onnx: parses on TensorRT 8.5",
        "verdict: FAIL (parser check: some graph will NOT parse on TensorRT 8.5; exit code 2)",
    ]
    report = json.loads(report_path.read_text())
    first = report["results"][0]
    assert (first["graph"], first["trt"], first["parses"]) == ("stage1.onnx", "8.5", False)
    assert first["problems"][0]["rule"] == "layernorm"
    # The same folder parses on 8.6 and 10: repeated and comma-separated --trt both work.
    for args in (["--trt", "8.6,10"], ["--trt", "8.6", "--trt", "10"]):
        result = runner.invoke(app, ["check", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        assert "stage1.onnx: parses on TensorRT 10" in result.stdout
        assert "TensorRT 8.5" not in result.stdout


def test_cli_default_families_follow_the_export_target(tmp_path):
    """Without --trt, a family older than the export's target is a note, not exit 2 (issue 24)."""
    write_folder(tmp_path, {"stage1": model([layernorm_node()], inits=LN_INITS)}, target_trt="10")
    result = runner.invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (
        "stage1.onnx: will NOT parse on TensorRT 8.5 (1 error); not a target of this export" in result.stdout
    )
    assert result.stdout.splitlines()[-1] == (
        "verdict: OK (parser check: every graph parses on TensorRT 8.6, 10, 11; exit code 0)"
    )
    assert "for 8.5, export with --target-trt 8.5" in result.stderr
    # Named, the family counts.
    result = runner.invoke(app, ["check", str(tmp_path), "--trt", "8.5"])
    assert result.exit_code == 2 and result.stdout.splitlines()[-1].startswith("verdict: FAIL")
    # A failure on the target itself (or a later family) always counts.
    write_folder(tmp_path, {"stage1": model([layernorm_node()], inits=LN_INITS)}, target_trt="8.5")
    result = runner.invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 2, result.output


def test_cli_warnings_keep_exit_0(tmp_path):
    gs = helper.make_node("GridSample", ["x", "grid"], ["y"], name="gs")
    m = model(
        [gs],
        inputs=[vinfo("x", FLOAT, (1, 1, 4, 4)), vinfo("grid", FLOAT, (1, 4, 4, 2))],
        outputs=[vinfo("y", FLOAT, (1, 1, 4, 4))],
        opset=16,
    )
    write_folder(tmp_path, {"stage1": m})
    result = runner.invoke(app, ["check", str(tmp_path), "--trt", "11"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-2] == "stage1.onnx: parses on TensorRT 11 (1 warning)"
    assert result.stdout.startswith("stage1.onnx: warning [gridsample] node 'gs' (GridSample): ")


def test_cli_user_errors_exit_1(tmp_path):
    result = runner.invoke(app, ["check", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no such artifact folder" in result.output
    write_folder(tmp_path, {"stage1": clean_model()})
    # A typo in an option is a usage error: exit 2, like every other command's bad option value.
    result = runner.invoke(app, ["check", str(tmp_path), "--trt", "8.5,9"])
    assert result.exit_code == 2 and "'9' is not one of 8.5, 8.6, 10, 11" in result.output
    (tmp_path / "stage1.onnx").write_bytes(onnx.ModelProto().SerializeToString() + b"tampered")
    result = runner.invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 1 and "sha256 mismatch" in result.output
    # A listed, untampered file that is not ONNX at all: one line naming it.
    write_folder(tmp_path, {"stage1": b"\x08\x07garbage\xff\xff"})
    result = runner.invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 1 and "stage1.onnx: not" in result.output
    assert "Traceback" not in result.output


# ---- the real graphs -------------------------------------------------------------------------------------
class _Stage1(torch.nn.Module):
    def __init__(self, m) -> None:
        super().__init__()
        self.m = m

    def forward(self, image):
        return tuple(self.m.forward_stage1(image))  # a NamedTuple is not an ONNX output


class _Stage2(torch.nn.Module):
    def __init__(self, m) -> None:
        super().__init__()
        self.m = m

    def forward(self, image, target_index, nontarget_tokens, target_features):
        return self.m.forward_stage2(image, target_index, nontarget_tokens, target_features)


@pytest.fixture(scope="module")
def tiny_sacvit():
    """The tiny SAC-ViT with the explicit attention path, an image batch and its stage-1 outputs."""
    m = make_tiny("sacvit")
    set_fused_attn(m, False)
    image = torch.randn(2, 3, 128, 128)  # batch >= 2 keeps the batch dim dynamic
    with torch.no_grad():
        return m, image, m.forward_stage1(image)


def _export(module, args, input_names, output_names) -> onnx.ModelProto:
    """As the lead's exporter will: legacy exporter, opset 17, dynamic batch."""
    buffer = io.BytesIO()
    torch.onnx.export(
        module, args, buffer, dynamo=False, opset_version=17, input_names=input_names,
        output_names=output_names, dynamic_axes={n: {0: "batch"} for n in [*input_names, *output_names]},
    )  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


def assert_parses_on_8_6_and_later(graph: onnx.ModelProto) -> None:
    for v in ("8.6", "10", "11"):
        errors = [p for p in check_model(graph, v) if p.is_error]
        assert errors == [], (v, errors)
    # 8.5: only LayerNormalization (the 8.5 exporter decomposes it).
    errors = [p for p in check_model(graph, "8.5") if p.is_error]
    assert errors and {p.rule for p in errors} == {"layernorm"}


def test_real_stage1_graph(tiny_sacvit):
    m, image, s1 = tiny_sacvit
    graph = _export(_Stage1(m), (image,), ["image"], list(s1._fields))
    assert_parses_on_8_6_and_later(graph)
    assert check_model(graph, "10") == []
    ops = {n.op_type for n in graph.graph.node}
    assert "TopK" in ops and "If" not in ops and "NonZero" not in ops
    # K reaches TopK as a Constant node (8.5 accepts that as well as an initializer).
    topk = next(n for n in graph.graph.node if n.op_type == "TopK")
    producers = {o: n.op_type for n in graph.graph.node for o in n.output}
    assert producers.get(topk.input[1]) == "Constant"


def test_real_stage2_graph(tiny_sacvit):
    m, image, s1 = tiny_sacvit
    names = ["image", "target_index", "nontarget_tokens", "target_features"]
    args = (image, s1.target_index, s1.nontarget_tokens, s1.target_features)
    graph = _export(_Stage2(m), args, names, ["logits"])
    assert_parses_on_8_6_and_later(graph)
    # int32 indices: the inputs and the fine-index table are int32; the one INT64 is torch.gather's
    # index, a lossless Cast from int32, so 8.x has nothing to warn about.
    assert check_model(graph, "8.6") == []
    casts = [n for n in graph.graph.node if n.op_type == "Cast" and n.attribute[0].i == INT64]
    assert casts and not [i for i in graph.graph.initializer if i.data_type == INT64 and len(i.dims) > 1]
    assert check_model(graph, "10") == []
