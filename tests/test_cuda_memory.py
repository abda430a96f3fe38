"""Device memory (sacvit_deploy/backends/device.py) and the fake cuda-python, held against the real wheels.

tests/data/cuda_surface/*.json are the real runtime modules, recorded by scripts/cuda_surface.py from
cuda-bindings 13.5.0 (``cuda.bindings.runtime``, the new API; installed in the project venv, so its
recording is re-made and compared byte for byte here), cuda-python 12.2.1 (``cuda.cudart``, the old
API) and cuda-bindings 11.8.7 (both modules; what ``pip install cuda-python==11.8.7``, the CUDA 11 line
JetPack 5 needs, installs). The fake may only offer names and enum values the
real modules have, must answer with tuples shaped as the real docstrings say, and the project's
device code may only read names that both real modules have and the script records.

The real wheel needs a driver for its calls; without one it answers with error codes, and those
paths (no driver -> one clear error) are tested against the real wheel too.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sacvit_deploy.backends import device
from sacvit_deploy.backends.device import DeviceArray, DeviceError, open_memory
from tests.fakes import fake_cuda_python, fake_pycuda
from tests.fakes.fake_cuda_python import (
    API_MODULES,
    hide_cuda_python,
    install_fake_cuda_python,
    make_fake_cuda_python,
)
from tests.fakes.fake_pycuda import install_fake_pycuda, is_freed
from tests.fakes.fake_torch_cuda import CpuTorchMemory
from tests.fakes.surface import (
    CUDA_DATA,
    CUDA_REAL,
    CUDA_RECORDINGS,
    Tracer,
    cuda_surface_data,
    fake_surface,
    missing,
    real_cuda_surface,
)

ROOT = Path(__file__).resolve().parents[1]
APIS = list(CUDA_REAL)
# (fake API, recording of the real module it stands for)
PAIRS = [pytest.param(api, rec, id=rec) for api, recordings in CUDA_REAL.items() for rec in recordings]


def _script():
    spec = importlib.util.spec_from_file_location("cuda_surface", ROOT / "scripts" / "cuda_surface.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _real_bindings():
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        pytest.skip("cuda-bindings is not installed here")


# ---- the recorded surfaces -------------------------------------------------------------------------------
def test_the_new_api_recording_is_reproduced_byte_for_byte_from_the_installed_wheel(tmp_path):
    _real_bindings()
    from importlib import metadata

    version = metadata.version("cuda-bindings")
    recorded = CUDA_DATA / f"cuda.bindings.runtime-cuda-bindings-{version}.json"
    if not recorded.exists():
        pytest.skip(f"cuda-bindings {version} installed; recorded are {CUDA_REAL['bindings']}")
    script = _script()
    text = json.dumps(script.surface("cuda.bindings.runtime"), indent=1, sort_keys=True) + "\n"
    assert text == recorded.read_text()


@pytest.mark.parametrize(("api", "recording"), PAIRS)
def test_recorded_surface_is_complete_and_consistent(api, recording):
    data = cuda_surface_data(recording)
    script = _script()
    assert data["module_name"] == API_MODULES[api]
    assert set(data["functions"]) == set(script.FUNCTIONS) <= set(data["module"])
    assert set(data["classes"]) == set(script.CLASSES) and set(data["enums"]) == set(script.ENUMS)
    # cuda-python's convention, read from the real docstrings: the error code first, then the values
    for name, fn in data["functions"].items():
        assert fn["signature"].startswith(f"{name}("), name
        assert fn["returns"][0].startswith("cudaError_t"), name
    assert data["functions"]["cudaMalloc"]["returns"] == ["cudaError_t", "devPtr : Any"]
    assert data["functions"]["cudaFree"]["returns"] == ["cudaError_t"]
    assert "__int__" in data["classes"]["cudaStream_t"]  # int(stream) is what TensorRT gets


# ---- the fake against them -------------------------------------------------------------------------------
@pytest.mark.parametrize(("api", "recording"), PAIRS)
def test_fake_offers_only_what_the_real_module_has(api, recording):
    fake = make_fake_cuda_python()
    real = real_cuda_surface(recording)
    assert missing(fake_surface(fake), real) == []
    data = cuda_surface_data(recording)
    for enum_name, members in data["enums"].items():
        for member in getattr(fake, enum_name):
            assert members[member.name] == member.value, f"{enum_name}.{member.name}"
    for name, value in data["constants"].items():
        assert getattr(fake, name) == value
    # the dunders the code relies on (fake_surface compares public names only)
    stream = fake.cudaStreamCreateWithFlags(1)[1]
    for dunder in ("__int__", "__index__"):
        assert hasattr(stream, dunder) and dunder in data["classes"]["cudaStream_t"]


@pytest.mark.parametrize(("api", "recording"), PAIRS)
def test_fake_answers_with_tuples_shaped_as_the_real_docstrings(api, recording):
    fake = make_fake_cuda_python()
    returns = {n: f["returns"] for n, f in cuda_surface_data(recording)["functions"].items()}
    ptr = fake.cudaMalloc(64)[1]
    stream = fake.cudaStreamCreateWithFlags(fake.cudaStreamNonBlocking)[1]
    host = np.zeros(16, np.uint8)
    calls = {
        "cudaMalloc": (64,),
        "cudaFree": (fake.cudaMalloc(8)[1],),
        "cudaMemcpyAsync": (ptr, host.ctypes.data, 16, fake.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
        "cudaStreamCreateWithFlags": (1,),
        "cudaStreamSynchronize": (stream,),
        "cudaStreamDestroy": (fake.cudaStreamCreateWithFlags(1)[1],),
        "cudaDeviceSynchronize": (),
        "cudaSetDevice": (0,),
        "cudaGetDevice": (),
        "cudaGetDeviceCount": (),
        "cudaGetDeviceProperties": (0,),
        "cudaGetErrorName": (fake.cudaError_t.cudaErrorInvalidValue,),
    }
    assert set(calls) == set(returns)
    for name, args in calls.items():
        result = getattr(fake, name)(*args)
        assert isinstance(result, tuple) and len(result) == len(returns[name]), name
        assert result[0] == fake.cudaError_t.cudaSuccess, name
    assert fake.cudaGetErrorName(fake.cudaError_t.cudaErrorInvalidValue)[1] == b"cudaErrorInvalidValue"
    assert fake.cudaFree(12345) == (fake.cudaError_t.cudaErrorInvalidValue,)  # errors are codes, not raises


@pytest.mark.parametrize("api", APIS)
def test_device_code_reads_only_names_both_real_modules_have(api, monkeypatch):
    rt = install_fake_cuda_python(monkeypatch, api)
    tracer = Tracer()
    tracer.install(rt, fake_cuda_python.__file__)
    try:
        _workout("cuda-python")
        device.gpu_properties(0)
        with pytest.raises(DeviceError):
            device.gpu_properties(3)
    finally:
        tracer.remove()
    used = tracer.used
    assert {("", "cudaMalloc"), ("", "cudaMemcpyAsync"), ("cudaError_t", "cudaSuccess")} <= used
    data = cuda_surface_data(CUDA_REAL[api][0])
    recorded = set(data["functions"]) | set(data["constants"])
    for other in CUDA_RECORDINGS:  # what one API's code path reads must exist in every real module
        real = real_cuda_surface(other)
        assert [f"{o}.{n}" for o, n in sorted(used) if n not in real.get(o, set())] == [], other
    functions = {n for o, n in used if o == "" and not isinstance(getattr(rt, n), (type, int))}
    assert functions and functions <= recorded  # the script records the signature of every call made


def test_pycuda_path_reads_only_real_pycuda_names(monkeypatch):
    from tests.fakes.surface import real_surface

    driver = install_fake_pycuda(monkeypatch)
    tracer = Tracer()
    tracer.install(driver, fake_pycuda.__file__)
    try:
        _workout("pycuda")
    finally:
        tracer.remove()
    real = real_surface("pycuda")
    assert ("", "memcpy_dtod_async") in tracer.used
    assert [f"{o}.{n}" for o, n in sorted(tracer.used) if n not in real.get(o, set())] == []


# ---- choosing the implementation --------------------------------------------------------------------------
def test_new_api_first_then_old_api_then_pycuda(monkeypatch):
    install_fake_cuda_python(monkeypatch, "bindings")
    assert device.import_cudart()[1] == "cuda.bindings.runtime"
    install_fake_cuda_python(monkeypatch, "cudart")
    assert device.import_cudart()[1] == "cuda.cudart"
    assert device.resolve("auto") == "cuda-python"
    hide_cuda_python(monkeypatch)
    install_fake_pycuda(monkeypatch)
    assert device.import_cudart() is None and device.resolve("auto") == "pycuda"
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setattr(device, "_torch_has_cuda", lambda: False)
    with pytest.raises(DeviceError, match=r"no library for GPU memory is installed: install cuda-python"):
        device.resolve("auto")
    with pytest.raises(DeviceError, match="unknown device memory 'cupy'"):
        device.resolve("cupy")


def test_the_real_wheel_without_a_driver_is_one_clear_error():
    """The installed cuda-bindings, called for real: no driver here, so error codes, not crashes."""
    _real_bindings()
    with pytest.raises(DeviceError, match=r"cuda\.bindings\.runtime\.cudaSetDevice failed: cudaError"):
        device.CudaPythonMemory(0)
    from sacvit_deploy.backends.gpu import NoGpuError, detect_gpu

    with pytest.raises(NoGpuError, match=r"no CUDA GPU is visible here;.*cudaGetDeviceCount: cudaError"):
        detect_gpu(0)


@pytest.mark.parametrize("api", APIS)
def test_detect_gpu_through_cuda_python(api, monkeypatch):
    from sacvit_deploy.backends.gpu import GpuInfo, NoGpuError, detect_gpu

    install_fake_cuda_python(monkeypatch, api)
    assert detect_gpu(0) == GpuInfo("Fake GPU", "8.6", 0, 8 << 30)
    with pytest.raises(NoGpuError, match=r"GPU 2 does not exist: cuda-python sees 1 CUDA GPU\(s\)"):
        detect_gpu(2)


# ---- the device array on every implementation ------------------------------------------------------------
KINDS = ["bindings", "cudart", "pycuda"]


@pytest.fixture(params=KINDS)
def memory(request, monkeypatch):
    """(an open memory, its copies list) on a fake cuda-python (new or old API) or the fake pycuda."""
    if request.param == "pycuda":
        hide_cuda_python(monkeypatch)
        driver = install_fake_pycuda(monkeypatch)
        mem = open_memory("auto")
        assert mem.name == "pycuda"
        yield mem, driver.copies, lambda: [not is_freed(a) for a in driver.allocations].count(True)
    else:
        rt = install_fake_cuda_python(monkeypatch, request.param)
        mem = open_memory("auto")
        assert mem.name == "cuda-python" and mem.module_name == API_MODULES[request.param]
        yield mem, rt.copies, lambda: [not a.freed for a in rt.allocations].count(True)
    mem.close()


def _workout(kind: str) -> None:
    with open_memory(kind) as mem:
        a = mem.from_host(np.arange(24, dtype=np.float32).reshape(6, 4))
        a.take_rows(np.array([0, 1, 4])).pad_rows(5).concat_rows([a.slice_rows(2, 3)]).to_host()


def test_round_trip_and_the_protocol_attributes(memory):
    mem, copies, _ = memory
    host = np.random.default_rng(0).standard_normal((5, 3, 2)).astype(np.float32)
    a = mem.from_host(host)
    assert isinstance(a, DeviceArray) and len(a) == 5 and a.shape == (5, 3, 2)
    assert a.dtype == np.float32 and a.nbytes == host.nbytes and isinstance(a.ptr, int) and a.ptr
    out = a.to_host()
    np.testing.assert_array_equal(out, host)
    assert out is not host and copies == [("htod", host.nbytes), ("dtoh", host.nbytes)]


def test_take_rows_copies_runs_of_consecutive_rows_device_to_device(memory):
    mem, copies, _ = memory
    host = np.arange(10 * 3, dtype=np.int64).reshape(10, 3)
    a = mem.from_host(host)
    copies.clear()
    index = np.array([0, 1, 2, 5, 6, 9, 3])
    b = a.take_rows(index)
    # runs [0 1 2] [5 6] [9] [3]: four copies, all on the device, each of its run's bytes
    row = 3 * 8
    assert copies == [("dtod", 3 * row), ("dtod", 2 * row), ("dtod", row), ("dtod", row)]
    np.testing.assert_array_equal(b.to_host(), host[index])
    copies.clear()
    assert a.take_rows(np.arange(10)).to_host().tolist() == host.tolist()
    assert copies[0] == ("dtod", 10 * row)  # all rows: one copy
    assert len(a.take_rows(np.array([], dtype=np.int64))) == 0
    np.testing.assert_array_equal(a.take_rows([-1]).to_host(), host[[-1]])
    with pytest.raises(IndexError, match="out of range for 10 rows"):
        a.take_rows([10])


def test_slice_is_a_view_pad_and_concat_copy_on_the_device(memory):
    mem, copies, _ = memory
    host = np.arange(4 * 2, dtype=np.float32).reshape(4, 2)
    a = mem.from_host(host)
    copies.clear()
    s = a.slice_rows(1, 3)
    assert copies == [] and s.ptr == a.ptr + 2 * 4 * 1 and s.shape == (2, 2)
    np.testing.assert_array_equal(s.to_host(), host[1:3])
    copies.clear()
    p = a.pad_rows(11)
    assert {k for k, _ in copies} == {"dtod"} and len(copies) <= 2 + int(np.log2(11))  # doubling
    np.testing.assert_array_equal(p.to_host(), np.concatenate([host, np.repeat(host[-1:], 7, 0)]))
    assert a.pad_rows(4) is a and a.pad_rows(2) is a
    copies.clear()
    c = a.concat_rows([s, a.slice_rows(0, 1)])
    assert copies == [("dtod", host.nbytes), ("dtod", 2 * 8), ("dtod", 8)]
    np.testing.assert_array_equal(c.to_host(), np.concatenate([host, host[1:3], host[:1]]))
    with pytest.raises(ValueError, match="cannot concatenate"):
        a.concat_rows([mem.from_host(np.zeros((1, 3), np.float32))])


def test_lifetimes_are_deterministic(memory):
    mem, _, live = memory
    a = mem.from_host(np.ones((8, 16), np.float32))
    n = live()
    view = a.slice_rows(2, 4)
    del a  # the view keeps the allocation
    np.testing.assert_array_equal(view.to_host(), np.ones((2, 16), np.float32))
    view.free()
    with pytest.raises(DeviceError, match="freed"):
        view.to_host()
    # back in the pool: the same size again allocates nothing
    b = mem.empty((8, 16), np.float32)
    assert live() == n and mem.allocated_bytes == 512
    mem.close()
    assert live() == 0  # pooled and referenced allocations alike
    with pytest.raises(DeviceError, match="closed .*runner was deactivated"):
        b.to_host()
    mem.close()  # twice is fine


def test_a_failing_cuda_call_names_the_call(monkeypatch):
    install_fake_cuda_python(monkeypatch, "cudart", gpus=1)
    with pytest.raises(DeviceError, match=r"cuda\.cudart\.cudaSetDevice failed: cudaErrorInvalidDevice"):
        open_memory("cuda-python", device_id=1)
    mem = open_memory("cuda-python")
    with pytest.raises(DeviceError, match="cudaMemcpyAsync failed: cudaErrorIllegalAddress"):
        mem.dtod(1 << 20, 2 << 20, 16)  # no allocation there: the device faults
    mem.close()


# ---- on a real GPU (scripts/gpu_check.sh runs these with -m gpu; skipped with the reason elsewhere) ----------
def _real_memory(kind: str):
    try:
        mem = open_memory(kind)
    except DeviceError as exc:
        pytest.skip(f"{kind}: {exc}")
    return mem


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["cuda-python", "pycuda", "torch"])
def test_real_device_memory_matches_numpy(kind):
    """The device array's operations on real device memory, against numpy on the host."""
    with _real_memory(kind) as mem:
        rng = np.random.default_rng(0)
        host = rng.standard_normal((37, 5, 3)).astype(np.float32)
        a = mem.from_host(host)
        np.testing.assert_array_equal(a.to_host(), host)
        index = np.array([0, 1, 2, 7, 8, 30, 36, 3])
        np.testing.assert_array_equal(a.take_rows(index).to_host(), host[index])
        np.testing.assert_array_equal(a.slice_rows(4, 9).to_host(), host[4:9])
        np.testing.assert_array_equal(
            a.slice_rows(30, 37).pad_rows(16).to_host()[7:], np.repeat(host[-1:], 9, 0)
        )
        c = a.take_rows([5]).concat_rows([a.slice_rows(0, 2), mem.from_host(host[:1])])
        np.testing.assert_array_equal(c.to_host(), np.concatenate([host[5:6], host[:2], host[:1]]))
        ints = mem.from_host(np.arange(12, dtype=np.int64).reshape(6, 2))
        assert ints.take_rows([5, 0]).to_host().tolist() == [[10, 11], [0, 1]]
        assert mem.stream_handle != 0


