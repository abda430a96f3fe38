"""Jetson support without a Jetson: tegrastats lines of each JetPack, nvpmodel / jetson_clocks
output, and the probe and power sampler driven by injected fakes."""

from __future__ import annotations

import io
from typing import ClassVar

import pytest

from sacvit_deploy.runtime.jetson import (
    Jetson,
    TegrastatsSampler,
    parse_jetson_clocks,
    parse_nvpmodel,
    parse_tegrastats_line,
    summarize_power,
)
from sacvit_deploy.runtime.profiling import measure_power

# Lines in the forms tegrastats prints on each JetPack (numbers made up).
JP4_NANO = (
    "RAM 1502/3964MB (lfb 12x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [12%@1428,3%@1428,0%@1428,1%@1428] EMC_FREQ 3%@1600 GR3D_FREQ 0%@76 APE 25 "
    "PLL@27C CPU@29.5C PMIC@100C GPU@27.5C AO@35C thermal@28.25C "
    "POM_5V_IN 2321/2390 POM_5V_GPU 40/41 POM_5V_CPU 402/420"
)
JP5_XAVIER_NX = (
    "RAM 2911/6854MB (lfb 88x4MB) SWAP 0/3427MB (cached 0MB) CPU [4%@1190,2%@1190,off,off,1%@1190,0%@1190] "
    "EMC_FREQ 0%@1600 GR3D_FREQ 0%@114 VIC_FREQ 115 APE 150 AUX@36.5C CPU@38C thermal@37.2C AO@36.5C "
    "GPU@36.5C PMIC@50C VDD_IN 4210mW/4187mW VDD_CPU_GPU_CV 612mW/598mW VDD_SOC 1244mW/1240mW"
)
JP5_AGX_ORIN = (
    "RAM 2510/30536MB (lfb 6321x4MB) SWAP 0/15268MB (cached 0MB) CPU [1%@729,0%@729,2%@729,0%@729,"
    "off,off,off,off,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 "
    "CV0@-256C CPU@43C SOC2@40.1C SOC0@40.5C CV1@-256C GPU@-256C tj@43C SOC1@39.6C CV2@-256C "
    "VDD_GPU_SOC 2401mW/2398mW VDD_CPU_CV 410mW/402mW VIN_SYS_5V0 2531mW/2527mW NC 0mW/0mW "
    "VDDQ_VDD2_1V8AO 305mW/303mW NC 0mW/0mW"
)
JP6_ORIN_NANO = (
    "03-14-2025 09:26:53 RAM 2391/7620MB (lfb 3x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [3%@1510,1%@1510,0%@1510,2%@1510,0%@729,0%@729] GR3D_FREQ 0% cpu@48.1C soc2@46.9C "
    "soc0@47.2C gpu@46.6C tj@48.1C soc1@46.8C VDD_IN 5012mW/4987mW VDD_CPU_GPU_CV 561mW/555mW "
    "VDD_SOC 1470mW/1466mW"
)
JP7_AGX_ORIN = (
    "02-01-2026 11:02:07 RAM 20111/62817MB (lfb 1x2MB) CPU [20%@2201,11%@2201] EMC_FREQ 2%@3199 "
    "GR3D_FREQ 10%@[1300,1300] cpu@51.2C gpu@46.8C VDD_GPU_SOC 5001mW/5010mW/5100mW "
    "VDD_CPU_CV 3200mW/3190mW/3300mW VIN_SYS_5V0 5400mW/5390mW/5500mW"
)


@pytest.mark.parametrize(
    "line, rails, total, stamp",
    [
        (JP4_NANO, {"POM_5V_IN": 2321, "POM_5V_GPU": 40, "POM_5V_CPU": 402}, ("POM_5V_IN", 2321), None),
        (JP5_XAVIER_NX, {"VDD_IN": 4210, "VDD_CPU_GPU_CV": 612, "VDD_SOC": 1244}, ("VDD_IN", 4210), None),
        (
            JP5_AGX_ORIN,
            {"VDD_GPU_SOC": 2401, "VDD_CPU_CV": 410, "VIN_SYS_5V0": 2531, "VDDQ_VDD2_1V8AO": 305},
            ("sum(VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO)", 2401 + 410 + 2531 + 305),
            None,
        ),
        (
            JP6_ORIN_NANO,
            {"VDD_IN": 5012, "VDD_CPU_GPU_CV": 561, "VDD_SOC": 1470},
            ("VDD_IN", 5012),
            "03-14-2025 09:26:53",
        ),
        (
            JP7_AGX_ORIN,
            {"VDD_GPU_SOC": 5001, "VDD_CPU_CV": 3200, "VIN_SYS_5V0": 5400},
            ("sum(VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0)", 13601),
            "02-01-2026 11:02:07",
        ),
    ],
    ids=["jp4-nano", "jp5-xavier-nx", "jp5-agx-orin", "jp6-orin-nano", "jp7-agx-orin"],
)
def test_parse_tegrastats_line(line, rails, total, stamp):
    sample = parse_tegrastats_line(line)
    assert sample.rails == rails  # RAM 2391/7620MB, SWAP, NC channels are not rails
    assert sample.total == total
    assert sample.stamp == stamp


