"""Rank 0's heartbeat: rate-limited within a phase, immediate on a phase change."""
import time

from saul.resilience.heartbeat import Heartbeat, read


def test_heartbeat_writes_phase_changes_at_once_and_steps_at_most_once_per_interval(tmp_path):
    hb = Heartbeat(tmp_path, enabled=True, min_interval_s=0.3)
    hb.beat(0, "load")
    assert read(tmp_path)["phase"] == "load"
    hb.beat(1, "train")
    hb.beat(2, "train")
    assert read(tmp_path)["step"] == 1  # within the interval: not rewritten
    time.sleep(0.35)
    hb.beat(3, "train")
    assert read(tmp_path)["step"] == 3
    hb.beat(3, "save")
    assert read(tmp_path)["phase"] == "save"


def test_disabled_heartbeat_writes_nothing(tmp_path):
    Heartbeat(tmp_path / "hb", enabled=False).beat(1, "train")
    assert read(tmp_path / "hb") is None


def test_a_beat_says_whose_it_is_so_a_requeued_attempt_ignores_the_previous_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    Heartbeat(tmp_path, enabled=True, job_id="4242", attempt=3).beat(7, "train")
    beat = read(tmp_path)
    assert (beat["job_id"], beat["restart_count"], beat["attempt"], beat["step"]) == ("4242", 2, 3, 7)
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    Heartbeat(tmp_path, enabled=True, job_id="local-1").beat(0, "load")  # a local run: restart 0
    assert read(tmp_path)["restart_count"] == 0 and read(tmp_path)["job_id"] == "local-1"
