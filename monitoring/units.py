"""Energy as people read it: one formatting function for every report, table, plot and status line.

A campaign is counted in kWh (65,480.400 kWh), a test job or a data preparation in Wh or J
(12.3 Wh, 239 J), never `6.64e-05 kWh`; its CO2eq likewise in kg, g or mg. Values are joules
(and kg) everywhere inside the toolkit; only what is shown is converted.
"""
from __future__ import annotations

from typing import Optional, Tuple

J_PER_WH = 3600.0
J_PER_KWH = 3.6e6
# (unit, joules per unit, smallest amount shown in it): the first that fits wins.
_UNITS = (("kWh", J_PER_KWH, J_PER_KWH), ("Wh", J_PER_WH, J_PER_WH), ("J", 1.0, 0.0))


def energy_unit(joules: float) -> Tuple[str, float]:
    """(unit, joules per unit) that shows `joules` (or the largest of a set) with no exponent."""
    magnitude = abs(joules)
    for unit, per_unit, smallest in _UNITS:
        if magnitude >= smallest:
            return unit, per_unit
    return "J", 1.0


def format_energy(joules: Optional[float], unit: Optional[str] = None) -> str:
    """'65,480.400 kWh', '12.3 Wh', '239 J', '0.52 J', '0'; '–' when unknown. `unit` forces one."""
    if joules is None:
        return "–"
    if joules == 0 and unit is None:
        return "0"  # nothing needs no unit, whatever the column's scale
    name, per_unit = (unit, dict((u, p) for u, p, _ in _UNITS)[unit]) if unit else energy_unit(joules)
    value = joules / per_unit
    if name == "kWh":
        text = f"{value:,.3f}"
    elif name == "Wh" or abs(value) >= 100:
        text = f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    else:
        text = f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return f"{text} {name}"


def format_co2(kg: Optional[float]) -> str:
    """CO2eq: '5.001 kg', '12.4 g', '0.834 mg'; '–' when unknown."""
    if kg is None:
        return "–"
    if abs(kg) >= 1 or kg == 0:
        return f"{kg:,.3f} kg"
    if abs(kg) >= 1e-3:
        return f"{kg * 1e3:.3g} g"
    return f"{kg * 1e6:.3g} mg"
