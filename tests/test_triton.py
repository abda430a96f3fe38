"""`sacvit-deploy triton`: the model repository, its checks, the BLS gate and `infer --triton`.

No Triton server runs here. Configs are parsed with Triton's own protobuf schema (from tritonclient);
the BLS ``model.py`` runs from the written repository against a fake ``triton_python_backend_utils``
whose stage requests run the repository's ONNX files with ONNX Runtime (tests/fake_triton.py), and its
answers are compared with the local EarlyExitPipeline on the same inputs.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import socket
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sacvit_deploy.cli import app
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.manifest import ArtifactError, ArtifactFile, Manifest, TensorRTInfo
from sacvit_deploy.core.publish import publish, staging_folder
from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
from sacvit_deploy.runtime.loader import open_pipeline
from sacvit_deploy.runtime.pipeline import mixed_threshold
from sacvit_deploy.triton.client import Endpoint, TritonClientError, open_triton
from sacvit_deploy.triton.repository import (
    INDEX_NAME,
    MODEL_JSON,
    RepositoryError,
    RepositoryIndex,
    RepositoryOptions,
    bls_source,
    stage_source,
    write_repository,
)
from tests.conftest import make_tiny


def _has_tritonclient() -> bool:
    try:
        import tritonclient.grpc.model_config_pb2  # noqa: F401
    except ImportError:
        return False
    return True


HAS_TRITONCLIENT = _has_tritonclient()
needs_schema = pytest.mark.skipif(
    not HAS_TRITONCLIENT,
    reason="tritonclient ships Triton's config schema: pip install 'sacvit-deploy[triton]'",
)
runner = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny model exported to ONNX and written as a repository (max batch 16)."""
    root = tmp_path_factory.mktemp("triton")
    model = make_tiny("sacvit")
    export_artifacts(model, root / "export", ExportOptions(weights=False), "sacvit")
    result = write_repository(root / "export", root / "repo", RepositoryOptions(max_batch=16))
    return model, root, result


@pytest.fixture(scope="module")
def local(built):
    _, root, _ = built
    opened = open_pipeline(root / "export", backend="onnxruntime", device="cpu")
    with opened.pipeline as pipe:
        yield pipe


@pytest.fixture
def server(built, monkeypatch):
    from tests.fake_triton import FakeServer

    return FakeServer(built[1] / "repo", monkeypatch)


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(7)
    return torch.randn(9, 3, 128, 128)


def bls(server, images, threshold=None):
    params = None if threshold is None else {"exit_threshold": repr(float(threshold))}
    return server.infer("sacvit", {"image": np.ascontiguousarray(images.numpy())}, None, params)


def assert_same(got, ref):
    np.testing.assert_array_equal(got["stage"].reshape(-1), ref.stage)
    np.testing.assert_allclose(got["confidence"].reshape(-1), ref.confidence, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["logits"], ref.logits, rtol=0, atol=1e-5)


def copy_repo(built, tmp_path):
    dst = tmp_path / "repo"
    shutil.copytree(built[1] / "repo", dst)
    return dst


def set_bls_param(repo, key, value):
    path = repo / "sacvit" / "config.pbtxt"
    text = path.read_text()
    start = text.index(f'key: "{key}"')
    line_start = text.index("string_value:", start)
    line_end = text.index("}", line_start)
    path.write_text(text[:line_start] + f'string_value: "{value}" ' + text[line_end:])


# ---- the repository ------------------------------------------------------------------------------------
def test_repository_layout_copies_and_index(built):
    _, root, result = built
    repo = root / "repo"
    assert sorted(p.name for p in repo.iterdir()) == sorted(
        [INDEX_NAME, "sacvit", "sacvit_stage1", "sacvit_stage2"]
    )
    for role in ("stage1", "stage2"):
        copied = repo / f"sacvit_{role}" / "1" / "model.onnx"
        assert copied.is_file() and not copied.is_symlink()
        assert copied.read_bytes() == (root / "export" / f"{role}.onnx").read_bytes()
    assert (repo / "sacvit" / "1" / "model.py").read_text() == bls_source()
    index = RepositoryIndex.load(repo)
    assert index.models == {"bls": "sacvit", "stage1": "sacvit_stage1", "stage2": "sacvit_stage2"}
    assert set(index.files) == set(result.files)
    assert not [p for p in repo.rglob("*") if p.name.startswith(".staging")]
    spec = json.loads((repo / "sacvit" / MODEL_JSON).read_text())
    assert spec["stage_models"] == {"stage1": "sacvit_stage1", "stage2": "sacvit_stage2"}
    assert spec["max_batch_size"] == 16 and spec["exit_threshold"] == 0.5
    m = Manifest.load(root / "export")
    assert spec["stage2"]["inputs"] == [t.to_dict() for t in m.graphs["stage2"].inputs]
    assert result.validated == HAS_TRITONCLIENT


