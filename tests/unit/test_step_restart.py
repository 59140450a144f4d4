"""In-job restart decisions (saul.resilience.step_restart): relaunch a crashed or hung step in the allocation
while the failure budget, the nodes and the time limit allow; otherwise leave the loop to after_job."""
import pytest

from saul.resilience import ledger
from saul.resilience.step_restart import LEAVE, RELAUNCH, budget_history, decide_in_job, main, parse_time_left
from saul.resilience.watchdog import hang_marker


def decide(code=137, hung=False, history=(), checkpoint_step=8, budget=3, enabled=True, lost=(), left=None,
           min_left=180.0, was_cancelled=False):
    return decide_in_job(code, hung, list(history), checkpoint_step, budget, enabled, list(lost), left, min_left,
                         was_cancelled)


def test_a_crash_with_budget_nodes_and_time_left_is_relaunched_here():
    relaunch, why = decide(code=137, left=3600)
    assert relaunch and "crash (exit code 137), 1/3 of the failure budget used" in why
    assert "in-job restart" in why


def test_a_hang_is_relaunched_here_too():
    relaunch, why = decide(code=137, hung=True)
    assert relaunch and why.startswith("hang")


@pytest.mark.parametrize("code", [0, 75, 2, 93])
def test_done_stopped_and_user_errors_leave_the_loop(code):
    relaunch, why = decide(code=code)
    assert not relaunch and "after_job decides" in why


def test_in_job_restarts_spend_the_same_budget_as_requeues():
    history = [{"event": "job_end", "class": "crash", "checkpoint_step": 8},
               {"event": "step_restart", "class": "hang", "checkpoint_step": 8}]
    relaunch, why = decide(history=history)
    assert not relaunch and "3 crashes in a row without a new checkpoint (budget 3)" in why
    # a new checkpoint since: the budget is whole again
    assert decide(history=history, checkpoint_step=16)[0]


def test_a_lost_node_without_spare_goes_back_to_slurm():
    relaunch, why = decide(lost=["n2"])
    assert not relaunch and "n2" in why and "back to Slurm" in why


def test_too_little_time_left_requeues_instead():
    relaunch, why = decide(left=100, min_left=180)
    assert not relaunch and "100s of the time limit left" in why
    assert decide(left=200, min_left=180)[0]


def test_switched_off_or_cancelled_never_relaunches():
    assert not decide(enabled=False)[0]
    assert "in_job_restart=false" in decide(enabled=False)[1]
    assert decide(was_cancelled=True) == (False, "cancelled by the user")


@pytest.mark.parametrize("text, seconds", [("1-02:03:04", 93784.0), ("2:03:04", 7384.0), ("3:04", 184.0),
                                           ("0:00", 0.0), ("UNLIMITED", None), ("INVALID", None), ("", None)])
def test_squeue_time_left_is_parsed(text, seconds):
    assert parse_time_left(text) == seconds


def test_budget_history_keeps_requeues_and_in_job_restarts_in_order():
    records = [{"event": "attempt_start"}, {"event": "step_restart", "n": 1}, {"event": "hang"},
               {"event": "job_end", "n": 2}]
    assert [r["n"] for r in budget_history(records)] == [1, 2]


def test_each_launch_in_the_allocation_has_its_own_hang_marker(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.delenv("SAUL_STEP_RESTART", raising=False)
    first = hang_marker(tmp_path, "42")
    monkeypatch.setenv("SAUL_STEP_RESTART", "2")
    assert first.name == "hang-42-1" and hang_marker(tmp_path, "42").name == "hang-42-1.2"


def test_main_records_the_relaunch_and_says_why(tmp_path, monkeypatch, capsys):
    """Outside an allocation (no nodes, no job time) a crash is relaunched and recorded; a user error is not."""
    for name in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SAUL_STEP_RESTART"):
        monkeypatch.delenv(name, raising=False)
    assert main([str(tmp_path), "137", "--step", "0", "--budget", "3", "--step-started", "100.5"]) == RELAUNCH
    (record,) = [r for r in ledger.read(tmp_path / "ledger.jsonl") if r["event"] == "step_restart"]
    assert record["step_restart"] == 1 and record["class"] == "crash" and record["step_started"] == 100.5
    assert record["step_returned"] >= record["step_started"]
    assert main([str(tmp_path), "2", "--step", "1"]) == LEAVE
    assert main([str(tmp_path), "137", "--step", "1", "--off"]) == LEAVE
    assert "in_job_restart=false" in capsys.readouterr().out
    assert len(ledger.read(tmp_path / "ledger.jsonl")) == 1
