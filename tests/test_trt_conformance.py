"""The fakes and the project's TensorRT / pycuda code held against the REAL API surfaces.

tests/data/trt_surface/*.json is what the compiled TensorRT bindings (8.6.1, 10.3.0, 10.16.1.11,
11.4.0.106 wheels from PyPI) and pycuda's wrapper source define, extracted by
scripts/trt_surface.py. The fakes must not invent members (a test against a fake that has an
attribute the real class lacks passes for nothing), every member a fake drops for a version must
really be absent there, and every attribute the code reads while it builds and runs engines on a
version's fake must exist in that version's real surface.
"""

from __future__ import annotations

import ast
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from sacvit_deploy.core.manifest import Manifest
from tests.fakes import fake_cuda_python, fake_pycuda, fake_tensorrt
from tests.fakes.fake_cuda_python import API_MODULES
from tests.fakes.fake_pycuda import make_fake_pycuda
from tests.fakes.fake_tensorrt import make_fake_tensorrt
from tests.fakes.fixtures import build, install_fake_tensorrt, shared_export
from tests.fakes.pictures import make_images
from tests.fakes.surface import (
    CUDA_REAL,
    DATA,
    REAL_VERSIONS,
    Tracer,
    fake_surface,
    missing,
    present,
    real_cuda_surface,
    real_surface,
)

FAKE_VERSIONS = list(REAL_VERSIONS)
CODE = [
    Path("sacvit_deploy/engine/build.py"),
    Path("sacvit_deploy/engine/int8_calibrator.py"),
    Path("sacvit_deploy/backends/gpu.py"),
    Path("sacvit_deploy/backends/trt_version.py"),
    Path("sacvit_deploy/backends/tensorrt_backend.py"),
    Path("sacvit_deploy/backends/device.py"),
]
ROOT = Path(__file__).resolve().parents[1]


# ---- the data itself ---------------------------------------------------------------------------------
@pytest.mark.parametrize("real", list(REAL_VERSIONS.values()))
def test_surface_data_and_its_string_table_crosscheck(real):
    data = json.loads((DATA / f"tensorrt-{real}.json").read_text())
    assert data["version"] == real and data["wheel"].endswith(".whl")
    assert {"Builder", "IBuilderConfig", "ICudaEngine", "IExecutionContext", "OnnxParser"} <= set(
        data["classes"]
    )
    strings = data["crosscheck"]["strings"]
    # Every name the import found is in the extension's string table, whole or as a merged tail,
    # except the names TensorRT's Python __init__.py defines.
    assert set(strings["not_in_string_table"]) <= {
        "ILogger.Severity",
        "Logger.Severity",
        "_itemsize",
        "attr",
        "common_enter",
        "common_exit",
        "nptype",
        "volume",
    }
    assert (
        strings["found_whole"] + len(strings["found_only_as_suffix"]) + len(strings["not_in_string_table"])
        == strings["names"]
    )
    # plain `strings` would miss these: the linker stored them as the tails of longer strings
    assert {"INT8", "DLA", "INPUT", "SOFTMAX"} <= set(strings["found_only_as_suffix"])


def test_stubs_crosscheck_agrees_with_the_imported_bindings():
    stubs = json.loads((DATA / "tensorrt-10.16.1.11.json").read_text())["crosscheck"]["stubs"]
    assert stubs["classes_compared"] > 100
    # For the classes this project uses, the stubs (10.13) and both imports (10.3, 10.16) agree, but for
    # write-only properties, which the stub generator cannot see.
    used = (
        "Builder",
        "IBuilderConfig",
        "ICudaEngine",
        "IExecutionContext",
        "OnnxParser",
        "Runtime",
        "ILayer",
    )
    gaps = {n for cls in used for n in stubs["in_10.3_and_10.16_not_in_stubs"].get(cls, [])}
    assert gaps <= {"gpu_allocator", "device_memory"}
    # and the stubs name no member of them that neither import has
    assert not any(stubs["in_stubs_not_in_10.3_or_10.16"].get(cls) for cls in used)


# ---- the fakes against the real surfaces ------------------------------------------------------------
@pytest.mark.parametrize("version", FAKE_VERSIONS)
def test_every_fake_tensorrt_member_exists_in_the_real_surface(version):
    assert missing(fake_surface(make_fake_tensorrt(version)), real_surface(REAL_VERSIONS[version])) == []


def test_the_fake_85_invents_nothing_86_lacks():
    """No 8.5 wheel exists for Python 3.11: 8.5's fake is held against 8.6 (it may only be smaller)."""
    assert missing(fake_surface(make_fake_tensorrt("8.5.2")), real_surface("8.6.1")) == []


@pytest.mark.parametrize("version", FAKE_VERSIONS)
def test_every_member_a_fake_version_drops_is_really_absent(version):
    """A name some fake version has and this one lacks says "removed here": the real surface must agree."""
    surfaces = {v: fake_surface(make_fake_tensorrt(v)) for v in FAKE_VERSIONS}
    this = surfaces[version]
    dropped: dict[str, set[str]] = {}
    for other in surfaces.values():
        for owner, members in other.items():
            if owner in this:
                dropped.setdefault(owner, set()).update(members - this[owner])
            else:
                dropped.setdefault("", set()).add(owner.split(".")[0])
    assert present(dropped, real_surface(REAL_VERSIONS[version])) == []


