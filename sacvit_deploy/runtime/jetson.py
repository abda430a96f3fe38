"""Jetson power and clock state for `sacvit-deploy profile`: tegrastats, nvpmodel, jetson_clocks.

Everything that touches the machine goes through injectable callables (a command runner, a file
reader, a ``Popen`` factory), so the whole path runs in tests with fakes and on any other machine it
is skipped with one note.

Power comes from ``tegrastats --interval 100`` run in a subprocess while the timed loop runs. Each
line lists the board's INA3221 power rails, in one of these forms (current value first, then a
running average, and on JetPack 7 a third value):

- JetPack 4 (Nano, TX2, Xavier):  ``POM_5V_IN 2448/2448`` or ``VDD_IN 5336/4970`` (mW, no unit)
- JetPack 5 (Xavier, Orin):       ``VDD_IN 4998mW/4998mW``; AGX Orin has no input rail:
                                  ``VDD_GPU_SOC 2389mW/2389mW VDD_CPU_CV 398mW/398mW VIN_SYS_5V0 2520mW/2520mW``
- JetPack 6:                      the same rails, the line prefixed by ``MM-DD-YYYY HH:MM:SS``
- JetPack 7:                      ``VIN_SYS_5V0 5500mW/5500mW/5500mW``

The board's total is ``VDD_IN`` or ``POM_5V_IN`` (the module input) when present, else the sum of all
rails (AGX Orin and Xavier, where no single rail measures the input): jtop's rule. It is the module's
power, not the wall socket's: the carrier board and the power supply are not measured.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# "NAME cur/avg" or "NAME curmW/avgmW[/peakmW]"; the trailing \b refuses "RAM 2448/30536MB".
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?\b")
_STAMP = re.compile(r"^\s*(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d)\s")
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # the module input, when the board measures it
_MODEL_FILE = Path("/proc/device-tree/model")
_RELEASE_FILE = Path("/etc/nv_tegra_release")

CommandRunner = Callable[
    [Sequence[str]], str
]  # runs argv, returns stdout; raises OSError / CalledProcessError
TextReader = Callable[[Path], str]  # raises OSError when the file is missing
Popen = Callable[..., Any]  # subprocess.Popen's signature


# ---- parsing (pure) -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TegraSample:
    """One tegrastats line: instantaneous power per rail (mW) and JetPack 6's timestamp if any."""

    rails: Dict[str, int]
    stamp: Optional[str] = None

    @property
    def total(self) -> Optional[Tuple[str, int]]:
        """(rail name, mW) of the board's total: the input rail, else the sum of all rails."""
        for name in TOTAL_RAILS:
            if name in self.rails:
                return name, self.rails[name]
        if not self.rails:
            return None
        return "sum(" + "+".join(self.rails) + ")", sum(self.rails.values())


def parse_tegrastats_line(line: str) -> TegraSample:
    """Power rails of one tegrastats line (empty ``rails`` when the line has none).

    Unconnected channels (``NC``, listed on Orin) are dropped.
    """
    stamp = _STAMP.match(line)
    rails = {name: int(current) for name, current, _avg, _peak in _RAIL.findall(line) if name != "NC"}
    return TegraSample(rails, stamp.group(1) if stamp else None)


@dataclass(frozen=True)
class PowerSummary:
    """Average power over a timed window and the energy it implies."""

    rail: str  # the total's source: "VDD_IN", "POM_5V_IN" or "sum(...)"
    samples: int
    mean_mw: float
    min_mw: float
    max_mw: float
    rails_mean_mw: Dict[str, float] = field(default_factory=dict)

    def energy_mj(self, seconds: float) -> float:
        return self.mean_mw * seconds  # mW x s = mJ

    def to_dict(self) -> Dict[str, Any]:
        return {
            "rail": self.rail,
            "samples": self.samples,
            "mean_mw": self.mean_mw,
            "min_mw": self.min_mw,
            "max_mw": self.max_mw,
            "rails_mean_mw": self.rails_mean_mw,
        }


def summarize_power(lines: Sequence[str]) -> Optional[PowerSummary]:
    """Average the total power of tegrastats lines; None when no line has a power rail."""
    samples = [s for s in (parse_tegrastats_line(line) for line in lines) if s.rails]
    if not samples:
        return None
    totals = [s.total for s in samples]
    names = {t[0] for t in totals if t}
    values = [t[1] for t in totals if t]
    rails: Dict[str, List[int]] = {}
    for s in samples:
        for name, mw in s.rails.items():
            rails.setdefault(name, []).append(mw)
    return PowerSummary(
        rail=" / ".join(sorted(names)),
        samples=len(values),
        mean_mw=sum(values) / len(values),
        min_mw=float(min(values)),
        max_mw=float(max(values)),
        rails_mean_mw={k: sum(v) / len(v) for k, v in rails.items()},
    )


def parse_nvpmodel(text: str) -> Dict[str, Any]:
    """``nvpmodel -q`` output -> {"mode": "MAXN", "id": 0} (keys absent when not found)."""
    out: Dict[str, Any] = {}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("NV Power Mode"):
            out["mode"] = line.split(":", 1)[1].strip()
            if i + 1 < len(lines) and lines[i + 1].isdigit():
                out["id"] = int(lines[i + 1])
    return out


