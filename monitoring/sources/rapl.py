"""CPU package energy from Linux powercap RAPL: /sys/class/powercap/intel-rapl:N/energy_uj.

Only top-level package zones are read (intel-rapl:0, intel-rapl:1, ...): their subzones
(core, uncore, dram: intel-rapl:0:0 ...) are parts of the package or overlap it, and `psys`
covers the whole platform including the packages, so either would count energy twice. AMD
Zen CPUs show up under the same intel-rapl names. The counter wraps at max_energy_range_uj;
energy_uj is root-only on most kernels since CVE-2020-8694, which makes the source unavailable.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from monitoring.sources.base import EnergySource, Reading, SourceUnavailable

DEFAULT_ROOT = Path("/sys/class/powercap")
_PACKAGE_ZONE = re.compile(r"^intel-rapl:(\d+)$")


@dataclass
class _Zone:
    device: str
    energy_file: Path
    wrap_j: Optional[float]


class RaplSource(EnergySource):
    name = "rapl"
    trust = 4
    covers = frozenset({"cpu"})

    def __init__(self, root: Path | str = DEFAULT_ROOT):
        self.root = Path(root)
        self._zones: List[_Zone] = []

    @property
    def backend(self) -> str:
        return str(self.root)

    def open(self) -> None:
        if not self.root.is_dir():
            raise SourceUnavailable(f"{self.root} does not exist (no powercap RAPL driver)")
        zones = []
        for path in sorted(self.root.iterdir(), key=lambda p: p.name):
            match = _PACKAGE_ZONE.match(path.name)
            if not match:
                continue
            label = _read_text(path / "name") or f"package-{match.group(1)}"
            if not label.startswith("package"):
                continue  # psys: the platform total, which includes the packages
            try:
                int((path / "energy_uj").read_text())
            except PermissionError:
                raise SourceUnavailable(
                    f"{path / 'energy_uj'}: permission denied (root-only since CVE-2020-8694)"
                ) from None
            except (OSError, ValueError) as exc:
                raise SourceUnavailable(f"{path / 'energy_uj'} unreadable: {exc}") from None
            max_range = _read_text(path / "max_energy_range_uj")
            wrap_j = int(max_range) * 1e-6 if max_range and max_range.isdigit() else None
            zones.append(_Zone(f"cpu-{label}", path / "energy_uj", wrap_j))
        if not zones:
            raise SourceUnavailable(f"no intel-rapl:N package zone under {self.root}")
        self._zones = zones

    def devices(self) -> List[str]:
        return [zone.device for zone in self._zones]

    def read(self) -> List[Reading]:
        readings = []
        for zone in self._zones:
            try:
                energy_j = int(zone.energy_file.read_text()) * 1e-6
            except (OSError, ValueError):
                energy_j = None
            # RAPL has no power file: the sampler derives power from counter deltas.
            readings.append(Reading(zone.device, None, energy_j, wrap_j=zone.wrap_j))
        return readings


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None
