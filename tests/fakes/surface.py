"""The real TensorRT / pycuda API surfaces (tests/data/trt_surface, from scripts/trt_surface.py), the
surfaces of our fakes, and a tracer that records which fake attributes the project's code touches.

A surface is ``{owner: set of member names}``: ``""`` is the module itself, ``"Builder"`` a class,
``"BuilderFlag"`` an enum (its members), ``"ILogger.Severity"`` a nested class or enum.
"""

from __future__ import annotations

import ast
import enum
import inspect
import json
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "data" / "trt_surface"
# Which real surface each fake version is held against.
REAL_VERSIONS = {"8.6.1": "8.6.1", "10.3.0": "10.3.0", "10.16.1": "10.16.1.11", "11.4.0": "11.4.0.106"}
# Fake-only helpers for the tests (no TensorRT or pycuda attribute): never compared.
FAKE_ONLY = {"calls", "called", "state", "allocations", "copies", "contexts", "sizes", "syncs", "streams"}

Surface = dict[str, set[str]]


def real_surface(name: str) -> Surface:
    """``name``: a TensorRT version of :data:`REAL_VERSIONS` values, or ``"pycuda"``."""
    file = DATA / ("pycuda.json" if name == "pycuda" else f"tensorrt-{name}.json")
    data = json.loads(file.read_text())
    surface: Surface = {"": set(data["module"]) | set(data["classes"]) | set(data["enums"])}
    surface[""] = {n for n in surface[""] if "." not in n}
    for owner, members in [*data["classes"].items(), *data["enums"].items()]:
        surface[owner] = set(members)
    return surface


CUDA_DATA = DATA.parent / "cuda_surface"
# The recorded real cuda-python runtime modules (scripts/cuda_surface.py), per API of the fake: the new
# cuda.bindings.runtime of cuda-bindings 13.5.0 and 11.8.7, the old cuda.cudart of cuda-python 12.2.1 and
# of cuda-bindings 11.8.7 (what `pip install cuda-python==11.8.7`, the CUDA 11 / JetPack 5 line, brings).
CUDA_REAL = {
    "bindings": ["cuda.bindings.runtime-cuda-bindings-13.5.0", "cuda.bindings.runtime-cuda-bindings-11.8.7"],
    "cudart": ["cuda.cudart-cuda-python-12.2.1", "cuda.cudart-cuda-bindings-11.8.7"],
}
CUDA_RECORDINGS = [r for recordings in CUDA_REAL.values() for r in recordings]


def cuda_surface_data(recording: str) -> dict[str, Any]:
    return json.loads((CUDA_DATA / f"{recording}.json").read_text())


def real_cuda_surface(recording: str) -> Surface:
    """A recorded real cuda-python runtime module (a :data:`CUDA_RECORDINGS` name) as a surface."""
    data = cuda_surface_data(recording)
    surface: Surface = {"": set(data["module"])}
    for owner, members in [*data["classes"].items(), *data["enums"].items()]:
        surface[owner] = {m for m in members if not m.startswith("_")}
    return surface


def _instance_attributes(cls: type) -> set[str]:
    """``self.x = ...`` in the class's methods (what instances carry besides class members)."""
    names = set()
    for value in vars(cls).values():
        if not inspect.isfunction(value):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(value)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names.add(node.attr)
    return names


def _public(names: Any) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def _class_members(cls: type, fake_classes: set[type]) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in fake_classes:
            names |= set(vars(klass)) | _instance_attributes(klass)
    return _public(names)


def fake_surface(module: types.ModuleType) -> Surface:
    """Every public name the fake module exposes, per owner (module, class, enum, nested)."""
    classes = _fake_classes(module)
    surface: Surface = {"": _public(vars(module)) - FAKE_ONLY}
    for name in list(surface[""]):
        value = getattr(module, name)
        if isinstance(value, enum.EnumMeta):
            surface[name] = set(value.__members__)
        elif isinstance(value, type):
            surface[name] = _class_members(value, classes)
            for member in list(surface[name]):
                nested = vars(value).get(member)
                if isinstance(nested, enum.EnumMeta):
                    surface[f"{name}.{member}"] = set(nested.__members__)
    return surface