@needs_schema
def test_configs_follow_tritons_schema_and_the_graphs(built):
    from tritonclient.grpc import model_config_pb2 as mc

    from sacvit_deploy.triton.validate import parse_config

    repo = built[1] / "repo"
    m = Manifest.load(built[1] / "export")
    s1 = parse_config(repo / "sacvit_stage1" / "config.pbtxt")
    assert s1.platform == "onnxruntime_onnx" and s1.max_batch_size == 16
    by_name = {t.name: t for t in s1.output}
    for spec in m.graphs["stage1"].outputs:  # dims exclude the batch axis
        t = by_name[spec.name]
        assert list(t.dims) == (list(spec.shape[1:]) or [1])
    assert by_name["confidence"].HasField("reshape") and list(by_name["confidence"].reshape.shape) == []
    assert mc.DataType.Name(by_name["target_index"].data_type) == "TYPE_INT32"
    assert mc.ModelInstanceGroup.Kind.Name(s1.instance_group[0].kind) == "KIND_GPU"
    assert s1.dynamic_batching.max_queue_delay_microseconds > 0
    assert not s1.dynamic_batching.preferred_batch_size  # ONNX Runtime: Triton advises none
    s2 = parse_config(repo / "sacvit_stage2" / "config.pbtxt")
    assert [t.name for t in s2.input] == ["image", "target_index", "nontarget_tokens", "target_features"]
    b = parse_config(repo / "sacvit" / "config.pbtxt")
    assert b.backend == "python" and not b.platform and b.max_batch_size == 16
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in b.output] == [
        ("logits", "TYPE_FP32", [10]),
        ("stage", "TYPE_INT32", [1]),
        ("confidence", "TYPE_FP32", [1]),
    ]
    params = {k: v.string_value for k, v in b.parameters.items()}
    assert params["exit_threshold"] == "0.5" and params["stage2_model"] == "sacvit_stage2"
    client = json.loads(params["sacvit_client"])
    assert client["model"]["preprocess"]["input_size"] == 128


@needs_schema
def test_class_names_survive_the_config_text_format(built, tmp_path):
    from sacvit_deploy.triton.client import ServedModel
    from sacvit_deploy.triton.validate import config_as_dict, parse_config

    names = ('say "cheese"', "back\\slash", "tab\there", "naïve café", "日本", "a\nb", "c", "d", "e", "f")
    model = make_tiny("sacvit", class_names=names)
    export_artifacts(model, tmp_path / "export", ExportOptions(weights=False), "sacvit")
    write_repository(tmp_path / "export", tmp_path / "repo", RepositoryOptions())
    cfg = config_as_dict(parse_config(tmp_path / "repo" / "sacvit" / "config.pbtxt"))
    assert ServedModel.from_config(cfg, "test").manifest().class_names == names


@needs_schema
def test_check_passes_and_catches_each_kind_of_damage(built, tmp_path):
    from sacvit_deploy.triton.validate import validate_repository

    assert validate_repository(built[1] / "repo").passed

    def damaged(tag, edit):
        repo = copy_repo(built, tmp_path / tag)
        edit(repo)
        return validate_repository(repo)

    def replace(path, old, new):
        path.write_text(path.read_text().replace(old, new, 1))

    s1 = "sacvit_stage1/config.pbtxt"
    r = damaged("dims", lambda p: replace(p / s1, "dims: [ 3, 128, 128 ]", "dims: [ 3, 224, 224 ]"))
    assert {(f.model, f.check) for f in r.failures} >= {("sacvit_stage1", "inputs")}
    assert any("graph inputs vs config" in f.check for f in r.failures)
    r = damaged("typo", lambda p: replace(p / s1, "max_batch_size", "max_batch"))
    assert [f.check for f in r.failures] == ["config.pbtxt parses (Triton's ModelConfig schema)"]
    r = damaged("enum", lambda p: replace(p / s1, "TYPE_INT32", "TYPE_INT33"))
    assert "TYPE_INT33" in r.failures[0].detail
    r = damaged("plan", lambda p: (p / "sacvit_stage2/1/model.onnx").write_bytes(b"not the graph"))
    assert any(f.check == "file sacvit_stage2/1/model.onnx" for f in r.failures)
    r = damaged("threshold", lambda p: set_bls_param(p, "exit_threshold", "high"))
    assert [f.check for f in r.failures] == ["parameter exit_threshold"]
    r = damaged("batch", lambda p: replace(p / s1, "max_batch_size: 16", "max_batch_size: 8"))
    assert "batch sizes" in [f.check for f in r.failures]
    r = damaged("comment", lambda p: replace(p / "sacvit/config.pbtxt", "# SAC-ViT", "# tuned: SAC-ViT"))
    assert r.passed and any(f.note for f in r.findings)


