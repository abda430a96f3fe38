"""Option types and value checks shared by the commands: the runtime options (--backend from the
backend table, --device, --threads, OpenVINO's), choices derived from the core tables, and the
checks every command gets by parameter name."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Tuple,
    Type,
)

import typer
from typing_extensions import Annotated

from sacvit_deploy.backends.factory import DEVICES
from sacvit_deploy.backends.factory import auto_order_help as _auto_order_help
from sacvit_deploy.backends.factory import backend_names as _backend_names
from sacvit_deploy.cli._console import note, safe
from sacvit_deploy.cli._paths import RUN_ARTIFACTS, option_name
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.formats import AUTO, FORMAT_NAMES, INIT_FORMATS, TRAIN_FORMATS
from sacvit_deploy.core.trt_families import TRT_FAMILY_NAMES


class Maximum:
    """Annotated metadata: the largest value a checked number may take here (train's global batch)."""

    def __init__(self, value: int) -> None:
        self.value = value


class Minimum:
    """Annotated metadata: the smallest value a checked number may take here (infer's decoding
    threads, where train's data loader takes 0). A checked value carries no typer min=/max=, which
    would answer before the check, as a usage error."""

    def __init__(self, value: int) -> None:
        self.value = value


def _check_threshold(value: Any, option: str, _meta: List[Any]) -> None:
    from sacvit_deploy.core import validate

    if value is None:
        return
    meaning = validate.threshold_note(validate.threshold(value, option), option)
    if meaning is not None:
        note(f"[yellow]warning:[/] {safe(meaning)}")


def _check_batch(value: Any, option: str, meta: List[Any]) -> None:
    from sacvit_deploy.core import validate

    if value is not None:
        limit = next((m.value for m in meta if isinstance(m, Maximum)), validate.MAX_BATCH)
        validate.batch_size(value, option, limit)


def _check_topk(value: Any, option: str, _meta: List[Any]) -> None:
    from sacvit_deploy.core import validate

    if value is not None:
        validate.topk(value, option)


def _check_workers(value: Any, option: str, meta: List[Any]) -> None:
    from sacvit_deploy.core import validate

    if value is not None:
        validate.workers(value, option, next((m.value for m in meta if isinstance(m, Minimum)), 0))


# Values every command checks the same way (core.validate, which the Python API calls too), by
# parameter name: a new command with a --threshold or --batch-size gets the check without asking.
VALUE_CHECKS: Dict[str, Callable[[Any, str, List[Any]], None]] = {
    "threshold": _check_threshold,
    "batch_size": _check_batch,
    "calib_batch": _check_batch,
    "max_batch": _check_batch,
    "topk": _check_topk,
    "workers": _check_workers,
}


def value_checks(fn: Callable[..., Any]) -> Dict[str, Tuple[str, List[Any]]]:
    """parameter -> (option, Annotated metadata) for the parameters :data:`VALUE_CHECKS` covers."""
    import typing_extensions as typing  # Annotated-aware hints on Python 3.8 too (typer needs it)

    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation this Python cannot evaluate: tests/test_mechanisms.py checks
        return {}
    found = {}
    for name in VALUE_CHECKS:
        hint = hints.get(name)
        meta = list(typing.get_args(hint)[1:]) if typing.get_origin(hint) is Annotated else []
        if name in hints:
            found[name] = (option_name(name, meta), meta)
    return found


def check_values(
    fn: Callable[..., Any], checks: Dict[str, Tuple[str, List[Any]]], args: tuple, kwargs: dict
) -> None:
    if not checks:
        return
    import inspect

    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    bound.apply_defaults()
    for name, (option, meta) in checks.items():
        value = bound.arguments.get(name)
        VALUE_CHECKS[name](value, option, meta)


# ---- options shared by the commands that run artifacts (infer, profile, calibrate) --------------------
RUN = "Runtime"


# --backend's choices and help come from the backend table (backends/factory.py's REGISTRY), and
# --device's from its DEVICES. The other choice Enums spell tables that live with numpy or torch, which
# --help does not import; tests/test_cli.py holds every one to its table.
if TYPE_CHECKING:  # members made from a table at run time: opaque to a type checker
    BackendName = Any
    DeviceName = Any
else:
    BackendName = Enum("BackendName", {n: n for n in _backend_names()}, type=str)
    DeviceName = Enum("DeviceName", {n: n for n in DEVICES}, type=str)


ArtifactsOption = Annotated[
    Optional[Path],
    typer.Option(
        help="Artifact folder (default: engines/ if it holds engines, else export/).", rich_help_panel=RUN
    ),
    RUN_ARTIFACTS,
]
BackendOption = Annotated[BackendName, typer.Option(help=_auto_order_help(), rich_help_panel=RUN)]
DeviceOption = Annotated[
    Optional[DeviceName], typer.Option(help="cpu or cuda (default: the backend's best).", rich_help_panel=RUN)
]
ThreadsOption = Annotated[
    Optional[int],
    typer.Option(
        min=1,
        help="CPU threads (ONNX Runtime intra-op; OpenVINO inference threads; torch for --backend torch).",
        rich_help_panel=RUN,
    ),
]


class FolderLabels(str, Enum):
    """What a class folder's name means (calibrate, quantize --images): runtime.exit_calibration."""

    names = "names"
    index = "index"
    sorted = "sorted"


class OvHint(str, Enum):
    LATENCY = "LATENCY"
    THROUGHPUT = "THROUGHPUT"


OvDeviceOption = Annotated[
    Optional[str],
    typer.Option(
        "--ov-device",
        help="--backend openvino: OpenVINO device, CPU (default), GPU, NPU or GPU.1 ...",
        rich_help_panel=RUN,
    ),
]
OvHintOption = Annotated[
    Optional[OvHint],
    typer.Option(
        "--ov-hint",
        help="--backend openvino: performance hint; THROUGHPUT splits each batch over parallel requests.",
        rich_help_panel=RUN,
    ),
]


def openvino_options(
    backend: BackendName, ov_device: Optional[str], ov_hint: Optional[OvHint]
) -> Dict[str, Any]:
    """open_pipeline's keyword arguments for --ov-device / --ov-hint (only with --backend openvino)."""
    if (ov_device or ov_hint) and backend != BackendName.openvino:
        raise SacvitError("--ov-device and --ov-hint apply to --backend openvino; add it or drop them")
    opts: Dict[str, Any] = {}
    if ov_device:
        opts["provider"] = ov_device
    if ov_hint:
        opts["hint"] = ov_hint.value
    return opts


# ---- choices derived from the core tables ------------------------------------------------------------
def _choice_enum(name: str, values: Tuple[str, ...]) -> Type[Enum]:
    """A str Enum for typer whose members are ``values`` (member names made identifier-safe)."""
    return Enum(name, {"v_" + v.replace(".", "_").replace("-", "_"): v for v in values}, type=str)


if TYPE_CHECKING:  # members made from the tables at run time: opaque to a type checker
    TrtFamilyChoice = Any
    CheckpointFormatChoice = Any
    TrainFormatChoice = Any
    InitFormatChoice = Any
else:
    TrtFamilyChoice = _choice_enum("TrtFamilyChoice", TRT_FAMILY_NAMES)
    CheckpointFormatChoice = _choice_enum("CheckpointFormatChoice", (AUTO, *FORMAT_NAMES))
    TrainFormatChoice = _choice_enum("TrainFormatChoice", TRAIN_FORMATS)
    InitFormatChoice = _choice_enum("InitFormatChoice", INIT_FORMATS)
