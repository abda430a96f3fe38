"""Extract the real Python API surface of TensorRT and pycuda into tests/data/trt_surface/*.json.

The conformance tests (tests/test_trt_conformance.py) hold the project's code and its fakes
(tests/fakes/fake_tensorrt.py, fake_pycuda.py) against these files, so that a fake cannot quietly
share the code's misunderstandings of the real API.

Regenerate (needs pip access to PyPI, a C compiler and CPython 3.11, whose ABI the wheels are built
for; nothing is installed into the environment, everything goes to a temporary folder)::

    git clone --depth 1 https://github.com/inducer/pycuda /tmp/pycuda
    python3.11 scripts/trt_surface.py --pycuda-source /tmp/pycuda

How the TensorRT surface is read
--------------------------------
PyPI has TensorRT's compiled pybind11 bindings as small wheels (``tensorrt-bindings==8.6.1``,
``tensorrt-cu12-bindings`` 10.3.0 / 10.16.1.11 / 11.4.0.106, about 1 MB each) that install with
``--no-deps``. Their ``tensorrt.so`` cannot be imported as is (it needs libnvinfer, libnvonnxparser,
libnvinfer_plugin), but it calls only about ten plain C entry points of those libraries
(``createInferBuilder_INTERNAL``, ``getPluginRegistry``, ... see ``nm -D --undefined-only``) and none
of them while the module initialises. So the script compiles a stand-in library per SONAME that
defines those entry points (returning NULL), imports the real bindings package against it in a
subprocess, and walks the module with ``dir()``: classes -> members, enums -> ``__members__``,
exactly as the compiled bindings define them (nothing is guessed from names). No TensorRT code
runs beyond module initialisation.

Two cross-checks, recorded in each file's ``crosscheck`` section:

* strings: every name the import found is looked up among the NUL-terminated strings of
  ``tensorrt.so``. The linker merges a string into the tail of a longer one ("INT8" is stored only as
  the end of a longer string such as "UINT8"; likewise "INPUT", "DLA", "SOFTMAX"), so plain
  ``strings`` output misses such names.
  A name counts as found when it is a whole string OR the tail (suffix) of one; the file lists the
  names found only by suffix matching and the names not found at all (those come from
  ``__init__.py`` or pybind11 itself, not from the extension's string table).
* stubs: ``tensorrt-stubs==10.13`` (.pyi, generated from the 10.13 bindings) is parsed with ``ast``;
  for each class, members that both 10.3 and 10.16 have but the stubs lack (and the reverse) are
  listed in the 10.16 file.

pycuda
------
pycuda's Python surface is defined by its Boost.Python wrapper ``src/wrapper/wrap_cudadrv.cpp``
(``py::class_<..>("Name")`` chains of ``.def("name"`` / ``.DEF_SIMPLE_METHOD(name)`` /
``.add_property("name"``, module-level ``py::def`` / ``DEF_SIMPLE_FUNCTION``, ``py::enum_`` values)
plus the Python additions of ``pycuda/driver.py``. Preprocessor conditionals are ignored, i.e. the
surface is that of a build against a recent CUDA.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "trt_surface"
WHEELS = {
    "8.6.1": "tensorrt-bindings==8.6.1",
    "10.3.0": "tensorrt-cu12-bindings==10.3.0",
    "10.16.1.11": "tensorrt-cu12-bindings==10.16.1.11",
    "11.4.0.106": "tensorrt-cu12-bindings==11.4.0.106",
}
STUBS = "tensorrt-stubs==10.13.0.35.1"

# Every C entry point of the TensorRT libraries the bindings import (8.6 .. 11.4), as do-nothing stand-ins.
STUB_C = r"""
#include <stddef.h>
void* createInferBuilder_INTERNAL(void* a, int b){return NULL;}
void* createInferRefitter_INTERNAL(void* a, void* b, int c){return NULL;}
void* createInferRuntime_INTERNAL(void* a, int b){return NULL;}
void* createNvOnnxParser_INTERNAL(void* a, void* b, int c){return NULL;}
void* createNvOnnxParserRefitter_INTERNAL(void* a, void* b, int c){return NULL;}
void* getBuilderPluginRegistry(int a){return NULL;}
int getNvOnnxParserVersion(void){return 0;}
void* getPluginRegistry(void){return NULL;}
int initLibNvInferPlugins(void* a, const char* b){return 0;}
void* _ZN11nvuffparser15createUffParserEv(void){return NULL;}
void _ZN11nvuffparser8FieldMapC1EPKcPKvNS_9FieldTypeEi(void* t, const char* n, const void* d, int ty, int l){}
void* _ZN14nvcaffeparser117createCaffeParserEv(void){return NULL;}
void _ZN14nvcaffeparser123shutdownProtobufLibraryEv(void){}
"""
LIBS = ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin", "libnvparsers")

# Run in a subprocess with the stand-in libraries on LD_LIBRARY_PATH: prints the surface as JSON.
WALK = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import tensorrt_bindings as trt
OBJECT = set(dir(object)) | {"_pybind11_conduit_v1_"}

def is_enum(t):
    return isinstance(getattr(t, "__members__", None), dict)

def members(t):
    return sorted(n for n in dir(t) if n not in OBJECT)

classes, enums, module = {}, {}, []
def visit(name, t, depth=0):
    if is_enum(t):
        enums[name] = sorted(t.__members__)
        return
    classes[name] = members(t)
    if depth == 0:
        for k in classes[name]:
            v = getattr(t, k, None)
            if isinstance(v, type) and v.__module__.startswith("tensorrt"):
                visit(f"{name}.{k}", v, 1)

for k in sorted(dir(trt)):
    if k.startswith("__") and k != "__version__":
        continue
    v = getattr(trt, k)
    if isinstance(v, type) and getattr(v, "__module__", "").startswith("tensorrt"):
        visit(k, v)
    elif not isinstance(v, type(sys)):
        module.append(k)
print(json.dumps({"version": trt.__version__, "module": module, "classes": classes, "enums": enums}))
"""


