"""cuda-python on a real GPU: the device array's operations through the default TensorRT buffers.

Run by scripts/gpu_check.sh (step cuda-python). Exits non-zero, with one line saying why, when
cuda-python is missing or a result differs from numpy's.
"""

from __future__ import annotations

import numpy as np

from sacvit_deploy.backends import device


def main() -> None:
    found = device.import_cudart()
    if found is None:
        raise SystemExit(
            "cuda-python is not installed here: pass CUDA_PYTHON_SITE=DIR (see scripts/gpu_check.sh)"
        )
    print("cuda-python API:", found[1])
    print("GPU 0 (name, compute capability, bytes, asked of):", device.gpu_properties(0))
    rng = np.random.default_rng(0)
    host = rng.standard_normal((64, 197, 384)).astype(np.float32)  # DeiT-S tokens of 64 images
    with device.open_memory("cuda-python") as mem:
        assert mem.name == "cuda-python", mem.name
        a = mem.from_host(host)
        index = np.array([0, 1, 2, 10, 11, 40, 63])
        np.testing.assert_array_equal(a.take_rows(index).to_host(), host[index])
        padded = a.slice_rows(60, 64).pad_rows(8).to_host()
        np.testing.assert_array_equal(padded, np.concatenate([host[60:], np.repeat(host[-1:], 4, 0)]))
        both = a.slice_rows(0, 2).concat_rows([a.slice_rows(5, 6)]).to_host()
        np.testing.assert_array_equal(both, host[[0, 1, 5]])
        ints = mem.from_host(np.arange(10, dtype=np.int64).reshape(5, 2))
        assert ints.take_rows([4, 0]).to_host().tolist() == [[8, 9], [0, 1]]
        print(f"stream {mem.stream_handle:#x}; {mem.allocated_bytes} bytes allocated")
    print("device arrays on cuda-python: round trip, take_rows, slice/pad, concat equal numpy")


if __name__ == "__main__":
    try:
        main()
    except device.DeviceError as exc:
        raise SystemExit(f"cuda-python check: {exc}") from None
