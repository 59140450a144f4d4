"""One node's sources, read once per tick, turned into power-log records.

The sampler owns the integration state (one DeviceIntegrator per device) and the start-up
plausibility check; it never touches files or clocks itself, so tests drive it with
simulated time and the meter drives it with time.monotonic().
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from monitoring.energy import DeviceIntegrator, check_counter
from monitoring.sources.base import Reading
from monitoring.sources.detect import Detection


@dataclass
class CheckConfig:
    """Start-up plausibility check of every counter that also has a power reading."""

    window_s: float = 2.0  # decide at the first sample at least this long after the first
    max_factor: float = 2.0  # reject a counter off by more than this, either way
    min_power_w: float = 1.0  # below this on both sides the window cannot judge


class NodeSampler:
    def __init__(self, detection: Detection, check: Optional[CheckConfig] = None):
        self.detection = detection
        self.check = check or CheckConfig()
        self.integrators: Dict[str, DeviceIntegrator] = {}
        self.in_node_total: Dict[str, bool] = {}
        self.estimated_devices: set = set()
        self.read_errors: Dict[str, str] = {}  # source -> last error, for the summary
        self.first_t: Optional[float] = None
        self.last_t: Optional[float] = None
        self.samples = 0
        self.checked = False

    def sample(self, t: float) -> Tuple[dict, Optional[dict]]:
        """Read every source at monotonic time t -> (sample fields, check fields or None)."""
        if self.first_t is None:
            self.first_t = t
        self.last_t = t
        self.samples += 1
        power_w: Dict[str, Optional[float]] = {}
        counters: Dict[str, Optional[float]] = {}
        events: List[dict] = []
        for reading in self._read_all():
            integrator = self.integrators.setdefault(reading.device, DeviceIntegrator())
            self.in_node_total[reading.device] = reading.in_node_total
            if reading.estimated:
                self.estimated_devices.add(reading.device)
            event = integrator.add(t, reading.power_w, reading.energy_j,
                                   wrap_j=reading.wrap_j, generation=reading.generation)
            if event:
                events.append({"device": reading.device, "event": event})
            power_w[reading.device] = _rounded(integrator.last_power_w)
            counters[reading.device] = reading.energy_j
        fields = {
            "elapsed_s": round(t - self.first_t, 3),
            "power_w": power_w,
            "energy_counter_j": counters,
            "node_power_w": _rounded(self._node_power(power_w)),
            "node_energy_j": round(self.node_energy_j, 3),
            "estimated": self.estimated,
        }
        if events:
            fields["events"] = events
        check = None
        if not self.checked and self.samples >= 2 and t - self.first_t >= self.check.window_s:
            check = self._decide(t - self.first_t)
        return fields, check

    @property
    def node_energy_j(self) -> float:
        return sum(i.energy_j for d, i in self.integrators.items() if self.in_node_total[d])

    @property
    def estimated(self) -> bool:
        return any(self.in_node_total.get(d) for d in self.estimated_devices)

    @property
    def duration_s(self) -> float:
        return 0.0 if self.first_t is None else self.last_t - self.first_t

    def summary_fields(self) -> dict:
        duration = self.duration_s
        energy = self.node_energy_j
        return {
            "duration_s": round(duration, 3),
            "energy_j": round(energy, 3),
            "mean_power_w": round(energy / duration, 3) if duration > 0 else None,
            "samples": self.samples,
            "estimated": self.estimated,
            "device_energy_j": {d: round(i.energy_j, 3) for d, i in self.integrators.items()},
            "energy_method": {d: i.current_method for d, i in self.integrators.items()},
            "counter_events": {
                d: {k: v for k, v in i.events.items() if v}
                for d, i in self.integrators.items() if any(i.events.values())
            },
            "read_errors": dict(self.read_errors),
        }

    def _read_all(self) -> List[Reading]:
        readings = []
        for source in self.detection.selected:
            try:
                readings.extend(source.read())
            except Exception as exc:  # noqa: BLE001 - one bad read is a gap, not a dead meter
                self.read_errors[source.name] = f"{type(exc).__name__}: {exc}"
                readings.extend(Reading(d, None, None) for d in source.devices())
        return readings

    def _node_power(self, power_w: Dict[str, Optional[float]]) -> Optional[float]:
        """Sum over devices in the node total; None while any of them has no power yet."""
        parts = [p for d, p in power_w.items() if self.in_node_total[d]]
        if not parts or any(p is None for p in parts):
            return None
        return sum(parts)

    def _decide(self, window_s: float) -> dict:
        self.checked = True
        devices = {}
        for device, integrator in self.integrators.items():
            verdict = None
            if integrator.checkable:
                verdict = check_counter(integrator.counter_j, integrator.power_j, window_s,
                                        max_factor=self.check.max_factor,
                                        min_power_w=self.check.min_power_w)
            method = integrator.decide(verdict)
            devices[device] = {
                "method": method,
                "verdict": _verdict_word(verdict),
                "reason": verdict.reason if verdict else _unchecked_reason(integrator),
                "counter_j": round(integrator.counter_j, 3) if integrator.seen_counter else None,
                "power_j": round(integrator.power_j, 3) if integrator.seen_power else None,
            }
        return {"window_s": round(window_s, 3), "devices": devices,
                "rejected": sorted(d for d, v in devices.items() if v["verdict"] == "rejected")}


def _verdict_word(verdict) -> str:
    if verdict is None:
        return "unchecked"
    return {True: "accepted", False: "rejected", None: "inconclusive"}[verdict.accepted]


def _unchecked_reason(integrator: DeviceIntegrator) -> str:
    if integrator.seen_counter:
        return "counter without a power reading to compare with"
    return "no energy counter: power integrated by trapezoid"


def _rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 3)
