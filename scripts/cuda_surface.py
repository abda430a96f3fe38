"""Record the real cuda-python runtime surface into tests/data/cuda_surface/*.json.

tests/test_cuda_memory.py holds the fake cuda-python (tests/fakes/fake_cuda_python.py) and the
project's use of it against these files, so the fake cannot share our misunderstandings of the real API.

What is recorded, from the imported module (its calls need a driver, importing does not):

* ``module``: every public name of the module;
* ``classes``: public members (and ``__int__``/``__index__``) of the classes the project uses;
* ``enums``: every member of the enums the project uses, with its value;
* ``functions``: for each function the project calls, the signature line of its docstring and the
  ``Returns`` section's entries (cuda-python returns a tuple: the ``cudaError_t`` first, then one entry
  per listed value), as ``["cudaError_t", "devPtr : Any"]``;
* ``constants``: the values of plain int constants used (``cudaStreamNonBlocking``).

The output is sorted and carries no time stamp: running it twice gives the same bytes.

Regenerate (each in an environment with that wheel; nothing needs a GPU)::

    python scripts/cuda_surface.py --module cuda.bindings.runtime   # cuda-bindings 12.x/13.x
    python scripts/cuda_surface.py --module cuda.cudart             # cuda-python 11.x/12.x (old API)

The recorded ones: cuda-bindings 13.5.0 (the project venv); cuda-python 12.2.1 (old API only), and
cuda-bindings 11.8.7 (what ``pip install cuda-python==11.8.7``, the last 11.x for CUDA 11 / JetPack 5,
brings: both modules), each from a throwaway venv, e.g.::

    python3 -m venv /tmp/v && /tmp/v/bin/pip install --no-deps cuda-python==12.2.1 numpy
    /tmp/v/bin/python scripts/cuda_surface.py --module cuda.cudart
    python3 -m venv /tmp/w && /tmp/w/bin/pip install --no-deps cuda-bindings==11.8.7 numpy
    /tmp/w/bin/python scripts/cuda_surface.py --module cuda.cudart
    /tmp/w/bin/python scripts/cuda_surface.py --module cuda.bindings.runtime
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
from importlib import metadata
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "cuda_surface"
# What sacvit_deploy/backends/device.py uses (a test checks the code names nothing beyond these).
FUNCTIONS = [
    "cudaDeviceSynchronize",
    "cudaFree",
    "cudaGetDevice",
    "cudaGetDeviceCount",
    "cudaGetDeviceProperties",
    "cudaGetErrorName",
    "cudaMalloc",
    "cudaMemcpyAsync",
    "cudaSetDevice",
    "cudaStreamCreateWithFlags",
    "cudaStreamDestroy",
    "cudaStreamSynchronize",
]
CLASSES = ["cudaDeviceProp", "cudaStream_t"]
ENUMS = ["cudaError_t", "cudaMemcpyKind"]
CONSTANTS = ["cudaStreamNonBlocking", "cudaStreamDefault"]
DUNDERS = ("__int__", "__index__")


def returns_section(doc: str) -> list[str]:
    """The entries of a numpydoc ``Returns`` section: unindented lines up to the next section."""
    lines = doc.splitlines()
    # The old module's docstrings are indented by 4: dedent by the 'Returns' line's own indent.
    for i, line in enumerate(lines):
        if line.strip() == "Returns" and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}:
            indent = len(line) - len(line.lstrip())
            out = []
            for entry in lines[i + 2 :]:
                if not entry.strip():
                    continue
                body = entry[indent:]
                if body.startswith(" "):
                    continue  # the description of the entry above
                if re.fullmatch(r"-+", body.strip()):
                    out.pop()  # that was the next section's title
                    break
                out.append(re.sub(r":py:obj:`~?\.?([^`]+)`", r"\1", body.strip()))
            return out
    return []


def signature(doc: str, name: str) -> str:
    for line in doc.splitlines():
        if line.strip().startswith(f"{name}("):
            return line.strip()
    return ""


def distribution(module_name: str) -> tuple[str, str]:
    for dist in ("cuda-bindings", "cuda-python"):
        if module_name.startswith("cuda.bindings") and dist != "cuda-bindings":
            continue
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise SystemExit(f"neither cuda-bindings nor cuda-python provides {module_name} here")


def surface(module_name: str) -> dict:
    module = importlib.import_module(module_name)
    dist, version = distribution(module_name)
    data: dict = {
        "distribution": dist,
        "version": version,
        "module_name": module_name,
        "module": sorted(n for n in dir(module) if not n.startswith("_")),
        "classes": {},
        "enums": {},
        "functions": {},
        "constants": {},
    }
    for name in CLASSES:
        cls = getattr(module, name)
        data["classes"][name] = sorted(n for n in dir(cls) if not n.startswith("_") or n in DUNDERS)
    for name in ENUMS:
        members = getattr(module, name).__members__
        data["enums"][name] = {m: int(v) for m, v in sorted(members.items())}
    for name in FUNCTIONS:
        doc = getattr(module, name).__doc__ or ""
        data["functions"][name] = {"signature": signature(doc, name), "returns": returns_section(doc)}
    for name in CONSTANTS:
        data["constants"][name] = int(getattr(module, name))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, choices=["cuda.bindings.runtime", "cuda.cudart"])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = surface(args.module)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{data['module_name']}-{data['distribution']}-{data['version']}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} ({len(data['module'])} module names)")


if __name__ == "__main__":
    main()
