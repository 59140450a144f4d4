"""The small interface every energy source implements, and what one reading looks like.

A source is opened once (detection), then read once per sample. Opening is where a missing
library, driver or file turns into `SourceUnavailable(reason)`: the meter records the reason
and moves on to the next source instead of failing.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import FrozenSet, List, Optional


class SourceUnavailable(Exception):
    """The source cannot measure on this node; str(exc) is the reason recorded in the log."""


@dataclass(frozen=True)
class Reading:
    """One device at one instant.

    power_w: instantaneous or short-average power, None when the device does not report it now.
    energy_j: cumulative hardware counter in joules (arbitrary origin), None when there is none.
    in_node_total: whether this device is summed into the node total. Parts of a node-level
        meter (pm_counters' cpu/memory/accel files) are logged but not added twice.
    wrap_j: the counter's range when it wraps around (RAPL), else None.
    generation: counter epoch; a change means the counter was reset (pm_counters `generation`).
    """

    device: str
    power_w: Optional[float]
    energy_j: Optional[float]
    estimated: bool = False
    in_node_total: bool = True
    wrap_j: Optional[float] = None
    generation: Optional[int] = None


def finite_or_none(value) -> Optional[float]:
    """A float for a usable number, None for N/A strings, NaN, inf and non-numbers."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class EnergySource(ABC):
    """One way of measuring power/energy on a node.

    name: the key used in --sources and in the log.
    trust: lower is more trustworthy; detection tries sources in this order.
    covers: what the source measures: {"node"} for a whole-node meter, else a subset of
        {"gpu", "cpu", "ram"}; detection uses it to avoid counting anything twice.
    """

    name: str = ""
    trust: int = 99
    covers: FrozenSet[str] = frozenset()

    @property
    def backend(self) -> str:
        """What actually answers (library and version, or a path), for the log."""
        return self.name

    @abstractmethod
    def open(self) -> None:
        """Probe the hardware; raise SourceUnavailable(reason) when it cannot measure here."""

    @abstractmethod
    def devices(self) -> List[str]:
        """Device names this source reports, stable for the life of the meter."""

    @abstractmethod
    def read(self) -> List[Reading]:
        """One reading per device; a device that fails this time gets None values, not an error."""

    def close(self) -> None:
        """Release the library (shutdown calls); safe to call twice."""
