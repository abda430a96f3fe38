"""Every TensorRT version difference this package depends on, in one place.

The rest of the code asks questions (``has_precision_flags()``, ``strongly_typed_only()``) instead of
comparing version numbers, and looks enum members up by NAME (:func:`enum_member`): their integer
values moved between releases.

=========================  =========  =========  ==========  ==========  =========
feature                    8.5        8.6        10.0-10.11  10.12-10.x  11.x
=========================  =========  =========  ==========  ==========  =========
name-based runtime API     yes        yes        yes         yes         yes
EXPLICIT_BATCH flag        required   required   deprecated  deprecated  removed
STRONGLY_TYPED flag        -          -          yes         used        always on
BuilderFlag.FP16 / INT8    yes        yes        yes         deprecated  removed
precision constraints      yes        yes        yes         deprecated  removed
INT8 entropy calibrator    yes        yes        deprecated  deprecated  removed
platform_has_fast_fp16     yes        yes        yes (10.5-  deprecated  removed
                                                 deprecated)
LayerNormalization (ONNX)  no         yes        yes         yes         yes
version-compatible         -          yes        yes         yes         yes
hardware-compat ampere+    -          yes        yes         yes         yes
hardware-compat same-cc    -          -          10.9+       yes         yes
max ONNX opset (policy)    17         17         20 (24 from 10.15)      24
=========================  =========  =========  ==========  ==========  =========

"used": from 10.12, where weak typing (the precision flags, per-layer precision) is deprecated,
``--fp16`` builds like 11.x: the float16 ONNX rewrite, built STRONGLY_TYPED. ``--int8`` (calibrated,
implicit quantization) still needs the weakly typed path there, until INT8 comes as Q/DQ nodes.

Engine loading (the Support Matrix): an ordinary engine loads only on the exact TensorRT release
that built it (8.x refuses even a patch mismatch: "expecting library version 8.5.1.7 got
8.5.3.1"); a version-compatible engine (8.6+) loads on the same or a later release of the same
major, and across majors only 8.6 -> 10.x and 10.x -> 11.x (a TensorRT 8 engine cannot run with a
TensorRT 11 runtime).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from sacvit_deploy.backends.base import BackendError
from sacvit_deploy.core.extras import install_hint
from sacvit_deploy.core.trt_families import family_of, max_opset

MIN_SUPPORTED = (8, 5)
INSTALL_HINT = (
    f"{install_hint('tensorrt')} (on Jetson, TensorRT comes with JetPack: "
    f"sudo apt install python3-libnvinfer, then {install_hint('jetson')})"
)
# --hardware-compat value -> HardwareCompatibilityLevel member name, and the version that has it.
HARDWARE_COMPAT = {
    "none": ("NONE", (8, 6)),
    "ampere+": ("AMPERE_PLUS", (8, 6)),
    "same-cc": ("SAME_COMPUTE_CAPABILITY", (10, 9)),
}


class TensorRTError(BackendError):
    """TensorRT missing, too old, or asked for something the installed version cannot do."""


class TensorRTNotInstalled(TensorRTError):
    """No ``tensorrt`` module at all (callers add what to do without it, as build-engine does)."""


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        """``"10.3.0.26"``, ``"8.6.1.post1"``, ``"11.0.0"`` -> TrtVersion."""
        match = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", str(text))
        if not match:
            raise TensorRTError(f"cannot read the TensorRT version {text!r}; reinstall TensorRT")
        major, minor, patch = match.groups()
        return cls(int(major), int(minor), int(patch or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def short(self) -> str:
        return f"{self.major}.{self.minor}"

    def at_least(self, major: int, minor: int = 0) -> bool:
        return (self.major, self.minor) >= (major, minor)

    # ---- network creation -------------------------------------------------------------------------
    def needs_explicit_batch_flag(self) -> bool:
        """Below 10, ONNX networks must be created with EXPLICIT_BATCH; 10 deprecated it, 11 removed it."""
        return self.major < 10

    def has_strongly_typed_flag(self) -> bool:
        return self.major >= 10

    def strongly_typed_only(self) -> bool:
        """11.x: every network is strongly typed; precision lives in the ONNX graph."""
        return self.major >= 11

    def weak_typing_deprecated(self) -> bool:
        """10.12 deprecated BuilderFlag.FP16/INT8, the precision-constraint flags and layer precision."""
        return self.at_least(10, 12)

    def builds_strongly_typed(self, int8: bool = False, qdq: bool = False) -> bool:
        """Whether build-engine makes a STRONGLY_TYPED network: always on 11.x; for Q/DQ graphs on
        10.x (the nodes fix the precision); on 10.12+ unless the build is calibrated INT8 (implicit
        quantization needs the deprecated weakly typed path)."""
        return (
            self.strongly_typed_only()
            or (qdq and self.has_strongly_typed_flag())
            or (self.weak_typing_deprecated() and not int8)
        )

    # ---- precision ---------------------------------------------------------------------------------
    def has_precision_flags(self) -> bool:
        """BuilderFlag.FP16 / INT8 and the precision-constraint flags (removed in 11.0)."""
        return self.major <= 10

    def has_int8_calibrator(self) -> bool:
        return self.major <= 10

    def has_fast_fp16_query(self) -> bool:
        """Builder.platform_has_fast_fp16: deprecated in 10.5, removed in 11.0."""
        return self.major <= 10

    def has_native_layernorm(self) -> bool:
        """The ONNX parser reads LayerNormalization from 8.6 (export with --target-trt 8.5 below)."""
        return family_of(self.major, self.minor).native_layernorm

    def max_onnx_opset(self) -> int:
        return max_opset(self.major, self.minor)

    # ---- portability -------------------------------------------------------------------------------
    def has_version_compatible(self) -> bool:
        return self.at_least(8, 6)

    def has_hardware_compat(self, level: str = "ampere+") -> bool:
        return (self.major, self.minor) >= HARDWARE_COMPAT[level][1]

    # ---- runtime -----------------------------------------------------------------------------------
    def has_name_based_runtime(self) -> bool:
        """num_io_tensors / set_tensor_address / execute_async_v3: 8.5 and later."""
        return self.at_least(8, 5)

    def known_fp16_issue(self) -> Optional[str]:
        """Releases with reported wrong FP16 results on ViTs (the parity check is the real test)."""
        if (self.major, self.minor) in ((10, 3), (10, 4)):
            return (
                f"TensorRT {self.short} has reports of wrong FP16 results on some ViTs (fixed for some models "
                "in 10.6); trust the parity check, or build FP32"
            )
        if (self.major, self.minor) == (10, 7):
            return "TensorRT 10.7 has reports of fused-attention FP16 errors; trust the parity check"
        return None


def import_tensorrt() -> Any:
    """``import tensorrt``, with the install hint when it is missing or broken."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if getattr(exc, "name", None) == "tensorrt" or "No module named 'tensorrt'" in detail:
            raise TensorRTNotInstalled(f"TensorRT is not installed: {INSTALL_HINT}") from None
        raise TensorRTError(f"TensorRT is installed but does not load ({detail}); {INSTALL_HINT}") from None
    version = TrtVersion.parse(getattr(trt, "__version__", "0.0"))
    if (version.major, version.minor) < MIN_SUPPORTED:
        raise TensorRTError(
            f"TensorRT {version} is too old: sacvit-deploy needs 8.5 or later (JetPack 5.1+); {INSTALL_HINT}"
        )
    return trt