def _pip_download(spec: str, dest: Path) -> Path:
    before = set(dest.iterdir())
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
         "3.11", "-q", "-d", str(dest), spec],
        check=True,
    )  # fmt: skip
    new = sorted(set(dest.iterdir()) - before)
    if not new:  # already there from an earlier spec
        name = spec.split("==")[0].replace("-", "_")
        new = [p for p in dest.iterdir() if p.name.startswith(name + "-" + spec.split("==")[1])]
    return new[0]


def _stub_libraries(root: Path) -> dict[int, Path]:
    src = root / "stub.c"
    src.write_text(STUB_C)
    folders = {}
    for major in (8, 10, 11):
        folder = root / f"libs{major}"
        folder.mkdir()
        for lib in LIBS:
            so = f"{lib}.so.{major}"
            cmd = ["cc", "-shared", "-fPIC", "-o", str(folder / so), f"-Wl,-soname,{so}", str(src)]
            subprocess.run(cmd, check=True)
        folders[major] = folder
    return folders


def _strings(blob: bytes) -> set[str]:
    """NUL-terminated printable strings (any length) of a binary."""
    return {m.group(1).decode() for m in re.finditer(rb"([\x20-\x7e]+)\x00", blob)}


def _strings_crosscheck(names: set[str], blob: bytes) -> dict:
    table = _strings(blob)
    exact = {n for n in names if n in table}
    rest = names - exact
    # Tail merging: a short string shares the end of a longer one. Index strings by every suffix.
    suffixes = set()
    for s in table:
        for i in range(1, len(s)):
            suffixes.add(s[i:])
    by_suffix = {n for n in rest if n in suffixes}
    return {
        "names": len(names),
        "found_whole": len(exact),
        "found_only_as_suffix": sorted(by_suffix),
        "not_in_string_table": sorted(rest - by_suffix),
    }