def test_fake_pycuda_matches_the_real_pycuda():
    _package, driver = make_fake_pycuda()
    real = real_surface("pycuda")
    assert missing(fake_surface(driver), real) == []
    # DeviceAllocation: exactly the real class (no size attribute: sizes are the caller's business)
    allocation = driver.mem_alloc(16)
    exposed = {n for n in dir(allocation) if not n.startswith("_")} | {
        n for n in ("__int__", "__index__", "__long__") if hasattr(allocation, n)
    }
    assert exposed == real["DeviceAllocation"]


# ---- the project's code against the real surfaces ------------------------------------------------------
@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return shared_export(tmp_path_factory)[1]


def _run_everything(export: Path, tmp: Path, version: str) -> None:
    """Build (every option the version has) and run engines, so each version branch is taken."""
    from sacvit_deploy.backends.factory import BackendChoice, make_runner

    major = int(version.split(".")[0])
    result = build(
        export,
        tmp / "fp16",
        fp16=True,
        timing_cache=tmp / "cache.timing",
        version_compatible=True,
        hardware_compat="ampere+",
    )
    assert result.manifest.tensorrt.parity["passed"]
    folder = tmp / "fp16"
    with make_runner(
        folder, Manifest.load(folder), "stage1", BackendChoice("tensorrt", "cuda", None, "test")
    ) as r:
        for batch in (2, 3):  # twice: buffers are reused and regrown
            r.infer(
                {"image": np.random.default_rng(0).standard_normal((batch, 3, 128, 128), dtype=np.float32)}
            )
    if major <= 10:
        make_images(tmp / "calib", count=4)
        with warnings.catch_warnings():  # 10.16: the weakly typed INT8 path is deprecated (and expected)
            warnings.simplefilter("ignore", DeprecationWarning)
            build(export, tmp / "int8", int8=True, calib_images=tmp / "calib", opt_batch=2, baseline=False)
    sys.modules["tensorrt"].state.dla_cores = 1
    build(export, tmp / "dla", fp16=True, dla_core=0, baseline=False)


# The device memory each version's run uses (every implementation is traced by some version, the old
# cuda-python API on the release JetPack 5 is nearest to, pycuda on JetPack 6's 10.3).
MEMORY_OF_VERSION = {"8.6.1": "cudart", "10.3.0": "pycuda", "10.16.1": "bindings", "11.4.0": "bindings"}


@pytest.mark.parametrize("version", FAKE_VERSIONS)
def test_code_reads_only_attributes_the_real_version_has(export, tmp_path, monkeypatch, version):
    memory = MEMORY_OF_VERSION[version]
    trt = install_fake_tensorrt(monkeypatch, tmp_path, version, cuda=None if memory == "pycuda" else memory)
    if memory == "pycuda":
        cuda_module, cuda_file, cuda_real = (
            sys.modules["pycuda.driver"],
            fake_pycuda.__file__,
            real_surface("pycuda"),
        )
        expected = {("", "mem_alloc"), ("", "memcpy_htod_async"), ("Stream", "handle")}
    else:
        cuda_module = sys.modules[API_MODULES[memory]]
        cuda_file, cuda_real = fake_cuda_python.__file__, real_cuda_surface(CUDA_REAL[memory][0])
        expected = {("", "cudaMalloc"), ("", "cudaMemcpyAsync"), ("", "cudaStreamCreateWithFlags")}
    trt_tracer, cuda_tracer = Tracer(), Tracer()
    trt_tracer.install(trt, fake_tensorrt.__file__)
    cuda_tracer.install(cuda_module, cuda_file)
    try:
        _run_everything(export, tmp_path, version)
    finally:
        trt_tracer.remove()
        cuda_tracer.remove()
    assert len(trt_tracer.used) > 40 and len(cuda_tracer.used) > 5
    assert {
        ("IBuilderConfig", "add_optimization_profile"),
        ("IBuilderConfig", "can_run_on_DLA"),
        ("IExecutionContext", "execute_async_v3"),
        ("BuilderFlag", "VERSION_COMPATIBLE"),
    } <= trt_tracer.used
    assert expected <= cuda_tracer.used
    real = real_surface(REAL_VERSIONS[version])
    assert [f"{o}.{n}" for o, n in sorted(trt_tracer.used) if n not in real.get(o, set())] == []
    assert [f"{o}.{n}" for o, n in sorted(cuda_tracer.used) if n not in cuda_real.get(o, set())] == []


def test_class_attribute_chains_in_the_code_exist_in_every_version():
    """``trt.X.Y`` read on a class (not traced above): present in all four real versions."""
    chains = set()
    for path in CODE:
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "trt"
                and not node.attr.startswith("__")
            ):
                chains.add((node.value.attr, node.attr))
    assert chains
    for version in REAL_VERSIONS.values():
        real = real_surface(version)
        absent = [f"{o}.{n}" for o, n in sorted(chains) if n not in real.get(o, set())]
        assert absent == [], version