def test_summarize_power_averages_the_total():
    lines = [JP6_ORIN_NANO, "no rails here", JP6_ORIN_NANO.replace("VDD_IN 5012mW", "VDD_IN 6012mW")]
    s = summarize_power(lines)
    assert s is not None
    assert (s.rail, s.samples, s.mean_mw, s.min_mw, s.max_mw) == ("VDD_IN", 2, 5512.0, 5012.0, 6012.0)
    assert s.rails_mean_mw["VDD_SOC"] == 1470.0
    assert s.energy_mj(2.0) == pytest.approx(11024.0)  # mW x s = mJ
    assert summarize_power(["RAM 1/2MB"]) is None


def test_parse_nvpmodel_and_jetson_clocks():
    assert parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n") == {"mode": "MAXN", "id": 0}
    assert parse_nvpmodel("NV Power Mode: 15W\n2") == {"mode": "15W", "id": 2}
    assert parse_nvpmodel("garbage") == {}
    show = (
        "SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit\nOnline CPUs: 0-3\n"
        "cpu0: Online=1 Governor=schedutil MinFreq={lo} MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0\n"
        "cpu4: Online=0 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=729600\n"
        "GPU MinFreq={glo} MaxFreq=1300500000 CurrentFreq=1300500000\n"
        "EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1\n"
    )
    assert parse_jetson_clocks(show.format(lo=2201600, glo=1300500000)) is True
    assert parse_jetson_clocks(show.format(lo=729600, glo=1300500000)) is False
    assert parse_jetson_clocks(show.format(lo=2201600, glo=306000000)) is False
    assert parse_jetson_clocks("nothing") is None


class FakePopen:
    """Stands for subprocess.Popen(["tegrastats", ...]): prints canned lines, then exits."""

    calls: ClassVar[list[list[str]]] = []

    def __init__(self, argv, **kwargs):
        FakePopen.calls.append(list(argv))
        self.stdout = io.StringIO("\n".join([JP6_ORIN_NANO] * 3) + "\n")

    def poll(self):
        return 0

    def terminate(self):  # pragma: no cover - poll() says it has exited
        raise AssertionError("not running")

    def wait(self, timeout=None):
        return 0


def fake_jetson(clocks_show: str | None = None, **overrides) -> Jetson:
    files = {
        "/proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\x00",
        "/etc/nv_tegra_release": "# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64",
        "/sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq": "1510400\n",
        "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq": "1510400\n",
    }
    commands = {("nvpmodel", "-q"): "NV Power Mode: 15W\n0\n"}
    if clocks_show is not None:
        commands[("jetson_clocks", "--show")] = clocks_show

    def read(path):
        if str(path) not in files:
            raise FileNotFoundError(path)
        return files[str(path)]

    def run(argv):
        if tuple(argv) not in commands:
            raise OSError("permission denied")
        return commands[tuple(argv)]

    tools = {"tegrastats", "nvpmodel", "jetson_clocks"}
    options = dict(
        run=run, read=read, which=lambda n: f"/usr/bin/{n}" if n in tools else None, popen=FakePopen
    )
    options.update(overrides)
    return Jetson(**options, power_seconds=0.0)


def test_jetson_probe_with_fakes():
    info, note = fake_jetson().probe()
    assert info is not None and "Orin Nano" in note and "100 ms" in note
    d = info.to_dict()
    assert d["model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert d["l4t"] == "36.4.3"
    assert d["nvpmodel"] == {"mode": "15W", "id": 0}
    # jetson_clocks --show failed (needs root): the cpufreq files decide
    assert d["jetson_clocks"] is True and "scaling_min_freq" in d["jetson_clocks_source"]
    shown, _ = fake_jetson("cpu0: Online=1 MinFreq=729600 MaxFreq=1510400 CurrentFreq=729600\n").probe()
    assert shown is not None and shown.jetson_clocks is False
    assert shown.jetson_clocks_source == "jetson_clocks --show"


def test_jetson_probe_elsewhere_and_without_tegrastats():
    def no_files(path):
        raise FileNotFoundError(path)

    info, note = Jetson(read=no_files).probe()
    assert info is None and note.startswith("power: not a Jetson")
    info, note = fake_jetson(which=lambda n: None).probe()
    assert info is not None and info.tegrastats is None and "not on PATH" in note


def test_tegrastats_sampler_and_measure_power():
    FakePopen.calls = []
    sampler = TegrastatsSampler(FakePopen, interval_ms=100)
    calls = []
    record = measure_power(lambda: calls.append(1), 4, sampler, lambda: None, min_calls=3, min_seconds=0.0)
    assert FakePopen.calls == [["tegrastats", "--interval", "100"]]
    assert record["calls"] == len(calls) == 3 and record["images"] == 12
    assert record["samples"] == 3 and record["mean_mw"] == 5012.0 and record["rail"] == "VDD_IN"
    assert record["energy_per_image_mj"] == pytest.approx(5012.0 * record["seconds"] / 12)


def test_sampler_survives_a_missing_binary():
    def broken(*a, **k):
        raise FileNotFoundError("tegrastats")

    record = measure_power(lambda: None, 1, TegrastatsSampler(broken), lambda: None, 1, 0.0)
    assert record["samples"] == 0 and record["energy_per_image_mj"] is None
