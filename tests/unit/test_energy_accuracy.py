"""Integrated energy vs the exact integral of known power profiles, through real sysfs files
and device-library-level fakes: within 0.5%, across wraps, resets and a dead counter."""
import sys

import pytest

from monitoring.sampler import CheckConfig, NodeSampler
from monitoring.sources import SourceOptions, detect_sources

try:  # tests/unit is a plain directory on sys.path, or a package
    from energy_fixtures import (PmCountersNode, Profile, RaplTree, SimClock, fake_amdsmi,
                                 fake_pynvml, fake_pyrsmi, grid, mi250x_node_parts, simulate,
                                 sysfs_tmp)
except ModuleNotFoundError:
    from tests.unit.energy_fixtures import (PmCountersNode, Profile, RaplTree, SimClock,
                                            fake_amdsmi, fake_pynvml, fake_pyrsmi, grid,
                                            mi250x_node_parts, simulate, sysfs_tmp)

PROFILES = {
    "constant": Profile.constant(500.0),
    "ramp": Profile([(0.0, 90.0), (40.0, 560.0), (80.0, 560.0), (110.0, 200.0)]),
    "steps": Profile.steps([(0.0, 90.0), (20.5, 560.0), (50.3, 300.0), (80.0, 450.0)]),
}


def within(measured: float, truth: float, rel: float = 0.005) -> bool:
    return abs(measured - truth) <= rel * truth


def pm_sampler(root, **check):
    detection = detect_sources(["pm_counters"], SourceOptions(pm_counters_root=root))
    return NodeSampler(detection, CheckConfig(**check))


@pytest.mark.parametrize("shape", sorted(PROFILES))
@pytest.mark.parametrize("with_timestamp", [True, False])
def test_pm_counters_node_energy_matches_profile(sysfs_tmp, shape, with_timestamp):
    node = PmCountersNode(sysfs_tmp / "pm", mi250x_node_parts(PROFILES[shape]),
                          with_timestamp=with_timestamp)
    node.write(0.0)
    sampler = pm_sampler(node.root)
    times = grid(0.0, 120.0, 1.0)
    samples, check = simulate(sampler, times, [node])
    truth = node.node_energy(times[0], times[-1])
    assert within(sampler.node_energy_j, truth), (sampler.node_energy_j, truth)
    assert check["devices"]["node"]["verdict"] == "accepted"
    assert samples[-1]["node_energy_j"] == pytest.approx(sampler.node_energy_j, abs=1e-3)
    # Parts are logged but never added to the node total a second time.
    assert set(samples[-1]["power_w"]) == {"node", "cpu", "memory", "accel0", "accel1", "accel2", "accel3"}
    assert samples[-1]["node_power_w"] == samples[-1]["power_w"]["node"]


def test_pm_counters_generation_bump_restarts_integration(sysfs_tmp):
    node = PmCountersNode(sysfs_tmp / "pm", mi250x_node_parts(PROFILES["ramp"]))
    node.write(0.0)
    sampler = pm_sampler(node.root)
    before, _ = simulate(sampler, grid(0.0, 60.0, 1.0), [node])
    node.reset_counters()  # the blade controller restarted: counters from 0, generation + 1
    after, _ = simulate(sampler, grid(61.0, 120.0, 1.0), [node])
    truth = node.node_energy(0.0, 120.0)
    assert within(sampler.node_energy_j, truth), (sampler.node_energy_j, truth)
    assert after[0]["events"][0] == {"device": "node", "event": "reset"}
    assert all(s["node_energy_j"] <= t["node_energy_j"] for s, t in zip(before + after, (before + after)[1:]))
    assert sampler.summary_fields()["counter_events"]["node"] == {"reset": 1}


def test_stuck_counter_is_rejected_and_power_integrated(sysfs_tmp):
    node = PmCountersNode(sysfs_tmp / "pm", mi250x_node_parts(PROFILES["constant"]), stuck=True)
    node.write(0.0)
    sampler = pm_sampler(node.root, window_s=3.0)
    times = grid(0.0, 60.0, 1.0)
    samples, check = simulate(sampler, times, [node])
    verdict = check["devices"]["node"]
    assert verdict["verdict"] == "rejected" and verdict["method"] == "power"
    assert "x0.00" in verdict["reason"] and check["rejected"] == ["node"]
    assert check["devices"]["accel0"]["verdict"] == "accepted"  # the parts still count fine
    assert within(sampler.node_energy_j, node.node_energy(0.0, 60.0))
    assert sampler.summary_fields()["energy_method"]["node"] == "power"


def test_counter_off_by_more_than_the_factor_is_rejected(sysfs_tmp):
    # Counter and power disagree x3 (a wrong unit, a counter covering something else).
    node = PmCountersNode(sysfs_tmp / "pm", {"accel0": Profile.constant(400.0)}, power_scale=1 / 3)
    node.write(0.0)
    sampler = pm_sampler(node.root, window_s=2.0, max_factor=2.0)
    _, check = simulate(sampler, grid(0.0, 10.0, 1.0), [node])
    assert check["devices"]["node"]["verdict"] == "rejected"
    node_check = check["devices"]["node"]
    assert node_check["counter_j"] / node_check["power_j"] == pytest.approx(3.0, rel=0.01)
    assert "off by x2.99, limit x2" in node_check["reason"]