def _surface_names(surface: dict) -> set[str]:
    names = set(surface["module"]) | {n.split(".")[-1] for n in surface["classes"]} | set(surface["enums"])
    for members in [*surface["classes"].values(), *surface["enums"].values()]:
        names |= set(members)
    return {n for n in names if not n.startswith("__")}


def tensorrt_surface(version: str, wheel: Path, libs: dict[int, Path], work: Path) -> dict:
    folder = work / f"trt-{version}"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(folder)
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs[int(version.split(".")[0])])}
    walk = subprocess.run(
        [sys.executable, "-c", WALK, str(folder)], env=env, check=True, capture_output=True, text=True
    )
    surface = json.loads(walk.stdout)
    blob = (folder / "tensorrt_bindings" / "tensorrt.so").read_bytes()
    return {
        "package": WHEELS[version],
        "wheel": wheel.name,
        "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "method": "the wheel's tensorrt_bindings imported against stand-in libnvinfer*.so, walked with dir()",
        **surface,
        "crosscheck": {"strings": _strings_crosscheck(_surface_names(surface), blob)},
    }


def stubs_surface(wheel: Path, work: Path) -> dict[str, list[str]]:
    folder = work / "stubs"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(folder)
    # Line-based: the generated .pyi is not always valid Python (defaults before non-defaults).
    classes: dict[str, set[str]] = {}
    current = None
    for line in (folder / "tensorrt_bindings" / "tensorrt.pyi").read_text().splitlines():
        top = re.match(r"class (\w+)", line)
        if top:
            current = classes.setdefault(top.group(1), set())
            continue
        if line and not line[0].isspace():
            current = None
        member = re.match(r"    (?:def (\w+)\(|(\w+)\s*:)", line)
        if current is not None and member:
            current.add(member.group(1) or member.group(2))
    classes = {k: sorted(n for n in v if not n.startswith("__")) for k, v in classes.items()}
    return classes


def stubs_crosscheck(stubs: dict[str, list[str]], a: dict, b: dict) -> dict:
    """Per class: members 10.3 and 10.16 both have but the 10.13 stubs lack, and the reverse."""

    def flat(s: dict) -> dict[str, set[str]]:
        out = {k: set(v) for k, v in s["classes"].items()}
        out.update({k: set(v) for k, v in s["enums"].items()})
        return out

    fa, fb = flat(a), flat(b)
    missing_in_stubs, stubs_only = {}, {}
    for cls, names in stubs.items():
        if cls not in fa or cls not in fb:
            continue
        names = {n for n in names if not n.startswith("_")}
        both = {n for n in fa[cls] & fb[cls] if not n.startswith("_")}
        if both - names:
            missing_in_stubs[cls] = sorted(both - names)
        neither = names - fa[cls] - fb[cls]
        if neither:
            stubs_only[cls] = sorted(neither)
    common = [c for c in stubs if c in fa and c in fb]
    return {
        "stubs": STUBS,
        "classes_compared": len(common),
        "in_10.3_and_10.16_not_in_stubs": missing_in_stubs,
        "in_stubs_not_in_10.3_or_10.16": stubs_only,
    }


# ---- pycuda ---------------------------------------------------------------------------------------------
_CLASS = re.compile(r'py::class_<[^;]*?>\s*(?:\w+\s*)?\(\s*"(\w+)"')
_ENUM = re.compile(r'py::enum_<[^>]*>\s*\(\s*"(\w+)"')
_MEMBER = re.compile(
    r'\.(?:def|add_property|def_readonly|def_readwrite|add_static_property|staticmethod)\s*\(\s*"(\w+)"'
    r"|\.DEF_SIMPLE_(?:METHOD|METHOD_WITH_ARGS|RO_MEMBER|RW_MEMBER|METHOD_RENAMED)\s*\(\s*(\w+)"
    r'|\battr\s*\(\s*"(\w+)"\s*\)\s*='
)
_VALUE = re.compile(r'\.value\s*\(\s*"(\w+)"')
_FUNCTION = re.compile(r'(?:py::def|DEF_SIMPLE_FUNCTION(?:_WITH_ARGS)?)\s*\(\s*"?(\w+)"?')


