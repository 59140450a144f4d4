"""One energy format everywhere: kWh for a campaign, Wh or J for a test job, never an exponent."""
import pytest

from monitoring.units import energy_unit, format_co2, format_energy


@pytest.mark.parametrize("joules, shown", [
    (2.357e11, "65,472.222 kWh"), (3.6e6, "1.000 kWh"), (239_000, "66.4 Wh"), (3600, "1.0 Wh"),
    (3599, "3,599 J"), (239.04, "239 J"), (2.3, "2.3 J"), (0.52, "0.52 J"), (0, "0"), (None, "–"),
])
def test_format_energy_picks_the_unit_that_needs_no_exponent(joules, shown):
    assert format_energy(joules) == shown


def test_the_demo_figure_that_read_6_64e_05_kwh_reads_in_joules():
    assert format_energy(6.64e-05 * 3.6e6) == "239 J"


def test_a_forced_unit_and_the_axis_unit_of_a_set():
    assert energy_unit(5e6) == ("kWh", 3.6e6) and energy_unit(5000) == ("Wh", 3600.0) and energy_unit(50) == ("J", 1.0)
    assert format_energy(3.6e6, "Wh") == "1,000 Wh"


@pytest.mark.parametrize("kg, shown", [(5.001, "5.001 kg"), (0.0124, "12.4 g"), (8.34e-07, "0.834 mg"),
                                       (0, "0.000 kg"), (None, "–")])
def test_format_co2(kg, shown):
    assert format_co2(kg) == shown
