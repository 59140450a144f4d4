"""Each source on its own: file formats, detection order, and libraries that are not there."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from monitoring.sources import (SOURCE_NAMES, SourceOptions, SourceUnavailable, detect_sources,
                                parse_source_names)
from monitoring.sources.amd import AmdGpuSource
from monitoring.sources.estimate import EstimateSource
from monitoring.sources.nvml import NvmlSource
from monitoring.sources.pm_counters import PmCountersSource, parse_value
from monitoring.sources.rapl import RaplSource

try:
    from energy_fixtures import (PmCountersNode, Profile, RaplTree, SimClock, fake_amdsmi,
                                 mi250x_node_parts, sysfs_tmp)
except ModuleNotFoundError:
    from tests.unit.energy_fixtures import (PmCountersNode, Profile, RaplTree, SimClock,
                                            fake_amdsmi, mi250x_node_parts, sysfs_tmp)


@pytest.mark.parametrize("text, value, unit", [
    ("123456 J 1700000000123456 us\n", 123456.0, "J"),
    ("123456 J\n", 123456.0, "J"),
    ("350 W 1700000000123456 us", 350.0, "W"),
    ("12\n", 12.0, None),
])
def test_pm_counters_value_formats(text, value, unit):
    assert parse_value(text) == (value, unit)


def test_pm_counters_reads_node_and_parts(sysfs_tmp):
    node = PmCountersNode(sysfs_tmp / "pm", mi250x_node_parts(Profile.constant(400.0)))
    node.write(10.0)
    source = PmCountersSource(node.root)
    source.open()
    assert source.devices() == ["node", "cpu", "memory", "accel0", "accel1", "accel2", "accel3"]
    readings = {r.device: r for r in source.read()}
    assert readings["node"].power_w == pytest.approx(node.node_power(10.0), abs=1)
    assert readings["node"].in_node_total and not readings["accel0"].in_node_total
    assert readings["node"].generation == 1


def test_pm_counters_unavailable_reasons(sysfs_tmp):
    with pytest.raises(SourceUnavailable, match="does not exist"):
        PmCountersSource(sysfs_tmp / "nowhere").open()
    (sysfs_tmp / "empty").mkdir()
    with pytest.raises(SourceUnavailable, match="energy missing"):
        PmCountersSource(sysfs_tmp / "empty").open()


def test_rapl_unavailable_without_package_zones(sysfs_tmp):
    with pytest.raises(SourceUnavailable, match="no powercap"):
        RaplSource(sysfs_tmp / "nowhere").open()
    (sysfs_tmp / "powercap").mkdir()
    with pytest.raises(SourceUnavailable, match="no intel-rapl:N package zone"):
        RaplSource(sysfs_tmp / "powercap").open()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_rapl_root_only_counter_is_a_reason(sysfs_tmp):
    tree = RaplTree(sysfs_tmp / "powercap", [Profile.constant(100.0)])
    tree.write(0.0)
    (tree.root / "intel-rapl:0" / "energy_uj").chmod(0o000)
    with pytest.raises(SourceUnavailable, match="permission denied"):
        RaplSource(tree.root).open()


def test_real_gpu_libraries_without_a_gpu_are_unavailable_with_a_reason():
    """The installed pyrsmi / nvidia-ml-py on this GPU-less machine, not fakes."""
    if importlib.util.find_spec("amdsmi") is None:
        with pytest.raises(SourceUnavailable, match="amdsmi: ModuleNotFoundError"):
            AmdGpuSource().open()
    if importlib.util.find_spec("pynvml") is not None:
        try:
            NvmlSource().open()
        except SourceUnavailable as exc:
            assert "NVMLError" in str(exc)
        else:
            pytest.skip("this machine has an NVIDIA driver")


def test_estimate_is_flagged_and_narrowable():
    source = EstimateSource(["ram"])
    source.open()
    (reading,) = source.read()
    assert reading.device == "ram-estimate" and reading.estimated and reading.power_w > 0
    assert reading.energy_j is None and source.covers == frozenset({"ram"})
    with pytest.raises(ValueError):
        EstimateSource(["gpu"])


def test_parse_source_names():
    assert parse_source_names("") == list(SOURCE_NAMES)
    assert parse_source_names("rapl, pm_counters") == ["pm_counters", "rapl"]  # trust order
    with pytest.raises(ValueError, match="unknown energy source 'rapll'"):
        parse_source_names("rapl,rapll")


def test_pm_counters_makes_every_other_source_unnecessary(sysfs_tmp):
    node = PmCountersNode(sysfs_tmp / "pm", {"accel0": Profile.constant(300.0)})
    node.write(0.0)
    detection = detect_sources(SOURCE_NAMES, SourceOptions(pm_counters_root=node.root))
    assert detection.label == "pm_counters" and not detection.rejected
    assert set(detection.skipped) == {"amdsmi", "nvml", "rapl", "estimate"}
    assert "pm_counters" in detection.skipped["rapl"]
    assert detection.describe()["covers"] == ["node"]


def test_detection_records_why_each_source_was_rejected(sysfs_tmp, monkeypatch):
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    monkeypatch.setitem(sys.modules, "pyrsmi", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    detection = detect_sources(SOURCE_NAMES, SourceOptions(pm_counters_root=sysfs_tmp / "a",
                                                           rapl_root=sysfs_tmp / "b"))
    assert detection.label == "estimate" and detection.estimated
    assert set(detection.rejected) == {"pm_counters", "amdsmi", "nvml", "rapl"}
    assert "amdsmi: ModuleNotFoundError" in detection.rejected["amdsmi"]
    assert "pyrsmi: ModuleNotFoundError" in detection.rejected["amdsmi"]


def test_amd_package_grouping_by_model_and_override(monkeypatch):
    clock = SimClock(5.0)
    packages = [Profile.constant(200.0), Profile.constant(250.0)]
    monkeypatch.setitem(sys.modules, "amdsmi", fake_amdsmi(clock, packages, model="AMD Instinct MI210"))
    single = AmdGpuSource()
    single.open()
    assert single.devices() == ["amdgpu0", "amdgpu1"]  # one GCD per package
    monkeypatch.setitem(sys.modules, "amdsmi", fake_amdsmi(clock, packages))
    forced = AmdGpuSource(gcds_per_package=1)
    forced.open()
    readings = forced.read()
    assert [r.device for r in readings] == ["amdgpu0", "amdgpu1", "amdgpu2", "amdgpu3"]
    assert [r.power_w for r in readings] == [200.0, None, 250.0, None]  # secondary dies: N/A


def test_the_estimate_opens_inside_a_slurm_job_without_scontrol(tmp_path):
    """A meter in an image: SLURM_JOB_ID set, no Slurm client on PATH (codecarbon would call scontrol)."""
    import subprocess

    probe = ("from monitoring.sources.estimate import EstimateSource; s = EstimateSource(); s.open(); "
             "print(sorted(r.device for r in s.read()))")
    env = {"SLURM_JOB_ID": "4242", "PATH": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['cpu-estimate', 'ram-estimate']"
