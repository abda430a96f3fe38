"""The one table of TensorRT version families this package targets.

A *family* is what a user names on the command line (``--trt 8.5``, ``--target-trt 10``): the
parser-support tables (:mod:`sacvit_deploy.export.trt_support`), the export targets, the CLI choices
and the runtime's version questions (:mod:`sacvit_deploy.backends.trt_version`) are all derived from
:data:`TRT_FAMILIES`. ``10`` is conservative: what 10.0 - 10.3 do (JetPack 6.1 / 6.2 ship 10.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class TrtFamily:
    name: str  # as the user writes it
    label: str
    first: Tuple[int, int]  # the first (major, minor) in the family
    max_opset: int  # the parser's highest ONNX opset (a ceiling is this package's policy)
    native_layernorm: bool  # the parser maps ONNX LayerNormalization (from 8.6)

    @property
    def decompose_layernorm(self) -> bool:
        """Export LayerNorm as ReduceMean/Sub/... for this family's parser."""
        return not self.native_layernorm


TRT_FAMILIES: Dict[str, TrtFamily] = {
    f.name: f
    for f in (
        TrtFamily("8.5", "TensorRT 8.5 (JetPack 5.1)", (8, 5), 17, native_layernorm=False),
        TrtFamily("8.6", "TensorRT 8.6 (JetPack 6.0)", (8, 6), 17, native_layernorm=True),
        TrtFamily("10", "TensorRT 10.0-10.3 (JetPack 6.1/6.2)", (10, 0), 20, native_layernorm=True),
        TrtFamily("11", "TensorRT 11.x", (11, 0), 24, native_layernorm=True),
    )
}
TRT_FAMILY_NAMES: Tuple[str, ...] = tuple(TRT_FAMILIES)
# Later 10.x releases raised the parser's opset ceiling past the "10" family's 10.0 row.
OPSET_RAISES: Dict[Tuple[int, int], int] = {(10, 15): 24}


def family_of(major: int, minor: int) -> TrtFamily:
    """The family an installed TensorRT belongs to (8.6.x -> "8.6", 10.x -> "10", 12.x -> "11")."""
    best = TRT_FAMILIES[TRT_FAMILY_NAMES[0]]
    for fam in TRT_FAMILIES.values():
        if (major, minor) >= fam.first:
            best = fam
    return best


def max_opset(major: int, minor: int) -> int:
    """The parser's opset ceiling of an exact release (10.15 reads opset 24, the 10.0 row says 20)."""
    ceiling = family_of(major, minor).max_opset
    for (ma, mi), opset in OPSET_RAISES.items():
        if major == ma and minor >= mi:
            ceiling = max(ceiling, opset)
    return ceiling


def trt_family(name: str) -> TrtFamily:
    try:
        return TRT_FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown TensorRT version {name!r}; choose from {', '.join(TRT_FAMILY_NAMES)}"
        ) from None
