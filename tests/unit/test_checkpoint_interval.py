"""checkpoint.every_steps=auto (saul.resilience.checkpoint_interval): Young's interval sqrt(2 C M) in steps from
the measured save cost C and the run's failure rate M, on known inputs; the cadence the step loop follows."""
import math

import pytest

from saul.resilience.checkpoint_interval import (LLAMA3_GPU_HOURS_PER_FAILURE, Cadence, choose, default_mtbf_s,
                                                 interval_steps, measured_costs, observed_mtbf_s, young_interval_s)


def test_young_interval_on_known_inputs():
    assert young_interval_s(10.0, 3600.0) == pytest.approx(math.sqrt(72000.0))  # 268.3 s
    assert interval_steps(10.0, 3600.0, 2.0) == 134  # 268.3 s / 2 s per step
    assert interval_steps(30.0, 6 * 3600.0, 1.5) == round(math.sqrt(2 * 30 * 21600) / 1.5)  # 1138.4 s -> 759
    assert interval_steps(0.01, 10.0, 60.0) == 1  # never below one step
    assert interval_steps(10.0, 3600.0, 0.0) == 1


def test_the_default_mtbf_before_any_failure_scales_with_the_rank_count():
    assert LLAMA3_GPU_HOURS_PER_FAILURE == pytest.approx(50676, rel=1e-4)
    assert default_mtbf_s(768) == pytest.approx(50676 * 3600 / 768, rel=1e-4)  # ~66 h for 96 nodes x 8 GCDs
    mtbf, source = observed_mtbf_s([{"event": "attempt_start", "time": 1000.0}], now=5000.0, world_size=768)
    assert mtbf == default_mtbf_s(768) and "no failure yet" in source


def test_the_run_s_own_failures_set_the_mtbf():
    records = [{"event": "attempt_start", "time": 1000.0},
               {"event": "step_restart", "class": "crash"},
               {"event": "job_end", "class": "stopped", "action": "requeue"},  # a time-limit stop is no failure
               {"event": "attempt_start", "time": 3000.0},
               {"event": "job_end", "class": "node_failure"},
               {"event": "step_restart", "class": "hang"}]
    mtbf, source = observed_mtbf_s(records, now=7000.0, world_size=2)
    assert mtbf == 2000.0 and source.startswith("observed: 3 failure(s)")


def test_costs_come_from_the_newest_save_and_the_logged_steps():
    metrics = [{"step": 1, "step_time_s": 0.5}, {"event": "checkpoint", "step": 1, "seconds": 4.0},
               {"step": 2, "step_time_s": 0.3}, {"event": "checkpoint", "step": 2, "seconds": 2.0},
               {"event": "checkpoint_interval", "step_time_s": 99.0}]
    assert measured_costs(metrics) == (2.0, 0.4)
    assert measured_costs([]) == (None, None)


def test_nothing_measured_yet_saves_after_one_step_to_measure():
    record = choose(7, None, 0.2, [], world_size=2)
    assert record["every_steps"] == 1 and record["next_save_step"] == 8 and record["young_interval_s"] is None


def test_the_cadence_measures_first_then_follows_young_and_records_each_choice():
    written, records = [], [{"event": "attempt_start", "time": 0.0}, {"event": "step_restart", "class": "crash"}]
    cadence = Cadence("auto", True, 2, lambda x: x, written.append, lambda: records, lambda: [])
    assert cadence.due(1, 0.2)  # no save cost known: save at the first step
    cadence.saved(1, 0.5)
    mtbf = written[-1]["mtbf_s"]
    assert mtbf > 0 and written[-1]["save_s"] == 0.5 and written[-1]["step_s"] == 0.2
    every = interval_steps(0.5, mtbf, 0.2)
    assert written[-1]["every_steps"] == every and written[-1]["next_save_step"] == 1 + every
    due = [step for step in range(2, 2 + every) if cadence.due(step, 0.2)]
    assert due == [1 + every]


def test_a_resumed_attempt_plans_from_the_run_s_earlier_measurements():
    metrics = [{"step": s, "step_time_s": 1.0} for s in range(1, 5)] + [{"event": "checkpoint", "step": 4, "seconds": 8.0}]
    written = []
    cadence = Cadence("auto", True, 4, lambda x: x, written.append, lambda: [], lambda: metrics)
    cadence.due(5, 3.0)  # a slow first step after a restart does not set the interval
    assert written[0]["save_s"] == 8.0 and written[0]["step_s"] == 1.0
    assert written[0]["every_steps"] == interval_steps(8.0, default_mtbf_s(4), 1.0)


def test_a_fixed_interval_needs_no_collective_and_writes_nothing():
    def refuse(_):
        raise AssertionError("no broadcast for a fixed interval")
    written = []
    cadence = Cadence(8, False, 2, refuse, written.append, list, list)
    assert [s for s in range(1, 25) if cadence.due(s, 0.1)] == [8, 16, 24]
    cadence.saved(8, 1.0)
    assert written == []
