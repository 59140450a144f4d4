"""Known power profiles, written as real sysfs-format files, and fake device libraries.

Nothing of monitoring/ is replaced here. The pm_counters and RAPL writers produce the exact
file formats the kernel/firmware produce, at simulated or wall-clock times, so the integrated
energy can be compared with the exact integral of the profile. The fake `amdsmi`, `pyrsmi` and
`pynvml` modules stand in for libraries that need a GPU and its driver: they are injected in
sys.modules and return what the real libraries return (same functions, dicts, units, errors).
"""
from __future__ import annotations

import bisect
import math
import os
import shutil
import tempfile
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest


@pytest.fixture
def sysfs_tmp(tmp_path):
    """A scratch directory on tmpfs when there is one: sysfs lives in memory too, and a disk
    makes the thousands of small rewrites of a simulated run slow (~3 ms each on a VM disk)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="saul-energy-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Profile:
    """Piecewise-linear power over time: ramps are sloped segments, steps are two points at one t.

    Before the first point and after the last, power holds the end value.
    """

    def __init__(self, points: Sequence[Tuple[float, float]]):
        self.points = sorted(points, key=lambda p: p[0])  # stable: step pairs keep their order
        self.times = [p[0] for p in self.points]

    @classmethod
    def constant(cls, watts: float) -> "Profile":
        return cls([(0.0, watts)])

    @classmethod
    def ramp(cls, start_w: float, end_w: float, t0: float, t1: float) -> "Profile":
        return cls([(t0, start_w), (t1, end_w)])

    @classmethod
    def steps(cls, levels: Sequence[Tuple[float, float]]) -> "Profile":
        """[(t_start, watts), ...]: each level holds until the next one starts."""
        points = [(levels[0][0], levels[0][1])]
        for (_, previous), (t, watts) in zip(levels, levels[1:]):
            points += [(t, previous), (t, watts)]
        return cls(points)

    def scaled(self, factor: float) -> "Profile":
        return Profile([(t, w * factor) for t, w in self.points])

    def power(self, t: float) -> float:
        if t <= self.points[0][0]:
            return self.points[0][1]
        if t >= self.points[-1][0]:
            return self.points[-1][1]
        i = bisect.bisect_right(self.times, t)  # points[i-1].t <= t < points[i].t
        (ta, wa), (tb, wb) = self.points[i - 1], self.points[i]
        return wa + (wb - wa) * (t - ta) / (tb - ta)

    def energy(self, t0: float, t1: float) -> float:
        """The exact integral from t0 to t1: a sum of trapezoids over the linear pieces."""
        if t1 <= t0:
            return 0.0
        first_t, first_w = self.points[0]
        last_t, last_w = self.points[-1]
        total = first_w * max(0.0, min(t1, first_t) - t0)  # held before the first point
        total += last_w * max(0.0, t1 - max(t0, last_t))  # held after the last point
        for (ta, wa), (tb, wb) in zip(self.points, self.points[1:]):
            a, b = max(ta, t0), min(tb, t1)
            if b > a:  # a step (ta == tb) has no width and adds nothing
                slope = (wb - wa) / (tb - ta)
                total += 0.5 * ((wa + slope * (a - ta)) + (wa + slope * (b - ta))) * (b - a)
        return total


def _write_atomically(path: Path, text: str) -> None:
    """Real sysfs reads never see half a value; a temp file + rename gives readers the same."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class PmCountersNode:
    """/sys/cray/pm_counters of one node: parts (cpu, memory, accel0..) plus an unmetered rest.

    The node `energy` counts everything (parts + rest), in integer joules as on real blades;
    `power` is in integer watts. `stuck` freezes the energy counter (a dead counter);
    `power_scale` makes the node power file disagree with the counter;
    `reset_counters()` bumps `generation` and restarts every counter from 0.
    """

    root: Path
    parts: Dict[str, Profile]
    rest: Profile = field(default_factory=lambda: Profile.constant(100.0))
    with_timestamp: bool = True
    stuck: bool = False
    power_scale: float = 1.0  # what the `power` file shows vs the truth (a miscalibrated sensor)
    epoch: float = 1_700_000_000.0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.generation = 1
        self.freshness = 0
        self.origin_t: Optional[float] = None  # counters count from here (startup / last reset)
        self.offset_j = 123_456.0  # counters do not start at 0 in a job
        self._stuck_value: Optional[str] = None
        for name, text in (("power_cap", "0 W"), ("startup", "1699990000000000"), ("version", "2")):
            _write_atomically(self.root / name, f"{text}\n")

    def node_power(self, t: float) -> float:
        return self.rest.power(t) + sum(p.power(t) for p in self.parts.values())

    def node_energy(self, t0: float, t1: float) -> float:
        return self.rest.energy(t0, t1) + sum(p.energy(t0, t1) for p in self.parts.values())

    def reset_counters(self) -> None:
        self.generation += 1
        self.origin_t = None
        self.offset_j = 0.0

    def write(self, t: float) -> None:
        if self.origin_t is None:
            self.origin_t = t
        stamp = f" {int((self.epoch + t) * 1e6)} us" if self.with_timestamp else ""
        node_j = self.offset_j + self.node_energy(self.origin_t, t)
        values = {"energy": (node_j, "J"), "power": (self.node_power(t) * self.power_scale, "W")}
        for name, profile in self.parts.items():
            values[f"{name}_energy"] = (self.offset_j / 4 + profile.energy(self.origin_t, t), "J")
            values[f"{name}_power"] = (profile.power(t), "W")
        for name, (value, unit) in values.items():
            text = f"{int(math.floor(value)) if unit == 'J' else int(round(value))} {unit}{stamp}\n"
            if name == "energy" and self.stuck:
                self._stuck_value = self._stuck_value or text
                text = self._stuck_value
            _write_atomically(self.root / name, text)
        self.freshness += 1
        _write_atomically(self.root / "generation", f"{self.generation}\n")
        _write_atomically(self.root / "freshness", f"{self.freshness}\n")


