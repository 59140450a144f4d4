"""The peer baseline for benchmarks/goodput_under_faults.py: the plain submitit way to run the same training.

What a careful submitit user writes: a `submitit.helpers.Checkpointable` callable (a USR2 ahead of
the time limit requeues it) in a job submitted with `--requeue` (Slurm requeues it after a node
failure), the same model, step loop and checkpoint interval (it calls our stage task on the same
frozen stage directory), and a loop on the submitting machine that resubmits when the job failed,
because submitit retries timeouts and preemptions only: a crashed rank ends the job FAILED. None of
the toolkit's batch script runs (no in-job restart, no requeue decision, no watchdog, no port
choice); MASTER_ADDR is set to the local cluster's node address, which any user of this cluster
needs. The resubmit loop writes `job_end` records like after_job's so that monitoring/goodput.py
reads this run like the others, and polls every second: faster than a person would.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import List

import submitit

from saul.resilience import ledger

POLL_S = 1.0


class PlainCheckpointable(submitit.helpers.Checkpointable):
    """The stage as a submitit callable; submitit's checkpoint() resubmits it unchanged on USR2."""

    def __init__(self, stage_dir: str):
        self.stage_dir = stage_dir

    def __call__(self):
        from saul.stage_entry import StageTask

        return StageTask(self.stage_dir)()


def stage_finished(stage: Path) -> bool:
    return any(r.get("event") == "attempt_end" and r.get("exit_code") == 0 for r in ledger.read(stage / "ledger.jsonl"))


class ResubmitLoop(threading.Thread):
    """Submit, wait for the job to end, resubmit until the stage has finished (or `max_jobs` were used)."""

    def __init__(self, stage: Path, nodes: int, max_jobs: int = 100):
        super().__init__(daemon=True)
        self.stage, self.nodes, self.max_jobs = stage, nodes, max_jobs
        self.jobs: List[str] = []
        self.error = ""

    def executor(self) -> submitit.SlurmExecutor:
        ex = submitit.SlurmExecutor(folder=self.stage / "logs" / "slurm", max_num_timeout=3)
        ex.update_parameters(nodes=self.nodes, ntasks_per_node=1, time=60, job_name="plain-submitit",
                             signal_delay_s=90, stderr_to_stdout=True, setup=["export MASTER_ADDR=127.0.0.1"],
                             additional_parameters={"requeue": True}, wckey=None)
        return ex

    def run(self) -> None:
        ex = self.executor()
        path = self.stage / "ledger.jsonl"
        try:
            while len(self.jobs) < self.max_jobs:
                job = ex.submit(PlainCheckpointable(str(self.stage)))
                self.jobs.append(str(job.job_id))
                while not job.done(force_check=True):
                    time.sleep(POLL_S)
                done = stage_finished(self.stage)
                ledger.append(path, {"event": "job_end", "job_id": str(job.job_id), "class": "done" if done else "crash",
                                     "action": "done" if done else "requeue", "exit_code": 0 if done else 1,
                                     "why": "plain submitit: the resubmit loop saw the job end " + job.state})
                if done:
                    return
            ledger.append(path, {"event": "job_end", "job_id": self.jobs[-1], "class": "crash", "action": "stop",
                                 "exit_code": 1, "why": f"plain submitit: {self.max_jobs} jobs used"})
        except Exception as exc:  # the benchmark reports it and stops the cluster
            self.error = f"{type(exc).__name__}: {exc}"
            ledger.append(path, {"event": "job_end", "job_id": "", "class": "crash", "action": "stop",
                                 "exit_code": 1, "why": f"plain submitit loop failed: {self.error}"})
