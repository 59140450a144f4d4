"""CO2-equivalent of metered energy, from codecarbon's own offline carbon-intensity data.

No figure is typed in here: the intensity of a country is what codecarbon's
OfflineEmissionsTracker would apply for it on private infrastructure, computed by the same
call chain (`Emissions.get_private_infra_emissions` -> `get_country_emissions` ->
the `global_energy_mix.json` shipped in the codecarbon wheel: the country's
`carbon_intensity`, or its energy mix weighted by `carbon_intensity_per_source.json`).
Nothing touches the network: no Electricity Maps token is given and no geolocation is asked.

One thing differs on purpose: for a country codecarbon has no data for, the tracker logs a
warning and silently uses the world average; a report that says "FRA" must not quietly mean
"world", so an unknown code is an error here.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List


class UnknownCountry(ValueError):
    """A country ISO code that codecarbon's offline data does not cover."""


@dataclass(frozen=True)
class CarbonIntensity:
    country_iso_code: str
    country_name: str
    kg_per_kwh: float
    year: object  # the data year codecarbon ships (an int, or None when absent)
    source: str

    @property
    def g_per_kwh(self) -> float:
        return self.kg_per_kwh * 1000.0


def _codecarbon_version() -> str:
    try:
        from codecarbon import __version__
    except ImportError:
        return "?"
    return str(__version__)


@functools.lru_cache(maxsize=None)
def _energy_mix() -> dict:
    from codecarbon.input import DataSource

    return DataSource().get_global_energy_mix_data()


def known_countries() -> List[str]:
    return sorted(_energy_mix())


@functools.lru_cache(maxsize=None)
def carbon_intensity(country_iso_code: str) -> CarbonIntensity:
    """kg CO2eq per kWh for a 3-letter ISO country code ('FRA', 'FIN'), as codecarbon computes it."""
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import GeoMetadata
    from codecarbon.input import DataSource

    code = (country_iso_code or "").strip().upper()
    mix = _energy_mix()
    if code not in mix:
        examples = ", ".join(c for c in ("FRA", "FIN", "DEU", "USA", "CHE") if c in mix)
        raise UnknownCountry(
            f"country ISO code {country_iso_code!r} is not in codecarbon {_codecarbon_version()}'s offline "
            f"energy-mix data ({len(mix)} countries, 3-letter codes such as {examples})")
    # region=None: the country-level figure, as OfflineEmissionsTracker(country_iso_code=...) uses.
    per_kwh = Emissions(DataSource()).get_private_infra_emissions(
        Energy.from_energy(kWh=1.0), GeoMetadata(country_iso_code=code))
    return CarbonIntensity(code, str(mix[code].get("country_name", code)), float(per_kwh),
                           mix[code].get("year"), f"codecarbon {_codecarbon_version()} global_energy_mix.json")


def co2_kg(kwh: float, country_iso_code: str) -> float:
    """CO2eq in kg for kwh of electricity drawn in that country."""
    return kwh * carbon_intensity(country_iso_code).kg_per_kwh
