"""AMD Instinct GPUs through AMD SMI: the `amdsmi` package (ROCm >= 6), else `pyrsmi`.

amdsmi gives an energy accumulator per device (ticks x counter_resolution uJ) and the socket
power in W; pyrsmi only gives average power in W. Both need the ROCm runtime library and the
amdgpu driver: anything that goes wrong while loading or initialising them means "not here".

MI250/MI250X packages are two GCDs that the library lists as two devices, but only the primary
die reports power, and it reports the whole package (the secondary reads N/A or 0, "secondary
die": ROCm/rocm_smi_lib#160, ml-energy/zeus#203). So readings are per *package*: the power of
the GCD that reports it (max over the package's GCDs, so a stack that repeats the package
power on both dies is still counted once) and that primary GCD's energy counter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from monitoring.sources.base import EnergySource, Reading, SourceUnavailable, finite_or_none

# amdsmi power keys, best first: MI200 reports the ~1 s average, MI300 only the current value.
_POWER_KEYS = ("average_socket_power", "current_socket_power", "socket_power")
# u16 "not available" sentinel of the gpu_metrics table that some stacks pass through.
_NA_SENTINEL = 0xFFFF
_DUAL_GCD_MODELS = ("MI250",)  # MI250 and MI250X


def _positive_power(value) -> Optional[float]:
    """A real power reading, or None for N/A, 0 (secondary die) and sentinels."""
    watts = finite_or_none(value)
    if watts is None or watts <= 0 or watts >= _NA_SENTINEL:
        return None
    return watts


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _AmdSmiBackend:
    kind = "amdsmi"

    def __init__(self):
        import amdsmi  # noqa: PLC0415 - optional, absent without ROCm

        self.lib = amdsmi
        amdsmi.amdsmi_init()
        self.handles = list(amdsmi.amdsmi_get_processor_handles())
        self.label = f"amdsmi {getattr(amdsmi, '__version__', '')}".strip()

    def count(self) -> int:
        return len(self.handles)

    def model(self, index: int) -> str:
        try:
            return str(self.lib.amdsmi_get_gpu_asic_info(self.handles[index]).get("market_name", ""))
        except Exception:  # noqa: BLE001 - a name is cosmetic; any library error means unknown
            return ""

    def power_w(self, index: int) -> Optional[float]:
        try:
            info = self.lib.amdsmi_get_power_info(self.handles[index])
        except Exception:  # noqa: BLE001 - a failed query this round is a gap, not a crash
            return None
        for key in _POWER_KEYS:
            watts = _positive_power(info.get(key))
            if watts is not None:
                return watts
        return None

    def energy_j(self, index: int) -> Optional[float]:
        try:
            info = self.lib.amdsmi_get_energy_count(self.handles[index])
        except Exception:  # noqa: BLE001
            return None
        # The tick count was called "power" before amdsmi 6.2.1, "energy_accumulator" since.
        ticks = finite_or_none(info.get("energy_accumulator", info.get("power")))
        resolution_uj = finite_or_none(info.get("counter_resolution"))
        if ticks is None or resolution_uj is None:
            return None
        return ticks * resolution_uj * 1e-6

    def shutdown(self) -> None:
        try:
            self.lib.amdsmi_shut_down()
        except Exception:  # noqa: BLE001 - shutting down a half-initialised library
            pass


class _PyrsmiBackend:
    kind = "pyrsmi"

    def __init__(self):
        from pyrsmi import rocml  # noqa: PLC0415 - optional

        self.lib = rocml
        rocml.smi_initialize()
        self._count = int(rocml.smi_get_device_count())
        self.label = "pyrsmi"

    def count(self) -> int:
        return max(self._count, 0)

    def model(self, index: int) -> str:
        try:
            return str(self.lib.smi_get_device_name(index))
        except Exception:  # noqa: BLE001
            return ""

    def power_w(self, index: int) -> Optional[float]:
        try:
            return _positive_power(self.lib.smi_get_device_average_power(index))  # -1 = error
        except Exception:  # noqa: BLE001
            return None

    def energy_j(self, index: int) -> Optional[float]:
        return None  # pyrsmi exposes no energy counter

    def shutdown(self) -> None:
        try:
            self.lib.smi_shutdown()
        except Exception:  # noqa: BLE001
            pass


@dataclass
class _Package:
    name: str
    gcds: List[int]
    primary: int  # the GCD that reports the package's power and carries its energy counter


class AmdGpuSource(EnergySource):
    name = "amdsmi"
    trust = 2
    covers = frozenset({"gpu"})

    def __init__(self, gcds_per_package: Optional[int] = None):
        """gcds_per_package: None = from the model name (2 for MI250/MI250X, else 1)."""
        self.gcds_per_package = gcds_per_package
        self._lib = None
        self._packages: List[_Package] = []
        self.model = ""

    @property
    def backend(self) -> str:
        return self._lib.label if self._lib is not None else "none"

    def open(self) -> None:
        failures = []
        for backend in (_AmdSmiBackend, _PyrsmiBackend):
            try:
                self._lib = backend()
                break
            except Exception as exc:  # noqa: BLE001 - ImportError, OSError, ROCMLError_*, AmdSmi*
                failures.append(f"{backend.kind}: {_describe(exc)}")
        if self._lib is None:
            raise SourceUnavailable("; ".join(failures))
        count = self._lib.count()
        if count == 0:
            self.close()
            raise SourceUnavailable("AMD SMI initialised but found no GPU")
        self.model = self._lib.model(0)
        per_package = self.gcds_per_package or (
            2 if any(m in self.model for m in _DUAL_GCD_MODELS) else 1
        )
        self._packages = []
        for first in range(0, count, per_package):
            # The library lists the two dies of a package next to each other (0-1, 2-3, ...).
            gcds = list(range(first, min(first + per_package, count)))
            reporting = [g for g in gcds if self._lib.power_w(g) is not None]
            self._packages.append(
                _Package(f"amdgpu{len(self._packages)}", gcds, reporting[0] if reporting else first)
            )

    def devices(self) -> List[str]:
        return [package.name for package in self._packages]

    def read(self) -> List[Reading]:
        readings = []
        for package in self._packages:
            powers = [p for p in (self._lib.power_w(g) for g in package.gcds) if p is not None]
            readings.append(
                Reading(
                    package.name,
                    max(powers) if powers else None,
                    self._lib.energy_j(package.primary),
                )
            )
        return readings

    def describe_packages(self) -> List[dict]:
        """Which GCDs form which package, for the log's start record."""
        return [
            {"device": p.name, "gcds": p.gcds, "primary_gcd": p.primary} for p in self._packages
        ]

    def close(self) -> None:
        if self._lib is not None:
            self._lib.shutdown()
            self._lib = None