def test_rewrite_replaces_only_its_own_output(built, tmp_path):
    _, root, _ = built
    out = tmp_path / "models"
    write_repository(root / "export", out, RepositoryOptions())
    write_repository(root / "export", out, RepositoryOptions(name="vit"))  # a re-run may rename
    assert sorted(p.name for p in out.iterdir()) == sorted([INDEX_NAME, "vit", "vit_stage1", "vit_stage2"])
    (out / "notes.txt").write_text("mine")
    with pytest.raises(
        RepositoryError, match=r"holds other files \(notes.txt\); triton into an empty folder"
    ):
        write_repository(root / "export", out, RepositoryOptions())
    (tmp_path / "file").write_text("")
    with pytest.raises(RepositoryError, match="exists and is not a folder"):
        write_repository(root / "export", tmp_path / "file", RepositoryOptions())


def test_tampered_or_fixed_batch_artifacts_are_refused_before_writing(built, tmp_path):
    _, root, _ = built
    bad = tmp_path / "export"
    shutil.copytree(root / "export", bad)
    (bad / "stage2.onnx").write_bytes((bad / "stage2.onnx").read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="stage2.onnx: sha256 mismatch"):
        write_repository(bad, tmp_path / "out", RepositoryOptions())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    fixed = tmp_path / "fixed"
    export_artifacts(make_tiny("cf-vit"), fixed, ExportOptions(batch=2, weights=False), "cf-vit")
    with pytest.raises(RepositoryError, match="fixed batch .*re-export with --batch dynamic"):
        write_repository(fixed, tmp_path / "out2", RepositoryOptions())
    with pytest.raises(RepositoryError, match="--backend tensorrt runs on GPUs only"):
        write_repository(root / "export", tmp_path / "o", RepositoryOptions(backend="tensorrt", kind="cpu"))
    with pytest.raises(RepositoryError, match="lists no TensorRT engines; build them"):
        write_repository(root / "export", tmp_path / "o", RepositoryOptions(backend="tensorrt"))


def fake_engines(root, folder, min_batch=1):
    """An engines/ folder as build-engine writes it (the 'plans' are the ONNX bytes: nothing deserializes them)."""
    m = Manifest.load(root / "export")
    folder.mkdir()
    engines = {}
    for role, opt in (("stage1", 8), ("stage2", 4)):
        graph = m.graphs[role]
        shutil.copyfile(root / "export" / graph.file, folder / f"{role}.engine")
        profiles = {
            t.name: {"min": [min_batch, *t.shape[1:]], "opt": [opt, *t.shape[1:]], "max": [16, *t.shape[1:]]}
            for t in graph.inputs
        }
        engines[role] = ArtifactFile(
            f"{role}.engine",
            graph.sha256,
            graph.size,
            graph.inputs,
            graph.outputs,
            info={"profiles": profiles},
        )
    Manifest(
        m.model,
        m.source_format,
        m.exit_threshold,
        engines=engines,
        tensorrt=TensorRTInfo(version="10.3.0", precision="fp16"),
    ).save(folder)
    return folder


