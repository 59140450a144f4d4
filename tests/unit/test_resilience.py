"""The requeue decision, the hang detector and the exit-code contract, as pure functions."""
import pytest

from jobs.local_launcher import combine_exit_codes
from saul.resilience.after_job import classify, decide
from saul.resilience.watchdog import HangDetector


@pytest.mark.parametrize("code, kind", [(0, "done"), (75, "stopped"), (2, "user_error"), (93, "user_error"),
                                        (1, "crash"), (137, "crash"), (-9, "crash")])
def test_exit_codes_are_classified(code, kind):
    assert classify(code) == kind


def test_stopped_is_requeued_without_touching_the_budget():
    history = [{"class": "crash", "checkpoint_step": 8}] * 5
    assert decide(75, history, 8, budget=3)[0] == "requeue"


def test_user_errors_are_never_retried():
    action, why = decide(2, [], 8, budget=3)
    assert action == "stop" and "no retry" in why


def test_crashes_are_retried_until_the_budget_without_progress_is_spent():
    assert decide(1, [], 8, budget=3) == ("requeue", "crash (exit code 1), 1/3 of the failure budget used")
    two = [{"class": "crash", "checkpoint_step": 8}]
    assert decide(1, two, 8, budget=3)[0] == "requeue"
    three = two * 2
    action, why = decide(1, three, 8, budget=3)
    assert action == "stop" and "3 crashes in a row without a new checkpoint" in why


def test_progress_resets_the_budget():
    history = [{"class": "crash", "checkpoint_step": 4}, {"class": "crash", "checkpoint_step": 4}]
    assert decide(1, history, 8, budget=3)[0] == "requeue"  # a new checkpoint (8) since those crashes
    history = [{"class": "crash", "checkpoint_step": 8}, {"class": "stopped", "checkpoint_step": 8},
               {"class": "crash", "checkpoint_step": 8}]
    assert decide(1, history, 8, budget=3)[0] == "requeue"  # only consecutive crashes count


def test_hangs_count_against_the_budget_and_say_so():
    action, why = decide(137, [{"class": "hang", "checkpoint_step": 8}], 8, budget=2, hung=True)
    assert action == "stop"
    assert decide(137, [], 8, budget=2, hung=True)[1].startswith("hang (killed by the watchdog)")


def test_hang_detector_ignores_checkpoint_io_and_fires_on_stalled_training():
    d = HangDetector(timeout_s=10, start_grace_s=100)
    t0 = d.started
    assert d.observe({"step": 1, "phase": "train", "time": t0 + 1}, t0 + 1) is None
    assert d.observe({"step": 2, "phase": "save", "time": t0 + 2}, t0 + 2) is None
    assert d.observe({"step": 2, "phase": "save", "time": t0 + 2}, t0 + 60) is None  # a slow save is not a hang
    assert d.observe({"step": 2, "phase": "train", "time": t0 + 61}, t0 + 61) is None
    assert d.observe({"step": 2, "phase": "train", "time": t0 + 61}, t0 + 65) is None
    verdict = d.observe({"step": 2, "phase": "train", "time": t0 + 61}, t0 + 75)
    assert verdict and "no progress for 14s at step 2" in verdict


def test_hang_detector_applies_the_start_grace_to_an_attempt_that_only_sees_the_previous_attempts_heartbeat():
    """After a requeue the previous attempt's last beat is still on disk (the file is replaced, never deleted):
    a rendezvous hang of the new attempt must still end at the start grace, not run to the time limit."""
    d = HangDetector(timeout_s=10, start_grace_s=100)
    t0 = d.started
    stale = {"step": 5, "phase": "train", "time": t0 - 500}  # the previous attempt's last beat
    assert d.observe(stale, t0 + 50) is None and d.observe(stale, t0 + 90) is None
    assert "no heartbeat of this attempt 100s after its start" in d.observe(stale, t0 + 101)


def test_hang_detector_ignores_heartbeats_of_another_job_or_restart():
    d = HangDetector(timeout_s=10, start_grace_s=100, job="42", restart=1)
    t0 = d.started
    assert d.observe({"step": 1, "phase": "train", "time": t0 + 5, "job_id": "41"}, t0 + 50) is None
    assert d.observe({"step": 1, "phase": "train", "time": t0 + 5, "job_id": "42", "restart_count": 0}, t0 + 101)
    ours = HangDetector(timeout_s=10, start_grace_s=100, job="42", restart=1, started=t0)
    beat = {"step": 1, "phase": "train", "time": t0 + 5, "job_id": "42", "restart_count": 1}
    assert ours.observe(beat, t0 + 101) is None  # this attempt's first beat: progress, grace over
    assert "no progress" in ours.observe(beat, t0 + 115)


def test_hang_detector_without_any_heartbeat_fires_at_the_start_grace():
    d = HangDetector(timeout_s=10, start_grace_s=100)
    assert d.observe(None, d.started + 99) is None
    assert "100s after its start" in d.observe(None, d.started + 101)


@pytest.mark.parametrize("codes, combined", [([0, 0], 0), ([75, 75], 75), ([0, 75], 75), ([75, -9], 137),
                                             ([1, 75], 1), ([2, 1], 2), ([93, 0], 93)])
def test_one_exit_code_for_a_local_job(codes, combined):
    assert combine_exit_codes(codes) == combined