def installed_version(trt: Any) -> TrtVersion:
    return TrtVersion.parse(trt.__version__)


def enum_member(trt: Any, enum_name: str, member: str) -> Any:
    """``trt.<enum_name>.<member>`` by name, or a clear error naming the installed version."""
    enum = getattr(trt, enum_name, None)
    value = getattr(enum, member, None) if enum is not None else None
    if value is None:
        raise TensorRTError(f"TensorRT {trt.__version__} has no {enum_name}.{member}")
    return value


def engine_compatibility_problem(
    recorded: Dict[str, Any], running: TrtVersion, running_cc: Optional[str]
) -> Optional[str]:
    """Why an engine built as ``recorded`` (the manifest's ``tensorrt`` section) cannot run here, or None.

    Without version compatibility, TensorRT loads only engines from its own release (major, minor
    and patch must match). Version-compatible engines (8.6+) load on the same or a later release of
    the same major, and across majors only from 8 to 10 and from 10 to 11 (the Support Matrix).
    Without hardware compatibility, the GPU's compute capability must match.
    """
    built_text = recorded.get("version")
    if built_text:
        built = TrtVersion.parse(str(built_text))
        if recorded.get("version_compatible"):
            problem = version_compatible_problem(built, running)
            if problem:
                return problem
        elif built != running:
            return (
                f"built with TensorRT {built}, but this machine has TensorRT {running} (an engine loads only "
                "on the exact release that built it, unless built --version-compatible)"
            )
    built_cc = recorded.get("compute_capability")
    level = recorded.get("hardware_compat") or "none"
    if built_cc and running_cc and level == "none" and str(built_cc) != str(running_cc):
        gpu = recorded.get("gpu") or "another GPU"
        return f"built for compute capability {built_cc} ({gpu}), but this GPU has compute capability {running_cc}"
    if level == "ampere+" and running_cc and _cc_tuple(running_cc) < (8, 0):
        return f"built hardware-compatible for Ampere and later, but this GPU has compute capability {running_cc}"
    if level == "same-cc" and built_cc and running_cc and str(built_cc) != str(running_cc):
        return f"built for compute capability {built_cc} (same-cc), but this GPU has {running_cc}"
    return None


# Version-compatible engines across majors: built with -> loadable by (the Support Matrix).
CROSS_MAJOR_COMPATIBLE = {(8, 10), (10, 11)}


def version_compatible_problem(built: TrtVersion, running: TrtVersion) -> Optional[str]:
    """Why a version-compatible engine built with ``built`` cannot run on ``running``, or None."""
    if running < built:
        return (
            f"built version-compatible with TensorRT {built}, which a TensorRT {running} runtime cannot load "
            "(it needs the same or a later release)"
        )
    if built.major != running.major and (built.major, running.major) not in CROSS_MAJOR_COMPATIBLE:
        return (
            f"built version-compatible with TensorRT {built}, which a TensorRT {running} runtime cannot load "
            "(across majors, version compatibility holds only from 8 to 10 and from 10 to 11)"
        )
    return None


def _cc_tuple(cc: str) -> Tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(cc).split("."))
    except ValueError:
        return (0,)
