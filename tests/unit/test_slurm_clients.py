"""Every Slurm client call has a timeout and says so; the watchdog signals only the ranks' step; after_job honours
a cancel. The Slurm clients here are small scripts on PATH (real processes: slow ones really sleep)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saul.resilience import ledger

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_bin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"

    def add(name: str, body: str) -> None:
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\necho \"{name} $*\" >> {calls}\n{body}\n")
        path.chmod(0o755)

    add.calls = lambda: calls.read_text().splitlines() if calls.exists() else []
    add.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
               "SAUL_SLURM_TIMEOUT_S": "1"}
    return add


def python(code: str, env, *args) -> subprocess.CompletedProcess:
    # The guard timeout only keeps a broken build from hanging the suite; the calls must end after ~1 s.
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)


def test_a_client_that_does_not_answer_is_a_clear_message_not_a_hang(fake_bin):
    fake_bin("squeue", "sleep 300 & wait")  # a child keeps the pipes open: the whole group must go
    result = python("from saul.slurm_commands import run_slurm, slurm_output\n"
                    "print(repr(slurm_output(['squeue', '-h'])))\n"
                    "run_slurm(['squeue', '-h'])", fake_bin.env)
    assert "''" in result.stdout
    assert "warning: `squeue -h` did not answer within 1s (is slurmctld overloaded or down?" in result.stderr
    assert "SlurmCommandError: `squeue -h` did not answer within 1s" in result.stderr
    missing = python("from saul.slurm_commands import run_slurm\nrun_slurm(['no-such-slurm-client'])", fake_bin.env)
    assert "could not be started" in missing.stderr and "on PATH" in missing.stderr


WATCHDOG = ("import sys\nfrom saul.resilience.watchdog import slurm_signaller\n"
            "slurm_signaller('77', lookups=2, pause_s=0.1)(sys.argv[1])")


def test_the_watchdog_signals_the_ranks_step_and_never_the_batch_step(fake_bin):
    fake_bin("squeue", 'printf "77.batch|batch\\n77.0|saul-meter\\n77.1|saul-ranks\\n"')
    fake_bin("scancel", "")
    result = python(WATCHDOG, fake_bin.env, "KILL")
    assert result.returncode == 0, result.stderr
    assert [c for c in fake_bin.calls() if c.startswith("scancel")] == ["scancel --signal=KILL 77.1"]


def test_without_a_ranks_step_the_watchdog_signals_nothing(fake_bin):
    fake_bin("squeue", 'printf "77.batch|batch\\n77.0|saul-meter\\n"')
    fake_bin("scancel", "")
    result = python(WATCHDOG, fake_bin.env, "KILL")
    assert "job 77 has no running step named saul-ranks: SIGKILL not sent" in result.stdout
    assert not [c for c in fake_bin.calls() if c.startswith("scancel")]  # in particular not `scancel 77`


def test_a_slow_scancel_in_the_watchdog_is_reported(fake_bin):
    fake_bin("squeue", 'printf "77.1|saul-ranks\\n"')
    fake_bin("scancel", "sleep 300")
    result = python(WATCHDOG, fake_bin.env, "USR1")
    assert result.returncode == 0
    assert "SIGUSR1 to step 77.1 failed: `scancel --signal=USR1 77.1` did not answer within 1s" in result.stdout


def after_job(stage: Path, env, code: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saul.resilience.after_job", str(stage), str(code)], cwd=REPO,
                          env={**env, "SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "0"}, capture_output=True,
                          text=True, timeout=60)


def test_after_job_never_requeues_a_job_whose_cancel_was_recorded(fake_bin, tmp_path):
    fake_bin("scontrol", "")
    stage = tmp_path / "stage"
    ledger.append(stage / "ledger.jsonl", {"event": "cancelled", "job_id": "77", "user": "u"})
    result = after_job(stage, fake_bin.env, 75)  # the ranks' clean stop on scancel's SIGTERM
    assert "-> stop: cancelled by the user" in result.stdout
    assert not fake_bin.calls()
    # A cancel that scancel refused is withdrawn: the stop is requeued as usual.
    ledger.append(stage / "ledger.jsonl", {"event": "cancel_failed", "job_id": "77"})
    result = after_job(stage, fake_bin.env, 75)
    assert "-> requeue" in result.stdout and fake_bin.calls() == ["scontrol requeue 77"]


def test_a_requeue_after_a_node_exclusion_is_not_lost_to_slurms_refusal(fake_bin, tmp_path):
    """Slurm refuses to change a running job's ExcNodeList (seen on the local cluster: "Job is no longer pending
    execution"); the crash after an earlier node exclusion must still be requeued, not end the job."""
    fake_bin("scontrol", 'if [ "$1" = update ]; then echo "Job is no longer pending execution for job 77" >&2; '
                         'exit 1; fi')
    stage = tmp_path / "stage"
    ledger.append(stage / "ledger.jsonl", {"event": "node_excluded", "node": "n2", "reason": "Slurm state down",
                                           "job_id": "77", "time": 1.0})
    result = after_job(stage, fake_bin.env, 137)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fake_bin.calls() == ["scontrol update JobId=77 ExcNodeList=n2", "scontrol requeue 77"]
    assert "after_job: warning: n2 not excluded from the requeued job" in result.stdout


def test_after_job_with_a_controller_that_does_not_answer_says_so(fake_bin, tmp_path):
    fake_bin("scontrol", "sleep 300")
    result = after_job(tmp_path / "stage", fake_bin.env, 75)
    assert result.returncode == 75
    assert "after_job: error: the requeue failed: `scontrol requeue 77` did not answer within 1s" in result.stdout
    records = [json.loads(line) for line in (tmp_path / "stage" / "ledger.jsonl").read_text().splitlines()]
    assert records[-1]["action"] == "requeue"
