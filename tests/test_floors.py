"""pyproject's lower bounds are the versions the floors CI job installs (constraints-floors.txt)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _release(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def test_pyproject_floors_are_the_versions_the_floors_job_installs():
    text = (ROOT / "pyproject.toml").read_text()
    pins = _pins()
    assert {"torch", "numpy", "onnx", "onnxruntime", "pillow", "typer"} <= set(pins), pins
    for name, pinned in pins.items():
        # "name>=X" or "name[extra]>=X" as a whole requirement (not onnxruntime-gpu for onnxruntime).
        bounds = re.findall(rf'"{re.escape(name)}(?:\[[^\]]*\])?>=([0-9.]+)', text, flags=re.IGNORECASE)
        assert bounds, f"pyproject.toml has no '{name}>=' bound for the pinned floor {pinned}"
        for bound in bounds:
            assert _release(bound) == _release(pinned), (
                f"pyproject says {name}>={bound}; the floors job installs {pinned}"
            )


def test_the_torch_refusal_names_the_tested_floor():
    from sacvit_deploy.model._torch_floor import TORCH_FLOOR, torch_problem

    assert _release(_pins()["torch"])[:2] == TORCH_FLOOR
    message = torch_problem("2.1.2+cu121")
    assert message is not None and "torch 2.1.2+cu121" in message and "torch>=2.3" in message
    assert torch_problem("2.3.0a0+40ec155e58.nv24.03") is None  # JetPack 6.0's NVIDIA wheel
    assert torch_problem("2.13.0+cpu") is None


def test_quantize_refuses_an_onnxruntime_below_its_floor_in_one_line():
    from sacvit_deploy.quantize.qdq import ONNXRUNTIME_FLOOR, onnxruntime_problem

    assert _release(_pins()["onnxruntime"]) == ONNXRUNTIME_FLOOR
    message = onnxruntime_problem("1.19.2")
    assert message is not None and "1.19.2" in message and "onnxruntime>=1.20.1" in message
    assert "\n" not in message
    assert onnxruntime_problem("1.20.1") is None and onnxruntime_problem("1.32.0") is None