def mi250x_node_parts(load: Profile) -> Dict[str, Profile]:
    """An ADASTRA-like node: CPU, memory, four MI250X packages following `load`."""
    parts = {"cpu": Profile.constant(180.0), "memory": Profile.constant(60.0)}
    for i in range(4):
        parts[f"accel{i}"] = load.scaled(1.0 + 0.05 * i)
    return parts


@dataclass
class RaplTree:
    """/sys/class/powercap with package zones (and subzones + psys that must not be counted)."""

    root: Path
    packages: List[Profile]
    max_range_uj: int = 262_143_328_850
    start_uj: Optional[List[int]] = None  # initial counter values (near max to force a wrap)

    def __post_init__(self) -> None:
        self.origin_t: Optional[float] = None
        self.root.mkdir(parents=True, exist_ok=True)
        for i, _ in enumerate(self.packages):
            zone = self.root / f"intel-rapl:{i}"
            for sub, name in ((0, "core"), (2, "dram")):
                subzone = zone / f"intel-rapl:{i}:{sub}"
                subzone.mkdir(parents=True, exist_ok=True)
                (subzone / "name").write_text(f"{name}\n")
                (subzone / "energy_uj").write_text("1000\n")
            (zone / "name").write_text(f"package-{i}\n")
            (zone / "max_energy_range_uj").write_text(f"{self.max_range_uj}\n")
        psys = self.root / f"intel-rapl:{len(self.packages)}"
        psys.mkdir(exist_ok=True)
        (psys / "name").write_text("psys\n")
        (psys / "energy_uj").write_text("5\n")
        (psys / "max_energy_range_uj").write_text(f"{self.max_range_uj}\n")

    def write(self, t: float) -> None:
        if self.origin_t is None:
            self.origin_t = t
        for i, profile in enumerate(self.packages):
            start = self.start_uj[i] if self.start_uj else 10_000_000
            value = (start + int(profile.energy(self.origin_t, t) * 1e6)) % self.max_range_uj
            _write_atomically(self.root / f"intel-rapl:{i}" / "energy_uj", f"{value}\n")


class BackgroundWriter:
    """Rewrites a node's files from wall-clock time every `period` s, for the meter process tests."""

    def __init__(self, node, period: float = 0.01):
        self.node = node
        self.period = period
        self.t0 = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "BackgroundWriter":
        self.node.write(0.0)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.node.write(time.time() - self.t0)


class SimClock:
    """The time fake device libraries answer for; tests move it forward."""

    def __init__(self, t: float = 0.0):
        self.t = t


# ----------------------------------------------------------------- fake device libraries
class _Handle:
    def __init__(self, index: int):
        self.index = index


