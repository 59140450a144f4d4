"""Energy arithmetic, free of I/O: counter deltas, trapezoids, and the start-up plausibility check.

Conventions: times in seconds (any monotonic origin), power in W, energy in J. A hardware
counter is trusted over integrated power because it sees everything between two samples;
power is integrated only when there is no counter or the counter fails the plausibility check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

WRAP = "wrap"
RESET = "reset"


@dataclass(frozen=True)
class CounterStep:
    """delta_j is None when the counter cannot tell what happened (reset, restart)."""

    delta_j: Optional[float]
    event: Optional[str] = None


def counter_step(
    previous_j: float,
    current_j: float,
    *,
    wrap_j: Optional[float] = None,
    previous_generation: Optional[int] = None,
    current_generation: Optional[int] = None,
) -> CounterStep:
    """The energy between two readings of a cumulative counter.

    A generation change, or a decrease on a counter that does not wrap, is a reset: the new
    value is a new origin, so the step says "unknown" instead of a negative jump. A decrease on
    a wrapping counter (RAPL) is one wrap-around: the sampling interval is always far shorter
    than a wrap period (~20 min at 200 W for a 2^38 uJ range).
    """
    if previous_generation is not None and current_generation != previous_generation:
        return CounterStep(None, RESET)
    if current_j >= previous_j:
        return CounterStep(current_j - previous_j)
    if wrap_j:
        return CounterStep(wrap_j - previous_j + current_j, WRAP)
    return CounterStep(None, RESET)


def trapezoid_j(t0: float, p0: Optional[float], t1: float, p1: Optional[float]) -> Optional[float]:
    """Energy of one interval from the power at both ends; one missing end holds the other."""
    if p0 is None and p1 is None:
        return None
    if p0 is None:
        p0 = p1
    if p1 is None:
        p1 = p0
    return 0.5 * (p0 + p1) * (t1 - t0)


def integrate_power(samples: Iterable[Tuple[float, Optional[float]]]) -> float:
    """Trapezoid over (time, power) samples; intervals with no power at either end add nothing."""
    total = 0.0
    previous = None
    for t, power in samples:
        if previous is not None:
            total += trapezoid_j(previous[0], previous[1], t, power) or 0.0
        previous = (t, power)
    return total


def integrate_counter(
    values: Sequence[Optional[float]],
    *,
    wrap_j: Optional[float] = None,
    generations: Optional[Sequence[Optional[int]]] = None,
) -> float:
    """Sum of counter deltas; a reset restarts from the new value, None readings are skipped."""
    total = 0.0
    last_value, last_generation = None, None
    for index, value in enumerate(values):
        if value is None:
            continue
        generation = generations[index] if generations is not None else None
        if last_value is not None:
            step = counter_step(last_value, value, wrap_j=wrap_j,
                                previous_generation=last_generation, current_generation=generation)
            total += step.delta_j or 0.0
        last_value, last_generation = value, generation
    return total


@dataclass(frozen=True)
class Verdict:
    """accepted is None when the window was too quiet to judge (the counter is kept)."""

    accepted: Optional[bool]
    ratio: Optional[float]
    reason: str


def check_counter(
    counter_j: float,
    power_j: float,
    window_s: float,
    *,
    max_factor: float = 2.0,
    min_power_w: float = 1.0,
) -> Verdict:
    """Does the counter agree with mean power x time over the same window?

    A stuck counter (0 J while the device draws hundreds of W), one in the wrong unit, or one
    that covers half a package all show up as a ratio far from 1. Rejected beyond max_factor
    either way.
    """
    if window_s <= 0:
        return Verdict(None, None, "empty window")
    if power_j / window_s < min_power_w and counter_j / window_s < min_power_w:
        return Verdict(None, None, f"both below {min_power_w:g} W over {window_s:.1f} s: cannot judge")
    if power_j <= 0:
        return Verdict(False, None, f"counter {counter_j:.1f} J but power reads 0 over {window_s:.1f} s")
    ratio = counter_j / power_j
    mean_power = power_j / window_s
    if ratio > max_factor or ratio < 1.0 / max_factor:
        return Verdict(
            False,
            ratio,
            f"counter {counter_j:.1f} J vs {power_j:.1f} J from power (mean {mean_power:.1f} W) over "
            f"{window_s:.1f} s: off by x{ratio:.2f}, limit x{max_factor:g}",
        )
    return Verdict(True, ratio, f"counter/power x{ratio:.3f} over {window_s:.1f} s")


class DeviceIntegrator:
    """Both integrals of one device, side by side, from the meter's first sample.

    Keeping the power trapezoid even while the counter is trusted costs nothing and lets the
    plausibility check switch to it retroactively, with no energy lost. Across a counter reset
    the interval is filled from power (or 0 J when the device has no power reading).
    """

    def __init__(self) -> None:
        self.counter_j = 0.0
        self.power_j = 0.0
        self.method: Optional[str] = None  # decided: "counter" | "power"; None = not yet
        self.verdict: Optional[Verdict] = None
        self.events = {WRAP: 0, RESET: 0}
        self.seen_counter = False
        self.seen_power = False
        self.last_power_w: Optional[float] = None  # measured, or derived from the counter
        self._last_t: Optional[float] = None
        self._last_power: Optional[float] = None
        self._last_counter: Optional[Tuple[float, float, Optional[int], float]] = None

    def add(
        self,
        t: float,
        power_w: Optional[float],
        energy_j: Optional[float],
        *,
        wrap_j: Optional[float] = None,
        generation: Optional[int] = None,
    ) -> Optional[str]:
        """Take one sample; returns "wrap"/"reset" when the counter did that since the last one."""
        if self._last_t is not None:
            self.power_j += trapezoid_j(self._last_t, self._last_power, t, power_w) or 0.0
        self._last_t, self._last_power = t, power_w
        self.seen_power |= power_w is not None
        self.last_power_w = power_w
        if energy_j is None:
            return None
        event = None
        if self._last_counter is not None:
            last_t, last_value, last_generation, power_j_then = self._last_counter
            step = counter_step(last_value, energy_j, wrap_j=wrap_j,
                                previous_generation=last_generation, current_generation=generation)
            event = step.event
            if event:
                self.events[event] += 1
            if step.delta_j is not None:
                self.counter_j += step.delta_j
                if power_w is None and t > last_t:
                    self.last_power_w = step.delta_j / (t - last_t)
            else:
                self.counter_j += self.power_j - power_j_then
        self.seen_counter = True
        self._last_counter = (t, energy_j, generation, self.power_j)
        return event

    @property
    def checkable(self) -> bool:
        return self.seen_counter and self.seen_power

    def decide(self, verdict: Optional[Verdict]) -> str:
        """Fix the method once: a rejected counter falls back to power integration."""
        self.verdict = verdict
        if self.seen_counter and (verdict is None or verdict.accepted is not False):
            self.method = "counter"
        else:
            self.method = "power"
        return self.method

    @property
    def current_method(self) -> str:
        if self.method is not None:
            return self.method
        return "counter" if self.seen_counter else "power"

    @property
    def energy_j(self) -> float:
        return self.counter_j if self.current_method == "counter" else self.power_j