@needs_schema
def test_tensorrt_plans_take_their_batch_limits_from_the_engine_profiles(built, tmp_path):
    from sacvit_deploy.triton.validate import parse_config, validate_repository

    _, root, _ = built
    engines = fake_engines(root, tmp_path / "engines")
    with pytest.raises(RepositoryError, match="--max-batch 32 exceeds the engines' profile max batch 16"):
        write_repository(engines, tmp_path / "r", RepositoryOptions(backend="tensorrt", max_batch=32))
    result = write_repository(engines, tmp_path / "r", RepositoryOptions(backend="tensorrt", gpus=(0, 1)))
    assert result.max_batch == 16 and result.validated
    s1 = parse_config(tmp_path / "r" / "sacvit_stage1" / "config.pbtxt")
    assert s1.platform == "tensorrt_plan" and list(s1.dynamic_batching.preferred_batch_size) == [8, 16]
    assert list(s1.instance_group[0].gpus) == [0, 1]
    s2 = parse_config(tmp_path / "r" / "sacvit_stage2" / "config.pbtxt")
    assert list(s2.dynamic_batching.preferred_batch_size) == [4, 16]
    assert (tmp_path / "r" / "sacvit_stage1" / "1" / "model.plan").is_file()
    assert validate_repository(tmp_path / "r").passed
    low = fake_engines(root, tmp_path / "engines2", min_batch=2)
    with pytest.raises(RepositoryError, match="profile min batch is 2"):
        write_repository(low, tmp_path / "r2", RepositoryOptions(backend="tensorrt"))


def test_publish_replaces_folders_and_drops_stale_entries(tmp_path):
    out = tmp_path / "out"
    (out / "old_model").mkdir(parents=True)
    (out / "old_model" / "f").write_text("old")
    (out / "kept_model").mkdir()
    (out / "kept_model" / "f").write_text("old")

    class Index:
        def save(self, folder):
            (folder / "index.json").write_text("{}")
            return folder / "index.json"

    with staging_folder(out) as staging:
        (staging / "kept_model").mkdir()
        (staging / "kept_model" / "g").write_text("new")
        old = hashlib.sha256(b"old").hexdigest()
        owned = {"old_model": {"old_model/f": old}, "kept_model": {"kept_model/f": old}, "index.json": None}
        publish(staging, out, Index(), owned, "index.json")
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "kept_model"]
    assert [p.name for p in (out / "kept_model").iterdir()] == ["g"]


def test_publish_refuses_to_delete_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "out"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "holiday.jpg").write_text("precious")

    with staging_folder(out) as staging, pytest.raises(SacvitError, match="holiday.jpg, which this tool"):
        publish(staging, out, None, {"photos": {"photos/model.onnx": "0" * 64}}, "index.json")
    assert (out / "photos" / "holiday.jpg").read_text() == "precious"