def fake_amdsmi(clock: SimClock, packages: List[Profile], *, model: str = "AMD Instinct MI250X",
                secondary_power="N/A", resolution_uj: float = 15.259) -> types.ModuleType:
    """amdsmi for a node of dual-GCD packages: GCD 2k is the primary of package k.

    The primary reports the whole package's power and energy. The secondary reports power as
    `secondary_power` (N/A on ROCm 6, 0 on some stacks) and, the double-counting trap, an
    energy accumulator that repeats the package's.
    """
    module = types.ModuleType("amdsmi")
    dual = "MI250" in model
    gcds = [(k, g) for k in range(len(packages)) for g in ((0, 1) if dual else (0,))]

    class AmdSmiLibraryException(Exception):
        pass

    def package_of(handle) -> Tuple[Profile, bool]:
        k, g = gcds[handle.index]
        return packages[k], g == 0

    def get_power_info(handle):
        profile, primary = package_of(handle)
        power = int(round(profile.power(clock.t))) if primary else secondary_power
        return {"average_socket_power": power, "current_socket_power": "N/A", "gfx_voltage": 800,
                "soc_voltage": 900, "mem_voltage": 1200, "power_limit": 560}

    def get_energy_count(handle):
        profile, _ = package_of(handle)
        ticks = int(profile.energy(0.0, clock.t) * 1e6 / resolution_uj) + 5_000_000
        return {"energy_accumulator": ticks, "counter_resolution": resolution_uj,
                "timestamp": int(clock.t * 1e9)}

    module.AmdSmiLibraryException = AmdSmiLibraryException
    module.amdsmi_init = lambda *flags: None
    module.amdsmi_shut_down = lambda: None
    module.amdsmi_get_processor_handles = lambda: [_Handle(i) for i in range(len(gcds))]
    module.amdsmi_get_gpu_asic_info = lambda handle: {"market_name": model, "vendor_id": "0x1002"}
    module.amdsmi_get_power_info = get_power_info
    module.amdsmi_get_energy_count = get_energy_count
    return module


def fake_pyrsmi(clock: SimClock, packages: List[Profile],
                model: str = "AMD Instinct MI250X") -> Tuple[types.ModuleType, types.ModuleType]:
    """pyrsmi (package, rocml): average power in W per GCD, -1 for the secondary die."""
    package = types.ModuleType("pyrsmi")
    rocml = types.ModuleType("pyrsmi.rocml")

    def average_power(dev: int) -> float:
        k, g = divmod(dev, 2)
        return float(packages[k].power(clock.t)) if g == 0 else -1

    rocml.smi_initialize = lambda: None
    rocml.smi_shutdown = lambda: None
    rocml.smi_get_device_count = lambda: 2 * len(packages)
    rocml.smi_get_device_name = lambda dev: model
    rocml.smi_get_device_average_power = average_power
    package.rocml = rocml
    return package, rocml


def fake_pynvml(clock: SimClock, gpus: List[Profile], *, energy_supported: bool = True,
                model: str = "NVIDIA H100 80GB HBM3") -> types.ModuleType:
    """pynvml: power in integer mW, energy in integer mJ since 'driver load'."""
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    def total_energy(handle) -> int:
        if not energy_supported:
            raise NVMLError_NotSupported("Not Supported")
        return int(gpus[handle.index].energy(0.0, clock.t) * 1e3) + 987_654_321

    module.NVMLError = NVMLError
    module.NVMLError_NotSupported = NVMLError_NotSupported
    module.nvmlInit = lambda: None
    module.nvmlShutdown = lambda: None
    module.nvmlSystemGetDriverVersion = lambda: "580.65.06"
    module.nvmlDeviceGetCount = lambda: len(gpus)
    module.nvmlDeviceGetHandleByIndex = _Handle
    module.nvmlDeviceGetName = lambda handle: model
    module.nvmlDeviceGetPowerUsage = lambda handle: int(round(gpus[handle.index].power(clock.t) * 1e3))
    module.nvmlDeviceGetTotalEnergyConsumption = total_energy
    return module


def simulate(sampler, times: Sequence[float], writers=(), clock: Optional[SimClock] = None):
    """Drive a NodeSampler through simulated time: files/clock first, then one sample each.

    Returns (sample fields list, check fields or None).
    """
    samples, check = [], None
    for t in times:
        for writer in writers:
            writer.write(t)
        if clock is not None:
            clock.t = t
        fields, decided = sampler.sample(t)
        samples.append(fields)
        check = decided or check
    return samples, check


def grid(t0: float, t1: float, dt: float) -> List[float]:
    """Sample times t0, t0+dt, ..., t1 (inclusive), without float drift."""
    n = int(round((t1 - t0) / dt))
    return [t0 + i * dt for i in range(n + 1)]