_FREQS = re.compile(r"MinFreq=(\d+) MaxFreq=(\d+)")


def parse_jetson_clocks(text: str) -> Optional[bool]:
    """``jetson_clocks --show`` -> True when every online CPU and the GPU are pinned (min == max)."""
    pinned = []
    for line in text.splitlines():
        line = line.strip()
        if not (re.match(r"cpu\d+:", line) or line.startswith("GPU ")):
            continue
        if "Online=0" in line:
            continue
        m = _FREQS.search(line)
        if m:
            pinned.append(m.group(1) == m.group(2))
    return all(pinned) if pinned else None


# ---- the machine ----------------------------------------------------------------------------------
def run_command(argv: Sequence[str]) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=True).stdout


def read_text(path: Path) -> str:
    return path.read_text(errors="replace")


@dataclass
class JetsonInfo:
    model: str
    l4t: Optional[str]
    nvpmodel: Dict[str, Any]
    jetson_clocks: Optional[bool]
    jetson_clocks_source: str
    tegrastats: Optional[str]  # its path, None when missing

    def to_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model,
            "l4t": self.l4t,
            "nvpmodel": self.nvpmodel or None,
            "jetson_clocks": self.jetson_clocks,
            "jetson_clocks_source": self.jetson_clocks_source,
            "tegrastats": self.tegrastats,
        }


@dataclass
class Jetson:
    """Detects a Jetson and samples its power; every outside effect is an injectable callable."""

    run: CommandRunner = run_command
    read: TextReader = read_text
    which: Callable[[str], Optional[str]] = shutil.which
    popen: Popen = subprocess.Popen
    interval_ms: int = 100
    power_seconds: float = 2.0  # shortest power-measurement loop: about 20 tegrastats samples

    def model(self) -> Optional[str]:
        """The board name when this is a Jetson (device tree or nv_tegra_release), else None."""
        try:
            model = self.read(_MODEL_FILE).replace("\x00", "").strip()
        except OSError:
            model = ""
        if "jetson" in model.lower():
            return model
        try:
            self.read(_RELEASE_FILE)
        except OSError:
            return None
        return model or "NVIDIA Jetson (model unknown)"

    def probe(self) -> Tuple[Optional[JetsonInfo], str]:
        """(info, note). info is None off a Jetson or without tegrastats; the note says why."""
        model = self.model()
        if model is None:
            return None, "power: not a Jetson (no /proc/device-tree/model or /etc/nv_tegra_release); skipped"
        tegrastats = self.which("tegrastats")
        info = JetsonInfo(
            model=model,
            l4t=self._l4t(),
            nvpmodel=self._nvpmodel(),
            jetson_clocks=None,
            jetson_clocks_source="unknown",
            tegrastats=tegrastats,
        )
        info.jetson_clocks, info.jetson_clocks_source = self._clocks()
        if tegrastats is None:
            return info, f"power: {model} but tegrastats is not on PATH; power skipped"
        return info, f"power: {model}, sampling tegrastats every {self.interval_ms} ms"

    def _l4t(self) -> Optional[str]:
        try:
            first = self.read(_RELEASE_FILE).splitlines()[0]
        except (OSError, IndexError):
            return None
        m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", first)
        return f"{m.group(1)}.{m.group(2)}" if m else first.strip("# ").strip()

    def _nvpmodel(self) -> Dict[str, Any]:
        if self.which("nvpmodel") is None:
            return {}
        try:
            return parse_nvpmodel(self.run(["nvpmodel", "-q"]))
        except (OSError, subprocess.SubprocessError):
            return {}

    def _clocks(self) -> Tuple[Optional[bool], str]:
        if self.which("jetson_clocks") is not None:
            try:
                state = parse_jetson_clocks(self.run(["jetson_clocks", "--show"]))
                if state is not None:
                    return state, "jetson_clocks --show"
            except (OSError, subprocess.SubprocessError):
                pass  # --show needs root on most releases: fall back to the clock files
        cpufreq = Path("/sys/devices/system/cpu/cpu0/cpufreq")
        try:
            low = int(self.read(cpufreq / "scaling_min_freq"))
            high = int(self.read(cpufreq / "cpuinfo_max_freq"))
        except (OSError, ValueError):
            return None, "unknown (jetson_clocks --show needs root; cpufreq files unreadable)"
        return low == high, "cpu0 scaling_min_freq == cpuinfo_max_freq"

    def sampler(self) -> TegrastatsSampler:
        return TegrastatsSampler(self.popen, self.interval_ms)


class TegrastatsSampler:
    """``with sampler:`` runs tegrastats in the background; ``summary()`` averages what it printed."""

    def __init__(self, popen: Popen = subprocess.Popen, interval_ms: int = 100) -> None:
        self._popen = popen
        self.interval_ms = interval_ms
        self.lines: List[str] = []
        self._proc: Any = None
        self._thread: Optional[threading.Thread] = None
        self.seconds = 0.0

    def __enter__(self) -> TegrastatsSampler:
        self.lines = []
        self._start = time.perf_counter()
        try:
            self._proc = self._popen(
                ["tegrastats", "--interval", str(self.interval_ms)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            self._proc = None  # no samples: summary() is None and the report says so
            return self
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            self.lines.append(line)

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def summary(self) -> Optional[PowerSummary]:
        return summarize_power(self.lines)