def pycuda_surface(source: Path) -> dict:
    cpp_path = source / "src" / "wrapper" / "wrap_cudadrv.cpp"
    cpp = cpp_path.read_text()
    cpp = re.sub(r"//[^\n]*", "", cpp)
    classes: dict[str, set[str]] = {}
    enums: dict[str, set[str]] = {}
    functions: set[str] = set()
    # Split into statements; a class chain is one statement (plus `wrp.def(...)` statements on its name).
    current = None
    for stmt in cpp.split(";"):
        enum = _ENUM.search(stmt)
        cls = _CLASS.search(stmt)
        if enum:
            enums.setdefault(enum.group(1), set()).update(_VALUE.findall(stmt))
            continue
        if cls:
            current = cls.group(1)
            classes.setdefault(current, set())
            body = stmt[cls.end() :]
            classes[current].update(next(g for g in m if g) for m in _MEMBER.findall(body))
            continue
        if current and re.search(r"^\s*(wrp|cls)\s*\.", stmt, re.M):
            classes[current].update(next(g for g in m if g) for m in _MEMBER.findall(stmt))
            continue
        if re.search(r"^\s*}\s*$", stmt, re.M):
            current = None
        functions.update(_FUNCTION.findall(stmt))
    # pycuda/driver.py: Python-level functions, and attributes it adds to the wrapped classes.
    tree = ast.parse((source / "pycuda" / "driver.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                owner = (
                    target.value.id
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                    else None
                )
                if owner in classes:
                    classes[owner].add(target.attr)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            functions.add(node.name)
        elif isinstance(node, ast.Assign):
            functions |= {t.id for t in node.targets if isinstance(t, ast.Name) and not t.id.startswith("_")}
    commit = subprocess.run(
        ["git", "-C", str(source), "log", "-1", "--format=%H"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "package": "pycuda (pycuda.driver)",
        "source": "github.com/inducer/pycuda src/wrapper/wrap_cudadrv.cpp + pycuda/driver.py",
        "commit": commit or None,
        "sha256": hashlib.sha256(cpp_path.read_bytes()).hexdigest(),
        "method": "Boost.Python registrations parsed from the wrapper source; preprocessor conditionals ignored",
        "module": sorted(functions - set(classes) - set(enums)),
        "classes": {k: sorted(v) for k, v in sorted(classes.items())},
        "enums": {k: sorted(v) for k, v in sorted(enums.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pycuda-source", type=Path, help="a checkout of github.com/inducer/pycuda")
    parser.add_argument("--wheels", type=Path, help="a folder with the wheels already downloaded")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if sys.version_info[:2] != (3, 11):
        sys.exit("run with CPython 3.11: the TensorRT binding wheels used here are cp311")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wheels = args.wheels or work / "wheels"
        wheels.mkdir(exist_ok=True)
        libs = _stub_libraries(work)

        def wheel_for(spec: str) -> Path:
            name, version = spec.split("==")
            for p in wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"):
                return p
            return _pip_download(spec, wheels)

        surfaces = {}
        for version, spec in WHEELS.items():
            surfaces[version] = tensorrt_surface(version, wheel_for(spec), libs, work)
            print(f"tensorrt {version}: {len(surfaces[version]['classes'])} classes, "
                  f"{len(surfaces[version]['enums'])} enums")  # fmt: skip
        stubs = stubs_surface(wheel_for(STUBS), work)
        surfaces["10.16.1.11"]["crosscheck"]["stubs"] = stubs_crosscheck(
            stubs, surfaces["10.3.0"], surfaces["10.16.1.11"]
        )
        for version, surface in surfaces.items():
            path = args.out / f"tensorrt-{version}.json"
            path.write_text(json.dumps(surface, indent=1, sort_keys=True) + "\n")
            print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    if args.pycuda_source:
        path = args.out / "pycuda.json"
        path.write_text(json.dumps(pycuda_surface(args.pycuda_source), indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