@pytest.mark.parametrize("shape", ["constant", "ramp"])
def test_rapl_packages_only_and_wraparound(sysfs_tmp, shape):
    profiles = [PROFILES[shape].scaled(0.4), Profile.constant(150.0)]
    # Package 0 starts 2 kJ below the end of its range: it wraps within the first seconds.
    tree = RaplTree(sysfs_tmp / "powercap", profiles, max_range_uj=65_532_610_987,
                    start_uj=[65_532_610_987 - 2_000_000_000, 1_000])
    tree.write(0.0)
    detection = detect_sources(["rapl"], SourceOptions(rapl_root=tree.root))
    assert detection.selected[0].devices() == ["cpu-package-0", "cpu-package-1"]  # no core/dram/psys
    sampler = NodeSampler(detection)
    times = grid(0.0, 120.0, 1.0)
    samples, check = simulate(sampler, times, [tree])
    truth = sum(p.energy(0.0, 120.0) for p in profiles)
    assert within(sampler.node_energy_j, truth), (sampler.node_energy_j, truth)
    wraps = [e for s in samples for e in s.get("events", [])]
    assert wraps == [{"device": "cpu-package-0", "event": "wrap"}]
    # RAPL has no power file: power is derived from counter deltas, and left unchecked.
    assert samples[-1]["power_w"]["cpu-package-1"] == pytest.approx(150.0, rel=1e-3)
    assert check["devices"]["cpu-package-0"]["verdict"] == "unchecked"


@pytest.mark.parametrize("secondary_power", ["N/A", 0])
def test_mi250x_amdsmi_counts_each_package_once(sysfs_tmp, monkeypatch, secondary_power):
    clock = SimClock()
    packages = [PROFILES["steps"].scaled(1.0 + 0.1 * k) for k in range(4)]
    monkeypatch.setitem(sys.modules, "amdsmi", fake_amdsmi(clock, packages, secondary_power=secondary_power))
    detection = detect_sources(["amdsmi"])
    source = detection.selected[0]
    assert source.backend.startswith("amdsmi") and source.devices() == ["amdgpu0", "amdgpu1", "amdgpu2", "amdgpu3"]
    assert source.describe_packages()[1] == {"device": "amdgpu1", "gcds": [2, 3], "primary_gcd": 2}
    sampler = NodeSampler(detection)
    samples, check = simulate(sampler, grid(0.0, 120.0, 1.0), clock=clock)
    truth = sum(p.energy(0.0, 120.0) for p in packages)
    assert within(sampler.node_energy_j, truth), (sampler.node_energy_j, truth)
    assert samples[-1]["node_power_w"] == pytest.approx(sum(p.power(120.0) for p in packages), abs=2)
    assert {d["verdict"] for d in check["devices"].values()} == {"accepted"}


def test_pyrsmi_fallback_integrates_power_per_package(monkeypatch):
    clock = SimClock()
    packages = [PROFILES["ramp"], PROFILES["steps"]]
    pyrsmi, rocml = fake_pyrsmi(clock, packages)
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # no amdsmi package: import fails
    monkeypatch.setitem(sys.modules, "pyrsmi", pyrsmi)
    monkeypatch.setitem(sys.modules, "pyrsmi.rocml", rocml)
    detection = detect_sources(["amdsmi"])
    assert detection.selected[0].backend == "pyrsmi"
    sampler = NodeSampler(detection)
    simulate(sampler, grid(0.0, 120.0, 0.25), clock=clock)
    truth = sum(p.energy(0.0, 120.0) for p in packages)
    assert within(sampler.node_energy_j, truth), (sampler.node_energy_j, truth)
    assert set(sampler.summary_fields()["energy_method"].values()) == {"power"}


@pytest.mark.parametrize("energy_supported", [True, False])
def test_nvml_energy_counter_or_power(monkeypatch, energy_supported):
    clock = SimClock()
    gpus = [PROFILES["ramp"], PROFILES["constant"]]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(clock, gpus, energy_supported=energy_supported))
    detection = detect_sources(["nvml"])
    assert detection.selected[0].devices() == ["nvgpu0", "nvgpu1"]
    sampler = NodeSampler(detection)
    simulate(sampler, grid(0.0, 120.0, 0.5), clock=clock)
    truth = sum(g.energy(0.0, 120.0) for g in gpus)
    assert within(sampler.node_energy_j, truth), (sampler.node_energy_j, truth)
    expected = "counter" if energy_supported else "power"
    assert set(sampler.summary_fields()["energy_method"].values()) == {expected}


def test_gpus_plus_rapl_plus_estimated_ram_make_the_node_total(sysfs_tmp, monkeypatch):
    clock = SimClock()
    gpus = [Profile.constant(300.0)]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(clock, gpus))
    tree = RaplTree(sysfs_tmp / "powercap", [Profile.constant(120.0)])
    tree.write(0.0)
    detection = detect_sources(["pm_counters", "amdsmi", "nvml", "rapl", "estimate"],
                               SourceOptions(pm_counters_root=sysfs_tmp / "absent", rapl_root=tree.root))
    assert detection.label == "nvml+rapl+estimate"
    estimate = detection.selected[-1]
    assert estimate.devices() == ["ram-estimate"]  # RAPL has the CPU: no estimated CPU on top
    sampler = NodeSampler(detection)
    simulate(sampler, grid(0.0, 30.0, 1.0), [tree], clock=clock)
    ram_j = estimate.read()[0].power_w * 30.0
    assert within(sampler.node_energy_j, 300.0 * 30 + 120.0 * 30 + ram_j)
    assert sampler.estimated is True
