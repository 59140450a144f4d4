"""The meter as a process: real files, real signals, the launcher's start/stop API."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitoring.meter import start_node_meter, stop_node_meter
from monitoring.power_log import PowerLogWarning, load_power_dir, read_records

try:
    from energy_fixtures import BackgroundWriter, PmCountersNode, Profile, mi250x_node_parts, sysfs_tmp
except ModuleNotFoundError:
    from tests.unit.energy_fixtures import (BackgroundWriter, PmCountersNode, Profile,
                                            mi250x_node_parts, sysfs_tmp)

REPO = Path(__file__).resolve().parents[2]


def meter_command(out, *args):
    return [sys.executable, "-m", "monitoring.meter", "--out", str(out), *args]


def run_meter(out, *args, timeout=20):
    return subprocess.run(meter_command(out, *args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def wait_for_samples(log: Path, count: int, timeout: float = 15.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            records = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
            if sum(r["kind"] == "sample" for r in records) >= count:
                return records
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} samples in {log} after {timeout} s")


@pytest.fixture
def cray_node(sysfs_tmp):
    """A pm_counters directory kept current by a writer thread, like the blade controller."""
    node = PmCountersNode(sysfs_tmp / "pm_counters", mi250x_node_parts(
        Profile([(0.0, 150.0), (2.0, 500.0), (30.0, 500.0)])))
    with BackgroundWriter(node, period=0.01) as writer:
        yield node, writer


def test_meter_end_to_end_on_pm_counters(tmp_path, cray_node):
    node, writer = cray_node
    out = tmp_path / "power"
    meter = start_node_meter(out, "x1000c0s0b0n0", "4242", 1, 0.2, sources=["pm_counters"],
                             pm_counters_root=node.root, extra_args=["--check-window", "1.0"])
    wait_for_samples(out / "x1000c0s0b0n0.jsonl", 15)
    assert stop_node_meter(meter) == 0
    records = list(read_records(out / "x1000c0s0b0n0.jsonl"))
    start, samples, summary = records[0], [r for r in records if r["kind"] == "sample"], records[-1]
    assert start["kind"] == "start" and start["sources"][0]["name"] == "pm_counters"
    assert set(start["skipped"]) == set() and start["estimated"] is False
    assert all(r["node"] == "x1000c0s0b0n0" and r["job"] == "4242" and r["attempt"] == 1 for r in records)
    check = next(r for r in records if r["kind"] == "check")
    assert check["devices"]["node"]["verdict"] == "accepted"
    assert summary["kind"] == "summary" and summary["stop_reason"] == "SIGTERM"
    assert summary["samples"] == len(samples) and summary["energy_method"]["node"] == "counter"
    # Truth: the profile's integral between the first and last sample's wall-clock times. The
    # writer's 10 ms update period and whole-joule counter leave ~1% of slack at each end.
    truth = node.node_energy(samples[0]["time"] - writer.t0, samples[-1]["time"] - writer.t0)
    assert summary["energy_j"] == pytest.approx(truth, rel=0.02)
    assert summary["mean_power_w"] == pytest.approx(summary["energy_j"] / summary["duration_s"], rel=1e-3)
    intervals = sorted(b["elapsed_s"] - a["elapsed_s"] for a, b in zip(samples, samples[1:-1]))
    assert intervals[len(intervals) // 2] == pytest.approx(0.2, abs=0.02)  # on the 0.2 s grid


def test_second_meter_for_the_same_node_and_job_exits_at_once(tmp_path, cray_node):
    node, _ = cray_node
    out = tmp_path / "power"
    first = start_node_meter(out, "n1", "77", 0, 0.2, sources=["pm_counters"], pm_counters_root=node.root)
    try:
        wait_for_samples(out / "n1.jsonl", 2)
        began = time.monotonic()
        second = run_meter(out, "--node", "n1", "--job", "77", "--sources", "pm_counters",
                           "--pm-counters-root", str(node.root))
        assert second.returncode == 0 and time.monotonic() - began < 5
        assert "already running" in second.stderr
        assert first.poll() is None  # the first one keeps metering
        other_job = start_node_meter(out, "n1", "78", 0, 0.2, sources=["pm_counters"],
                                     pm_counters_root=node.root)
        assert stop_node_meter(other_job) == 0  # a different job is a different lock
    finally:
        assert stop_node_meter(first) == 0
    starts = [r for r in read_records(out / "n1.jsonl") if r["kind"] == "start"]
    assert sorted(r["job"] for r in starts) == ["77", "78"]


def test_sigkill_leaves_a_readable_log(tmp_path, cray_node):
    node, _ = cray_node
    out = tmp_path / "power"
    meter = start_node_meter(out, "n2", "9", 0, 0.2, sources=["pm_counters"], pm_counters_root=node.root)
    wait_for_samples(out / "n2.jsonl", 5)
    meter.send_signal(signal.SIGKILL)
    meter.wait(10)
    log = out / "n2.jsonl"
    lines = log.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every flushed line is whole
    last_energy = json.loads(lines[-1])["node_energy_j"]
    with open(log, "a") as stream:  # what a kill in the middle of a write leaves behind
        stream.write('{"kind":"sample","time":17000')
    with pytest.warns(PowerLogWarning, match="truncated last line"):
        summaries = load_power_dir(out)
    (entry,) = summaries.values()
    assert not entry.complete and entry.energy_j == pytest.approx(last_energy)
    assert entry.mean_power_w == pytest.approx(last_energy / entry.duration_s)


@pytest.mark.parametrize("stopper", ["stop_file", "watch_pid", "SIGTERM", "SIGINT"])
def test_meter_stops_cleanly(tmp_path, cray_node, stopper):
    node, _ = cray_node
    out = tmp_path / "power"
    stop_file = tmp_path / "STOP"
    watched = subprocess.Popen(["sleep", "60"])
    try:
        meter = start_node_meter(out, "n3", "5", 0, 0.2, sources=["pm_counters"],
                                 pm_counters_root=node.root, stop_file=stop_file, watch_pid=watched.pid)
        wait_for_samples(out / "n3.jsonl", 3)
        if stopper == "stop_file":
            stop_file.touch()
        elif stopper == "watch_pid":
            watched.kill()
            watched.wait()
        else:
            meter.send_signal(getattr(signal, stopper))
        assert meter.wait(10) == 0
    finally:
        if watched.poll() is None:
            watched.kill()
            watched.wait()
    summary = list(read_records(out / "n3.jsonl"))[-1]
    assert summary["kind"] == "summary" and summary["energy_j"] > 0
    expected = {"stop_file": "stop file", "watch_pid": "watched process", "SIGTERM": "SIGTERM",
                "SIGINT": "SIGINT"}[stopper]
    assert summary["stop_reason"].startswith(expected)


@pytest.mark.parametrize("args, message", [
    (["--pm-counters-root", "/nonexistent/pm_counters"], "--pm-counters-root /nonexistent/pm_counters: no such directory"),
    (["--rapl-root", "/nonexistent/powercap"], "--rapl-root /nonexistent/powercap: no such directory"),
    (["--sources", "pm_counters,nvm"], "unknown energy source 'nvm'"),
    (["--interval", "0"], "--interval must be > 0"),
    (["--attempt", "two"], "argument --attempt: invalid int value: 'two'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_meter(tmp_path / "power", "--node", "n4", "--job", "1", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "power" / "n4.jsonl").exists()


def test_no_available_source_is_logged_with_reasons(tmp_path):
    result = run_meter(tmp_path / "power", "--node", "n5", "--job", "1", "--sources", "pm_counters",
                       "--pm-counters-root", str(tmp_path))
    assert result.returncode == 1 and "no energy source available" in result.stderr
    start, summary = read_records(tmp_path / "power" / "n5.jsonl")
    assert "energy missing" in start["rejected"]["pm_counters"]
    assert summary["stop_reason"] == "no energy source" and summary["energy_j"] is None


def test_meter_keeps_metering_through_slurm_warning_and_dump_signals(tmp_path, cray_node):
    """USR2 (time limit ahead) and USR1 (stack dump) go to every job step: the meter must outlive both."""
    node, _ = cray_node
    out = tmp_path / "power"
    meter = start_node_meter(out, "n4", "6", 0, 0.2, sources=["pm_counters"], pm_counters_root=node.root)
    try:
        wait_for_samples(out / "n4.jsonl", 2)
        meter.send_signal(signal.SIGUSR2)
        meter.send_signal(signal.SIGUSR1)
        before = len(list(read_records(out / "n4.jsonl")))
        wait_for_samples(out / "n4.jsonl", before + 3)
        assert meter.poll() is None
    finally:
        assert stop_node_meter(meter) == 0
    assert list(read_records(out / "n4.jsonl"))[-1]["kind"] == "summary"


def test_work_started_after_the_meter_starts_is_metered_even_when_it_ends_at_once(tmp_path):
    """start_node_meter returns once the meter samples: a stage shorter than the meter's own start-up
    (imports and source detection: seconds for codecarbon's estimate) still gets a start and an end
    sample, never a 0 J record."""
    out = tmp_path / "power"
    meter = start_node_meter(out, "n5", "8", 0, 5.0, sources=["estimate"])
    assert stop_node_meter(meter) == 0  # the shortest stage: stopped as soon as it may start
    records = list(read_records(out / "n5.jsonl"))
    summary = records[-1]
    assert summary["kind"] == "summary" and summary["stop_reason"] == "SIGTERM"
    assert summary["samples"] == sum(r["kind"] == "sample" for r in records) >= 2  # window opened and closed
    assert summary["duration_s"] > 0 and summary["energy_j"] > 0