# ---- the BLS model ----------------------------------------------------------------------------------
def test_bls_model_runs_on_tritons_python_and_imports_only_numpy():
    tree = ast.parse(bls_source(), feature_version=(3, 8))
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top == {"json", "math", "os", "numpy", "triton_python_backend_utils"}
    constants = {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    assert constants["MODEL_JSON"] == MODEL_JSON


@needs_schema
@torch.no_grad()
def test_bls_equals_the_pipeline_for_every_exit_pattern(server, local, x):
    conf = local.run(x, 0.0).confidence
    for th in (0.0, mixed_threshold(conf), 1.01, None):
        server.calls.clear()
        got = bls(server, x, th)
        ref = local.run(x, th)
        assert_same(got, ref)
        hard = np.flatnonzero(ref.stage == 2)
        assert [c.batch for c in server.stage_calls("sacvit_stage1")] == [9]
        stage2 = server.stage_calls("sacvit_stage2")
        if hard.size:  # exactly the hard samples, in one request
            assert len(stage2) == 1 and stage2[0].batch == hard.size
            np.testing.assert_array_equal(stage2[0].inputs["image"], x.numpy()[hard])
        else:
            assert stage2 == []
    assert 0 < int((local.run(x, mixed_threshold(conf)).stage == 2).sum()) < 9
    th = float(conf[0]) + 1e-3  # a batch of 1 that needs stage 2
    got = bls(server, x[:1], th)
    assert got["stage"].tolist() == [[2]]
    assert_same(got, local.run(x[:1], th))


@needs_schema
@torch.no_grad()
def test_bls_gate_compares_in_float32_like_the_pipeline(server, local, x):
    conf = local.run(x, 0.0).confidence
    c = float(conf[3])
    for th in (c, c + 1e-12, float(np.nextafter(np.float32(c), np.float32(2))), c - 1e-12):
        got = bls(server, x, th)
        assert got["stage"].reshape(-1).tolist() == local.run(x, th).stage.tolist(), th


@needs_schema
@torch.no_grad()
def test_requests_batched_together_keep_their_own_thresholds(server, local, x):
    a, b, c, d = x[:4], x[4:6], x[6:], x[:2]
    requests = [
        ({"image": a.numpy()}, {"exit_threshold": "0.0"}),
        ({"image": b.numpy()}, {"exit_threshold": 1.01}),  # Triton 24.03+ passes numbers as numbers
        ({"image": c.numpy()}, None),  # the config's threshold
        ({"image": d.numpy()}, {"exit_threshold": "high"}),
        ({"image": d.numpy()}, {"exit_threshold": -1}),
        ({"image": d.numpy()}, {"exit_threshold": True}),
    ]
    results = server.execute("sacvit", requests)
    assert_same(results[0], local.run(a, 0.0))
    assert_same(results[1], local.run(b, 1.01))
    ref_c = local.run(c, None)
    assert_same(results[2], ref_c)
    for bad in results[3:]:
        assert isinstance(bad, Exception) and "request parameter exit_threshold" in str(bad)
    # one stage-1 request for the three good requests, one stage-2 request for all their hard samples
    assert [call.batch for call in server.stage_calls("sacvit_stage1")] == [9]
    hard = 2 + int((ref_c.stage == 2).sum())
    assert [call.batch for call in server.stage_calls("sacvit_stage2")] == [hard]


@needs_schema
@torch.no_grad()
def test_torch_tensor_mode_gives_the_same_answers(built, local, x, tmp_path, monkeypatch):
    from tests.fake_triton import FakeServer

    repo = copy_repo(built, tmp_path)
    set_bls_param(repo, "bls_tensors", "torch")
    server = FakeServer(repo, monkeypatch)
    conf = local.run(x, 0.0).confidence
    for th in (0.0, mixed_threshold(conf), 1.01):
        assert_same(bls(server, x, th), local.run(x, th))


@needs_schema
@torch.no_grad()
def test_stage_errors_reach_every_request_and_big_batches_are_split(
    built, server, local, x, tmp_path, monkeypatch
):
    from tests.fake_triton import FakeServer, InferError

    server.fail["sacvit_stage2"] = "CUDA error: out of memory"
    with pytest.raises(InferError, match="sacvit_stage2: CUDA error: out of memory"):
        bls(server, x, 1.01)
    assert_same(bls(server, x, 0.0), local.run(x, 0.0))  # stage 2 not needed: not called

    repo = copy_repo(built, tmp_path)
    spec_path = repo / "sacvit" / MODEL_JSON
    spec = json.loads(spec_path.read_text())
    spec["max_batch_size"] = 4  # stages accepting less than the BLS receives: requests are split
    spec_path.write_text(json.dumps(spec))
    small = FakeServer(repo, monkeypatch)
    assert_same(bls(small, x, 1.01), local.run(x, 1.01))
    assert [c.batch for c in small.stage_calls("sacvit_stage1")] == [4, 4, 1]
    assert [c.batch for c in small.stage_calls("sacvit_stage2")] == [4, 4, 1]


# ---- the client -------------------------------------------------------------------------------------
def use_fake_client(monkeypatch, server, ready=True):
    from tests.fake_triton import make_tritonclient

    for name, module in make_tritonclient(server, ready).items():
        monkeypatch.setitem(sys.modules, name, module)


@needs_schema
@pytest.mark.parametrize("url", ["http://triton.example:8000", "grpc://triton.example:8001"])
def test_infer_triton_prints_the_same_rows_as_local_infer(built, server, images_dir, monkeypatch, url):
    root = built[1]
    common = [str(images_dir), "--batch-size", "3", "--topk", "2", "--threshold", "0.6"]
    local = runner.invoke(
        app, ["infer", *common, "--artifacts", str(root / "export"), "--backend", "onnxruntime"]
    )
    assert local.exit_code == 0, local.output
    use_fake_client(monkeypatch, server)
    remote = runner.invoke(app, ["infer", *common, "--triton", url])
    assert remote.exit_code == 0, remote.output
    assert remote.stdout == local.stdout and remote.stdout.count("\n") == 9  # header + 8 images
    assert f"Triton Inference Server at {url}" in remote.stderr and "threshold 0.6" in remote.stderr
    assert {c.parameters.get("exit_threshold") for c in server.stage_calls("sacvit")} == {"0.6"}
    jsonl = runner.invoke(app, ["infer", str(images_dir), "--triton", url, "--format", "jsonl"])
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert len(rows) == 8 and {r["stage"] for r in rows} <= {1, 2}
    assert "exit_threshold" not in server.stage_calls("sacvit")[-1].parameters  # the server's own


@needs_schema
def test_client_checks_artifacts_against_the_served_graphs(built, server, monkeypatch, tmp_path):
    root = built[1]
    use_fake_client(monkeypatch, server)
    for folder in (root / "export", root / "repo"):
        opened = open_triton("http://t:8000", artifacts=folder)
        assert opened.manifest.preprocess.input_size == 128
        opened.pipeline.deactivate()
    other = tmp_path / "other"
    export_artifacts(make_tiny("sacvit", seed=1), other, ExportOptions(weights=False), "sacvit")
    with pytest.raises(TritonClientError, match="not the graphs the served model 'sacvit' runs"):
        open_triton("http://t:8000", artifacts=other)


@needs_schema
def test_client_errors_are_one_line_and_name_the_fix(built, server, monkeypatch, images_dir):
    use_fake_client(monkeypatch, server, ready=False)
    result = runner.invoke(app, ["infer", str(images_dir), "--triton", "grpc://t:8001"])
    assert result.exit_code == 1 and "model 'sacvit' is not ready" in result.stderr
    use_fake_client(monkeypatch, server)
    result = runner.invoke(
        app, ["infer", str(images_dir), "--triton", "http://t:8000", "--triton-model", "sacvit_stage1"]
    )
    assert result.exit_code == 1 and "not a model written by `sacvit-deploy triton`" in result.stderr
    result = runner.invoke(app, ["infer", str(images_dir), "--triton", "http://t:8000", "--backend", "torch"])
    assert result.exit_code == 1 and "drop them with --triton" in result.stderr
    use_fake_client(monkeypatch, None)
    result = runner.invoke(app, ["infer", str(images_dir), "--triton", "http://t:8000"])
    assert result.exit_code == 1 and "Triton at http://t:8000 is unreachable" in result.stderr
    for name in ("tritonclient", "tritonclient.http", "tritonclient.grpc", "tritonclient.utils"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    result = runner.invoke(app, ["infer", str(images_dir), "--triton", "http://t:8000"])
    assert result.exit_code == 1 and "pip install 'sacvit-deploy[triton]'" in result.stderr
    for line in (result.stderr,):
        assert line.count("\n") == 1


def test_triton_urls():
    assert Endpoint.parse("http://localhost:8000") == Endpoint(
        "http://localhost:8000", "http", "localhost:8000", False
    )
    assert Endpoint.parse("grpcs://h").address == "h:8001" and Endpoint.parse("grpcs://h").ssl
    for bad in ("localhost:8000", "tcp://h:1", "http://h:8000/v2/models"):
        with pytest.raises(TritonClientError, match="--triton"):
            Endpoint.parse(bad)


@pytest.mark.skipif(
    not HAS_TRITONCLIENT, reason="needs the real tritonclient: pip install 'sacvit-deploy[triton]'"
)
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_real_tritonclient_reports_an_unreachable_server(scheme):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"{scheme}://127.0.0.1:{port}"
    with pytest.raises(TritonClientError, match=rf"Triton at {url} is unreachable \(.+\); start the server"):
        open_triton(url, timeout=5)


# ---- the command ------------------------------------------------------------------------------------
def test_triton_command_writes_and_checks(built, tmp_path):
    root = built[1]
    out = tmp_path / "model_repository"
    result = runner.invoke(
        app, ["triton", "--artifacts", str(root / "export"), "--out", str(out), "--instances", "2"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}/" in result.stdout and "sacvit (BLS, threshold 0.5)" in result.stdout
    assert "wrote sacvit_stage1/" in result.stderr and "infer --triton" in result.stderr
    if not HAS_TRITONCLIENT:
        return
    from sacvit_deploy.triton.validate import parse_config

    assert parse_config(out / "sacvit_stage2" / "config.pbtxt").instance_group[0].count == 2
    assert parse_config(out / "sacvit" / "config.pbtxt").instance_group[0].count == 4  # 2 per stage instance
    check = runner.invoke(app, ["triton", "--check", str(out)])
    assert check.exit_code == 0 and "checks passed" in check.stdout
    (out / "sacvit_stage1" / "1" / "model.onnx").write_bytes(b"x")
    check = runner.invoke(app, ["triton", "--check", str(out)])
    assert check.exit_code == 2 and "FAIL" in check.stdout and "checks failed" in check.stderr
    for args, message in (
        (["--gpus", "a"], "--gpus 'a'"),
        (["--kind", "cpu", "--gpus", "0"], "drop it with --kind cpu"),
        (
            ["--threshold", "-1"],
            "--threshold: -1.0 must be a finite number >= 0",
        ),  # core.validate, as everywhere
        (["--name", "a/b"], "--name 'a/b'"),
    ):
        bad = runner.invoke(
            app, ["triton", "--artifacts", str(root / "export"), "--out", str(tmp_path / "x"), *args]
        )
        assert bad.exit_code == 1 and message in bad.stderr, bad.output
    missing = runner.invoke(app, ["triton", "--check", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "not a repository written by `sacvit-deploy triton`" in missing.stderr


@needs_schema
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@torch.no_grad()
def test_real_tritonclient_over_the_wire(built, server, local, x, protocol):
    """The real tritonclient against Triton's HTTP / gRPC protocol (served by the fake server)."""
    from tests.fake_triton import serve_grpc, serve_http

    serve = serve_http if protocol == "http" else serve_grpc
    with serve(server) as url:
        opened = open_triton(url, artifacts=built[1] / "export")
        assert opened.pipeline.threshold == 0.5 and opened.choice.served.max_batch == 16
        with opened.pipeline as pipe:
            conf = local.run(x, 0.0).confidence
            for th in (mixed_threshold(conf), None):
                got = pipe.run(x, th)
                ref = local.run(x, th)
                np.testing.assert_array_equal(got.stage, ref.stage)
                np.testing.assert_allclose(got.logits, ref.logits, atol=1e-5, rtol=0)
            big = torch.cat([x, x])  # 18 images: two requests of at most max_batch_size 16
            server.calls.clear()
            np.testing.assert_array_equal(pipe.run(big, 1.01).stage, np.full(18, 2))
            assert [c.batch for c in server.stage_calls("sacvit")] == [16, 2]
            assert server.stage_calls("sacvit")[0].parameters == {"exit_threshold": "1.01"}
        with pytest.raises(TritonClientError, match="model 'nope' is not ready"):
            open_triton(url, "nope")


# ---- the python stage flavour (runs on a real server in tests/test_triton_server.py) ----------------
def test_python_stages_are_written_and_checked_like_the_others(built, tmp_path):
    _, root, _ = built
    out = tmp_path / "py"
    result = write_repository(root / "export", out, RepositoryOptions(backend="python", queue_delay_us=250))
    for role in ("stage1", "stage2"):
        version = out / f"sacvit_{role}" / "1"
        assert (version / "model.onnx").read_bytes() == (root / "export" / f"{role}.onnx").read_bytes()
        assert (version / "model.py").read_text() == stage_source()
    assert result.index.backend == "python" and result.index.options["kind"] == "cpu"
    assert (out / "sacvit" / "1" / "model.py").read_text() == bls_source()  # the same gate
    if not HAS_TRITONCLIENT:
        return
    from tritonclient.grpc import model_config_pb2 as mc

    from sacvit_deploy.triton.validate import parse_config, validate_repository

    assert result.validated
    s2 = parse_config(out / "sacvit_stage2" / "config.pbtxt")
    assert s2.backend == "python" and not s2.platform
    assert mc.ModelInstanceGroup.Kind.Name(s2.instance_group[0].kind) == "KIND_CPU"
    assert s2.dynamic_batching.max_queue_delay_microseconds == 250
    assert parse_config(out / "sacvit" / "config.pbtxt").dynamic_batching.max_queue_delay_microseconds == 250
    assert validate_repository(out).passed
    (out / "sacvit_stage1" / "1" / "model.onnx").write_bytes(b"x")
    (out / "sacvit_stage2" / "1" / "model.py").write_text("def nothing(): pass\n")
    failed = {(f.model, f.check) for f in validate_repository(out).failures}
    assert ("sacvit_stage1", "file sacvit_stage1/1/model.onnx") in failed
    assert ("sacvit_stage1", "graph inputs/outputs") in failed
    assert ("sacvit_stage2", "model.py") in failed
    cli = runner.invoke(
        app,
        ["triton", "--artifacts", str(root / "export"), "--out", str(tmp_path / "c"), "--backend", "python"],
    )
    assert cli.exit_code == 0 and "python + onnxruntime" in cli.stderr, cli.output
    assert "sacvit-deploy serve" in cli.stderr


def test_python_stage_model_runs_on_tritons_python():
    tree = ast.parse(stage_source(), feature_version=(3, 8))
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top == {"json", "os", "numpy", "triton_python_backend_utils"}  # onnxruntime: inside initialize


def test_server_setup_problems_are_one_line_with_the_fix(built, tmp_path, monkeypatch):
    from sacvit_deploy.triton import server as ts

    monkeypatch.setattr(ts, "platform_problem", lambda: None)  # the layout checks, on any machine
    env = tmp_path / "env"
    with pytest.raises(ts.TritonServerError, match="has no nvidia-pytriton .*python3 -m venv ENV"):
        ts.TritonInstall.find(env)
    site = env / "lib" / "python3.11" / "site-packages"
    (site / "pytriton" / "tritonserver" / "bin").mkdir(parents=True)
    (site / "pytriton" / "tritonserver" / "bin" / "tritonserver").write_text("")
    with pytest.raises(ts.TritonServerError, match="has no bin/python3"):
        ts.TritonInstall.find(env)
    (env / "bin").mkdir()
    (env / "bin" / "python3").write_text("")
    install = ts.TritonInstall.find(env)
    assert install.python_version == "3.11" and install.libs == site / "nvidia_pytriton.libs"
    (site / "numpy-2.1.0.dist-info").mkdir()
    with pytest.raises(ts.TritonServerError, match="has numpy 2.1.0; .*return empty outputs .*'numpy<2'"):
        install.check_python()
    (site / "numpy-2.1.0.dist-info").rmdir()
    (site / "numpy-1.26.4.dist-info").mkdir()
    with pytest.raises(ts.TritonServerError, match="has no onnxruntime"):
        install.check_python()
    (site / "onnxruntime-1.32.0.dist-info").mkdir()
    assert install.check_python() == {"numpy": "1.26.4", "onnxruntime": "1.32.0"}
    with pytest.raises(ts.TritonServerError, match="no Python backend stub for Python 3.11"):
        install.prepare_backends(tmp_path / "b")
    _, root, _ = built
    result = runner.invoke(
        app, ["serve", "--artifacts", str(root / "export"), "--triton-env", str(tmp_path / "none")]
    )
    assert (
        result.exit_code == 1 and result.stderr.count("\n") == 1 and "has no nvidia-pytriton" in result.stderr
    )
    # the artifacts are checked before the Triton environment, whose fix is a long install
    result = runner.invoke(
        app, ["serve", "--artifacts", str(tmp_path), "--triton-env", str(tmp_path / "none")]
    )
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "manifest" in result.stderr and "nvidia-pytriton" not in result.stderr


def test_the_server_command_listens_on_loopback_only(tmp_path):
    from sacvit_deploy.triton.server import Ports, TritonInstall, TritonServer

    install = TritonInstall(tmp_path, tmp_path / "site", "3.11")
    cmd = TritonServer(tmp_path / "repo", install, Ports(1, 2, 3)).command(tmp_path / "b")
    for flag in ("http", "grpc", "metrics"):
        assert f"--{flag}-address=127.0.0.1" in cmd  # tritonserver's default is 0.0.0.0
    assert "--allow-sagemaker=false" in cmd and "--allow-vertex-ai=false" in cmd


def test_a_reply_whose_float64_logits_overflow_float32_is_refused():
    """The finite check holds for the float32 logits that are kept, not for the float64 sent."""
    from sacvit_deploy.triton.reply import ReplyError, validate_reply

    reply = {
        "logits": np.full((2, 10), 1e300, np.float64),
        "stage": np.ones((2, 1), np.int32),
        "confidence": np.full((2, 1), 0.5, np.float32),
    }
    with pytest.raises(ReplyError, match="logits holds NaN or infinite values"):
        validate_reply(reply, 2, 10, "Triton at http://x:8000")
    reply["logits"] = np.full((2, 10), 3.0, np.float64)
    assert validate_reply(reply, 2, 10, "here")["logits"].dtype == np.float32