@pytest.mark.gpu
def test_real_gpu_properties_agree_between_libraries():
    try:
        name, cc, total, source = device.gpu_properties(0)
    except DeviceError as exc:
        pytest.skip(str(exc))
    assert name and total > 0 and cc[0] >= 3
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        assert (name, cc, total) == (p.name, (p.major, p.minor), p.total_memory), source


@pytest.mark.gpu
def test_real_torch_tensors_are_wrapped_without_a_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    t = torch.arange(24, dtype=torch.float32, device="cuda").reshape(6, 4)
    a = device.wrap_torch(t)
    assert a.ptr == t.data_ptr() and a.shape == (6, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a.take_rows([4, 5, 1]).to_host(), t.cpu().numpy()[[4, 5, 1]])


def test_torch_memory_regions_and_zero_copy_wrapping():
    torch = pytest.importorskip("torch")
    mem = CpuTorchMemory()
    t = torch.arange(30, dtype=torch.float32).reshape(10, 3)
    a = mem.wrap(t)
    assert a.ptr == t.data_ptr() and a.shape == (10, 3) and a.dtype == np.float32 and mem.copies == []
    rows = a.take_rows([2, 3, 4, 9])  # two runs: two copies into memory of the torch memory's own
    assert mem.copies == [36, 12]
    np.testing.assert_array_equal(rows.to_host(), t.numpy()[[2, 3, 4, 9]])
    np.testing.assert_array_equal(a.slice_rows(8, 10).pad_rows(4).to_host(), t.numpy()[[8, 9, 9, 9]])
    b = mem.from_host(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(
        b.concat_rows([a.slice_rows(0, 1)]).to_host(), [[1, 1, 1]] * 2 + [[0, 1, 2]]
    )
    with pytest.raises(DeviceError, match="not in memory this torch device memory knows"):
        mem.dtod(b.ptr, 12345, 4)
    mem.close()
    assert mem._regions == {}


def test_arrays_of_two_memories_are_ordered_between_their_streams(monkeypatch):
    """Stage 1's memory and stage 2's: a copy across them waits for the writer's stream, then its own."""
    rt = install_fake_cuda_python(monkeypatch, "bindings")
    with open_memory("cuda-python") as one, open_memory("cuda-python") as two:
        a = one.from_host(np.arange(6, dtype=np.float32).reshape(3, 2))
        b = two.from_host(np.ones((1, 2), np.float32))
        assert one.pending and two.pending
        before = rt.syncs
        c = a.concat_rows([b])
        assert not two.pending and not one.pending and rt.syncs - before == 2
        np.testing.assert_array_equal(c.to_host(), [[0, 1], [2, 3], [4, 5], [1, 1]])
