"""monitoring.energy: counter deltas, trapezoids, the plausibility check, the device integrator."""
import pytest

from monitoring.energy import (DeviceIntegrator, check_counter, counter_step, integrate_counter,
                               integrate_power, trapezoid_j)


def test_counter_step_normal_wrap_and_reset():
    assert counter_step(100.0, 150.0).delta_j == 50.0
    wrapped = counter_step(990.0, 15.0, wrap_j=1000.0)
    assert (wrapped.delta_j, wrapped.event) == (25.0, "wrap")
    reset = counter_step(990.0, 15.0)  # no wrap range: a decrease is a reset, never negative
    assert (reset.delta_j, reset.event) == (None, "reset")
    bumped = counter_step(100.0, 150.0, previous_generation=3, current_generation=4)
    assert (bumped.delta_j, bumped.event) == (None, "reset")  # generation wins even if it grew


def test_trapezoid_and_power_integration():
    assert trapezoid_j(0.0, 100.0, 2.0, 300.0) == 400.0
    assert trapezoid_j(0.0, None, 2.0, 300.0) == 600.0  # one end missing: hold the other
    assert trapezoid_j(0.0, None, 2.0, None) is None
    assert integrate_power([(0, 100.0), (1, 200.0), (2, None), (3, None), (4, 100.0)]) == 150 + 200 + 100


def test_integrate_counter_skips_gaps_and_restarts_after_reset():
    assert integrate_counter([10.0, None, 30.0, 35.0]) == 25.0  # a gap loses nothing
    assert integrate_counter([900.0, 990.0, 20.0], wrap_j=1000.0) == 120.0
    assert integrate_counter([10.0, 20.0, 5.0, 9.0], generations=[1, 1, 2, 2]) == 14.0


@pytest.mark.parametrize(
    "counter_j, power_j, accepted",
    [
        (1000.0, 1000.0, True),
        (1900.0, 1000.0, True),
        (2100.0, 1000.0, False),  # counter runs > x2 fast
        (400.0, 1000.0, False),  # counter runs > x2 slow
        (0.0, 1000.0, False),  # stuck counter
        (0.5, 0.5, None),  # an idle device: too quiet to judge, keep the counter
        (500.0, 0.0, False),  # counter moves while power reads 0
    ],
)
def test_check_counter(counter_j, power_j, accepted):
    verdict = check_counter(counter_j, power_j, 2.0, max_factor=2.0, min_power_w=1.0)
    assert verdict.accepted is accepted
    assert verdict.reason


def test_integrator_fills_a_reset_interval_from_power_and_switches_retroactively():
    integrator = DeviceIntegrator()
    for t, power, counter, generation in [(0, 100.0, 5000.0, 1), (1, 100.0, 5100.0, 1),
                                          (2, 100.0, 3.0, 2), (3, 100.0, 103.0, 2)]:
        integrator.add(t, power, counter, generation=generation)
    assert integrator.events == {"wrap": 0, "reset": 1}
    assert integrator.counter_j == pytest.approx(300.0)  # 100 + (reset: 100 from power) + 100
    assert integrator.current_method == "counter"
    verdict = check_counter(0.0, 300.0, 3.0)
    assert integrator.decide(verdict) == "power"
    assert integrator.energy_j == pytest.approx(integrator.power_j) == pytest.approx(300.0)


def test_integrator_derives_power_for_a_counter_only_device():
    integrator = DeviceIntegrator()
    integrator.add(0.0, None, 10.0)
    assert integrator.last_power_w is None
    integrator.add(0.5, None, 110.0)
    assert integrator.last_power_w == pytest.approx(200.0)
    assert integrator.decide(None) == "counter" and integrator.energy_j == pytest.approx(100.0)


def test_integrator_without_counter_uses_power():
    integrator = DeviceIntegrator()
    integrator.add(0.0, 50.0, None)
    integrator.add(2.0, 150.0, None)
    assert integrator.decide(None) == "power" and integrator.energy_j == pytest.approx(200.0)
