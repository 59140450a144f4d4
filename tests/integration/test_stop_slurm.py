"""Stops on the real local Slurm cluster with the real rank layout (2 nodes x 2 tasks, `srun
--kill-on-bad-exit=1`): a preemption signal during start-up, then two stops mid-training, in a row
in one job. Every stop must end with every rank exiting 75 by itself, rank 0's attempt_end written,
the job classified "stopped" and requeued by our own requeue path (never by submitit), and no step
lost or repeated. (Finishing after stops is covered by test_faults_slurm.py.)"""
import time
from pathlib import Path

import psutil
import pytest

from tests.integration import e2e
from tests.integration.test_faults_slurm import ledger, submit

pytestmark = pytest.mark.slurm

STOP_EVERY = 2  # attempt 1: USR2 during start-up; attempts 2 and 3: stop after 2 steps each
USR2_BIT = 1 << (12 - 1)  # SIGUSR2 in /proc/<pid>/status SigCgt


def rank_processes(stage: Path, count: int, timeout: float = 120) -> dict:
    folder = str(stage / "logs" / "slurm")
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = {}
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "submitit.core._submit" in cmd and folder in cmd:
                try:
                    found[int(proc.environ()["SLURM_PROCID"])] = proc
                except (psutil.NoSuchProcess, KeyError):
                    continue
        if len(found) == count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} rank processes not found in {timeout}s")


def catches_usr2(proc: psutil.Process) -> bool:
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & USR2_BIT)


def test_stops_at_start_up_and_mid_training_leave_together_and_requeue(slurm_cluster, packed_data, tmp_path):
    runs = tmp_path / "runs"
    job = submit(slurm_cluster, "stage=cpt", "model=tiny-mixtral", f"runs_root={runs}", "run=stops",
                 f"data.path={packed_data}", "nproc=2", "train.max_steps=100", f"train.stop_after_steps={STOP_EVERY}",
                 "checkpoint.every_steps=100", "train.log_every=1", "train.log_sample_ids=true",
                 "train.threads_per_rank=1", "energy.enabled=false")
    stage = runs / "stops" / "cpt"
    ranks = rank_processes(stage, 4)
    # As soon as every rank catches USR2 (the task's first line), before any heartbeat: a preemption
    # notice in the middle of the imports, the rendezvous and the model build.
    deadline = time.time() + 180  # interpreter start + submitit's unpickling: slow on a loaded 2-core CI machine
    while not all(catches_usr2(p) for p in ranks.values()):
        assert time.time() < deadline, "the ranks never installed a USR2 handler"
        time.sleep(0.01)
    assert not (stage / "heartbeats" / "rank0.json").exists()
    slurm_cluster.run(["scancel", "--signal=USR2", job])

    ends = wait_for_job_ends(stage, 3)
    slurm_cluster.run(["scancel", job])  # three stops seen: the fourth run need not start
    assert [e["class"] for e in ends] == ["stopped"] * 3, ends
    assert [e["exit_code"] for e in ends] == [75] * 3 and [e["action"] for e in ends] == ["requeue"] * 3
    assert all(e["job_id"] == job for e in ends)  # requeued by after_job: one job id throughout

    records = ledger(stage)
    starts = [r for r in records if r["event"] == "attempt_start"]
    finished = [r for r in records if r["event"] == "attempt_end"]
    assert [r["attempt"] for r in finished] == [1, 2, 3] == [r["attempt"] for r in starts]
    assert all(r["world_size"] == 4 and r["nodes"] == 2 for r in starts)
    assert "SIGUSR2 during start-up" in finished[0]["reason"]
    assert [(r["step_start"], r["step_end"]) for r in finished[1:]] == [(0, 2), (2, 4)]
    assert [r["exit_code"] for r in finished] == [75] * 3

    steps = e2e.by_step(stage / "metrics.jsonl")
    assert sorted(steps) == [1, 2, 3, 4]
    assert all(len(recs) == 1 for recs in steps.values())  # nothing redone: every stop kept its step
    assert all(r["attempt"] > 1 for recs in steps.values() for r in recs)  # attempt 1 trained nothing

    # Slurm's view of each ranks' step: the tasks ended by themselves with 75, none was killed.
    rows = slurm_cluster.sacct(job, fields=("JobID", "JobName", "State", "ExitCode"), duplicates=True)
    assert [r["ExitCode"] for r in rows if r["JobName"] == "saul-ranks"] == ["75:0"] * 3, rows


def wait_for_job_ends(stage: Path, count: int, timeout: float = 300) -> list:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ends = [r for r in ledger(stage) if r["event"] == "job_end"]
        if len(ends) >= count or (ends and ends[-1]["action"] != "requeue"):
            return ends
        time.sleep(0.5)
    raise AssertionError(f"{count} job ends not seen in {timeout}s; ledger: {ledger(stage)}")
