"""Stops with real signals to real rank processes on this machine (no Slurm): a stop signal during
start-up, and the way ranks leave a stop when the launcher behaves like `srun --kill-on-bad-exit=1`
(the first rank to exit non-zero makes it SIGTERM the others, and SIGKILL them KillWait later)."""
import os
import signal
import time
from pathlib import Path

import pytest

from jobs.frozen_config import freeze_or_check
from jobs.local_launcher import LocalJob
from jobs.submit import prepare_submission
from saul.resilience import ledger
from tests.integration import e2e

KILL_WAIT_S = 5.0  # the test cluster's KillWait; sites use 30 s or more
USR2_BIT = 1 << (signal.SIGUSR2 - 1)


def start_ranks(packed_data: Path, runs: Path, nproc: int, *extra: str) -> LocalJob:
    """The stage's ranks as the local launcher starts them, without its supervision."""
    _, cfg, rundir, _ = prepare_submission([
        "stage=cpt", "model=tiny-mixtral", "site=local", f"nproc={nproc}", f"runs_root={runs}", "run=stop",
        f"data.path={packed_data}", "train.threads_per_rank=1", "train.log_every=1", "energy.enabled=false", *extra])
    freeze_or_check(rundir.config, cfg, rundir.ledger)
    job = LocalJob(rundir.root, nproc, rundir.logs, extra_env=e2e.env_extra())
    job.start()
    return job


def wait_like_srun_kill_on_bad_exit(job: LocalJob, timeout: float = 120) -> tuple:
    """(exit codes, when each rank was seen gone)."""
    deadline, first_bad_exit, gone = time.time() + timeout, None, {}
    while time.time() < deadline:
        codes = [p.poll() for p in job.procs]
        gone.update({rank: time.time() for rank, c in enumerate(codes) if c is not None and rank not in gone})
        if all(c is not None for c in codes):
            return codes, [gone[rank] for rank in range(len(codes))]
        if first_bad_exit is None and any(c not in (None, 0) for c in codes):
            first_bad_exit = time.time()
            job.signal_all(signal.SIGTERM)
        if first_bad_exit is not None and time.time() - first_bad_exit > KILL_WAIT_S:
            job.signal_all(signal.SIGKILL)
        time.sleep(0.002)
    job.signal_all(signal.SIGKILL)
    raise AssertionError(f"ranks still running after {timeout}s")


def catches_usr2(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & USR2_BIT)


def attempt_ends(stage: Path) -> list:
    return [r for r in ledger.read(stage / "ledger.jsonl") if r.get("event") == "attempt_end"]


def test_ranks_stopped_by_a_signal_leave_together_and_all_exit_75(packed_data, tmp_path):
    job = start_ranks(packed_data, tmp_path / "runs", 2, "train.max_steps=200", "checkpoint.every_steps=100")
    try:
        e2e.wait_for_step(job.stage_dir / "metrics.jsonl", 2, job.procs[0])
        job.signal_all(signal.SIGUSR2)  # a preemption notice reaches every rank
        codes, gone_at = wait_like_srun_kill_on_bad_exit(job)
    finally:
        job.signal_all(signal.SIGKILL)
    logs = "\n".join(job.log_path(r).read_text()[-1500:] for r in range(2))
    # Killed by the launcher's SIGTERM, a rank would exit 143 (or -9): a crash, not a stop.
    assert codes == [75, 75], logs
    ends = attempt_ends(job.stage_dir)
    assert len(ends) == 1 and ends[0]["exit_code"] == 75 and ends[0]["reason"] == "signal SIGUSR2", ends
    # No rank left before rank 0 had written the attempt's end (the one a launcher's kill would cut).
    assert min(gone_at) >= ends[0]["time"], (gone_at, ends[0]["time"])
    step = ends[0]["step_end"]
    assert (job.stage_dir / "checkpoints" / f"step-{step:08d}").is_dir()  # saved on stop, then left


def test_a_stop_signal_during_start_up_stops_before_the_first_step(packed_data, tmp_path):
    job = start_ranks(packed_data, tmp_path / "runs", 1, "train.max_steps=20")
    rank = job.procs[0]
    try:
        deadline = time.time() + 60
        while not catches_usr2(rank.pid):  # the task's first line: before torch is even imported
            assert rank.poll() is None and time.time() < deadline, "the rank never caught USR2"
            time.sleep(0.002)
        os.kill(rank.pid, signal.SIGUSR2)
        code = rank.wait(timeout=120)
    finally:
        job.signal_all(signal.SIGKILL)
    assert code == 75, job.log_path(0).read_text()[-2000:]
    ends = attempt_ends(job.stage_dir)
    assert len(ends) == 1 and ends[0]["reason"] == "signal SIGUSR2 during start-up", ends
    assert not e2e.step_records(job.stage_dir / "metrics.jsonl")  # no step trained
    assert not list((job.stage_dir / "checkpoints").glob("step-*"))
    assert "resume with the same command" in job.log_path(0).read_text()
