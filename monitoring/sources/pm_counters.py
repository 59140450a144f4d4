"""HPE Cray EX node power counters: /sys/cray/pm_counters.

The most trustworthy node total on ADASTRA/LUMI/Frontier: the blade controller meters the
whole node (CPU, memory, accelerators, the rest) and exposes it as files such as

    energy          "123456 J 1700000000123456 us"   (node joules since `startup`)
    power           "350 W 1700000000123456 us"
    cpu_energy, cpu_power, memory_energy, memory_power, accel0_energy .. accel3_power
    freshness       bumps at every update (~10 Hz)
    generation      bumps when the counters restart (e.g. controller reset)
    power_cap, startup, version

Older firmware omits the timestamp after the unit; both forms are parsed. Slurm's
acct_gather_energy/pm_counters diffs the same `energy` file.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from monitoring.sources.base import EnergySource, Reading, SourceUnavailable

DEFAULT_ROOT = Path("/sys/cray/pm_counters")
_PART_FILE = re.compile(r"^(?P<part>[a-z]+[0-9]*)_(?P<kind>energy|power)$")
_UNIT_SCALE = {"J": 1.0, "kJ": 1e3, "mJ": 1e-3, "uJ": 1e-6, "W": 1.0, "kW": 1e3, "mW": 1e-3}
# A read that straddles a firmware update mixes two instants; retry a few times (the
# documented way is to compare `freshness` before and after).
_CONSISTENT_READ_TRIES = 3


def parse_value(text: str) -> Tuple[float, Optional[str]]:
    """'123456 J 1700000000123456 us' -> (123456.0, 'J'); a bare '12' -> (12.0, None)."""
    fields = text.split()
    if not fields:
        raise ValueError("empty pm_counters file")
    value = float(fields[0])
    unit = fields[1] if len(fields) > 1 else None
    if unit is not None and unit in _UNIT_SCALE:
        value *= _UNIT_SCALE[unit]
    return value, unit


class PmCountersSource(EnergySource):
    name = "pm_counters"
    trust = 1
    covers = frozenset({"node"})

    def __init__(self, root: Path | str = DEFAULT_ROOT):
        self.root = Path(root)
        self._parts: List[str] = []

    @property
    def backend(self) -> str:
        return str(self.root)

    def open(self) -> None:
        if not self.root.is_dir():
            raise SourceUnavailable(f"{self.root} does not exist (not an HPE Cray EX node)")
        energy_file = self.root / "energy"
        try:
            parse_value(energy_file.read_text())
        except FileNotFoundError:
            raise SourceUnavailable(f"{energy_file} missing") from None
        except (OSError, ValueError) as exc:
            raise SourceUnavailable(f"{energy_file} unreadable: {exc}") from None
        parts = set()
        for path in self.root.iterdir():
            match = _PART_FILE.match(path.name)
            if match:
                parts.add(match.group("part"))
        # cpu, memory, then accelerators in numeric order: stable column order in the log.
        self._parts = sorted(parts, key=_part_sort_key)

    def devices(self) -> List[str]:
        return ["node"] + self._parts

    def read(self) -> List[Reading]:
        values: Dict[str, Optional[float]] = {}
        generation: Optional[int] = None
        for _ in range(_CONSISTENT_READ_TRIES):
            before = self._read_number("freshness")
            generation = _as_int(self._read_number("generation"))
            values = {"energy": self._read_number("energy"), "power": self._read_number("power")}
            for part in self._parts:
                values[f"{part}_energy"] = self._read_number(f"{part}_energy")
                values[f"{part}_power"] = self._read_number(f"{part}_power")
            if before is None or before == self._read_number("freshness"):
                break
        readings = [
            Reading("node", values["power"], values["energy"], generation=generation)
        ]
        for part in self._parts:
            readings.append(
                Reading(
                    part,
                    values[f"{part}_power"],
                    values[f"{part}_energy"],
                    in_node_total=False,
                    generation=generation,
                )
            )
        return readings

    def _read_number(self, filename: str) -> Optional[float]:
        try:
            return parse_value((self.root / filename).read_text())[0]
        except (OSError, ValueError):
            return None


def _as_int(value: Optional[float]) -> Optional[int]:
    return None if value is None else int(value)


def _part_sort_key(part: str) -> Tuple[int, str, int]:
    """cpu, memory, then the rest with numbers in numeric order (accel2 before accel10)."""
    match = re.match(r"^([a-z]+)([0-9]*)$", part)
    stem, number = match.group(1), match.group(2)
    order = {"cpu": 0, "memory": 1}
    return (order.get(part, 2), stem, int(number) if number else -1)