def _fake_classes(module: types.ModuleType) -> set[type]:
    found: set[type] = set()

    def visit(value: Any) -> None:
        if isinstance(value, type) and not isinstance(value, enum.EnumMeta) and value not in found:
            found.add(value)
            for inner in vars(value).values():
                visit(inner)

    for value in vars(module).values():
        visit(value)
    return found


def missing(fake: Surface, real: Surface) -> list[str]:
    """``owner.member`` names the fake has and the real surface lacks."""
    out = []
    for owner, members in fake.items():
        if owner not in real:
            out.append(f"{owner} (the whole {'class' if members else 'name'})")
            continue
        out += [f"{owner}.{m}" if owner else m for m in sorted(members - real[owner])]
    return sorted(out)


def present(names: dict[str, set[str]], real: Surface) -> list[str]:
    """Of ``names`` ({owner: members} a fake says are absent), those the real surface has."""
    out = []
    for owner, members in names.items():
        out += [f"{owner}.{m}" if owner else m for m in sorted(members & real.get(owner, set()))]
    return sorted(out)


# ---- tracing the project's use of a fake ------------------------------------------------------------
class Tracer:
    """Records ``(owner, member)`` for every attribute of a fake that code outside the fakes reads.

    Module attributes through a ModuleType subclass, enum members through an EnumMeta subclass,
    instance (and class) attributes through ``__getattribute__`` on the fake's classes; only reads
    that succeed are recorded, and only those made from outside the fake's own source file.
    """

    def __init__(self) -> None:
        self.used: set[tuple[str, str]] = set()
        self._undo: list[Any] = []

    def _outside(self, fake_file: str) -> bool:
        frame = sys._getframe(2)
        return frame.f_code.co_filename != fake_file

    def install(self, module: types.ModuleType, fake_file: str) -> None:
        tracer = self
        classes = _fake_classes(module)
        names = {id(c): c.__name__ for c in classes}
        for owner_name in list(vars(module)):
            value = vars(module)[owner_name]
            if isinstance(value, enum.EnumMeta):
                self._trace_enum(value, owner_name, fake_file)
            elif isinstance(value, type):
                for member, inner in vars(value).items():
                    if isinstance(inner, enum.EnumMeta):
                        self._trace_enum(inner, f"{owner_name}.{member}", fake_file)

        class TracedModule(types.ModuleType):
            def __getattribute__(self, name: str) -> Any:
                value = super().__getattribute__(name)
                if not name.startswith("_") and name not in FAKE_ONLY and tracer._outside(fake_file):
                    tracer.used.add(("", name))
                return value

        module.__class__ = TracedModule
        self._undo.append(lambda: setattr(module, "__class__", types.ModuleType))

        def getattribute(obj: Any, name: str) -> Any:
            value = object.__getattribute__(obj, name)
            if not name.startswith("_") and tracer._outside(fake_file):
                owner = _owner(type(obj), name, obj)
                if owner is not None:
                    tracer.used.add((names[id(owner)], name))
            return value

        def _owner(cls: type, name: str, obj: Any) -> type | None:
            for klass in cls.__mro__:
                if name in vars(klass):
                    return klass if klass in classes else None
            if cls in classes and name in getattr(obj, "__dict__", {}):
                return cls  # an instance attribute of a fake object
            return None

        for cls in classes:
            if "__getattribute__" not in vars(cls):
                cls.__getattribute__ = getattribute
                self._undo.append(lambda cls=cls: delattr(cls, "__getattribute__"))

    def _trace_enum(self, enum_cls: enum.EnumMeta, owner: str, fake_file: str) -> None:
        tracer = self
        base = type(enum_cls)

        class TracedEnum(base):  # type: ignore[misc, valid-type]
            def __getattribute__(cls, name: str) -> Any:
                value = super().__getattribute__(name)
                members = type.__getattribute__(cls, "_member_map_")
                if not name.startswith("_") and name in members and tracer._outside(fake_file):
                    tracer.used.add((owner, name))
                return value

        enum_cls.__class__ = TracedEnum
        self._undo.append(lambda: setattr(enum_cls, "__class__", base))

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()
