"""Hang detection: no heartbeat progress in phase `train` for `timeout_s` -> dump every rank's stack, kill, requeue.

    python3 -m saul.resilience.watchdog <stage_dir> --timeout S [--job JOB]

Runs in the background of the batch script (one per job) or inside the local launcher. It
acts through Slurm on the ranks' step only (`scancel --signal=... <job>.<step>`), so it reaches
ranks on every node and never the batch script: SIGUSR1 makes each rank's faulthandler write all
thread stacks into its log, then SIGKILL ends the step; srun returns non-zero, and
after_job sees the `hang` marker and classifies the attempt as a hang. Standard library only (Python >= 3.8, the batch host's python3).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from saul.resilience import heartbeat, ledger
from saul.slurm_commands import SlurmCommandError, run_slurm, slurm_output

DUMP_GRACE_S = 5.0
COLLECTIVE_MARGIN_S = 120.0
# A collective can start up to one step after the last heartbeat: wait this much past its timeout too.
FLIGHT_RECORDER_SLACK_S = 60.0


def collective_timeout_s(hang_timeout_s: float) -> float:
    """The process group's collective timeout: longer than the hang limit, so the watchdog finds a hung
    collective first and dumps every rank's Python stacks before torch aborts it as a crash."""
    return float(hang_timeout_s) + max(COLLECTIVE_MARGIN_S, 0.1 * float(hang_timeout_s))


def flight_recorder_wait_s(hang_timeout_s: float) -> float:
    """On GPU sites, how long the kill waits after the stack dump: until NCCL/RCCL's own watchdog has timed
    the hung collective out and written its flight-recorder dump (TORCH_NCCL_DUMP_ON_TIMEOUT)."""
    return collective_timeout_s(hang_timeout_s) - float(hang_timeout_s) + FLIGHT_RECORDER_SLACK_S


class HangDetector:
    """Pure decision: given heartbeats over time, is this attempt hung? (save/load phases never are).

    Only this attempt's heartbeats count: one written before the detector started (the previous
    attempt's last beat, still on disk after a requeue) or naming another job or restart is treated
    as no heartbeat at all, so every attempt gets its own start grace and a rendezvous hang after a
    requeue is caught like one on the first attempt.
    """

    def __init__(self, timeout_s: float, start_grace_s: float, started: Optional[float] = None, job: str = "",
                 restart: Optional[int] = None):
        self.timeout_s, self.start_grace_s = timeout_s, start_grace_s
        self.started = time.time() if started is None else started
        self.job, self.restart = str(job), restart
        self.last_progress: Optional[float] = None
        self.last_key = None

    def is_this_attempts(self, beat: Optional[dict]) -> bool:
        if not beat or float(beat.get("time", 0)) < self.started:
            return False
        if self.job and beat.get("job_id") not in (None, "") and str(beat["job_id"]) != self.job:
            return False
        if self.restart is not None and beat.get("restart_count") not in (None, ""):
            return int(beat["restart_count"]) == self.restart
        return True

    def observe(self, beat: Optional[dict], now: float) -> Optional[str]:
        if not self.is_this_attempts(beat):
            if self.last_progress is None and now - self.started > self.start_grace_s:
                return f"no heartbeat of this attempt {self.start_grace_s:.0f}s after its start"
            return None
        key = (beat.get("step"), beat.get("phase"))
        if key != self.last_key:
            self.last_key, self.last_progress = key, now
            return None
        if beat.get("phase") in ("load", "save", "done"):
            return None
        idle = now - max(self.last_progress, beat.get("time", 0))
        if idle > self.timeout_s:
            return f"no progress for {idle:.0f}s at step {beat.get('step')} (phase {beat.get('phase')})"
        return None


def hang_marker(stage_dir: Path, job: str) -> Path:
    """One marker per launch of the ranks: a requeued job keeps its id, so the restart count is part of the
    name, and so is the in-job restart (SAUL_STEP_RESTART, set by the batch script's restart loop)."""
    name = f"hang-{job}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    step = os.environ.get("SAUL_STEP_RESTART", "0")
    return stage_dir / "heartbeats" / (name if step in ("", "0") else f"{name}.{step}")


def act_on_hang(stage_dir: Path, job: str, verdict: str, signal_ranks: Callable[[str], None],
                kill_after_s: float = DUMP_GRACE_S, sleep: Callable[[float], None] = time.sleep) -> None:
    """Mark the attempt as hung (after_job reads the marker), dump every rank's stacks, kill the ranks
    `kill_after_s` later (longer on GPU sites: the flight recorder dumps when the collective times out)."""
    marker = hang_marker(stage_dir, job)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(verdict)
    ledger.append(stage_dir / "ledger.jsonl", {"event": "hang", "job_id": job, "why": verdict})
    signal_ranks("USR1")  # faulthandler: stacks of every thread of every rank into the rank logs
    sleep(kill_after_s)
    signal_ranks("KILL")


def watch(stage_dir: Path, job: str, timeout_s: float, start_grace_s: float, signal_ranks: Callable[[str], None],
          poll_s: float = 2.0, restart: Optional[int] = None, kill_after_s: float = DUMP_GRACE_S) -> Optional[str]:
    detector = HangDetector(timeout_s, start_grace_s, job=job, restart=restart)
    while True:
        verdict = detector.observe(heartbeat.read(stage_dir / "heartbeats"), time.time())
        if verdict:
            act_on_hang(stage_dir, job, verdict, signal_ranks, kill_after_s)
            return verdict
        time.sleep(poll_s)


RANKS_STEP_NAME = "saul-ranks"  # the --job-name of the ranks' srun (jobs/slurm_launcher.py)
STEP_LOOKUPS, STEP_LOOKUP_PAUSE_S = 5, 2.0


def rank_steps(job: str) -> List[str]:
    """The ids (`<job>.<step>`) of the ranks' steps of `job`; never the batch step, never the meters'."""
    out = slurm_output(["squeue", "-h", "-s", "-j", job, "-o", "%i|%j"])
    return [line.split("|")[0] for line in out.splitlines()
            if line.endswith(f"|{RANKS_STEP_NAME}") and "." in line.split("|")[0]]


def slurm_signaller(job: str, lookups: int = STEP_LOOKUPS, pause_s: float = STEP_LOOKUP_PAUSE_S
                    ) -> Callable[[str], None]:
    def send(sig: str) -> None:
        # Signal the ranks' step only: a job-wide signal would also reach this batch script (no teardown,
        # no requeue) and the meters, which must keep running to the end.
        for _ in range(lookups):
            steps = rank_steps(job)
            if steps:
                break
            time.sleep(pause_s)
        else:
            print(f"watchdog: job {job} has no running step named {RANKS_STEP_NAME}: SIG{sig} not sent", flush=True)
            return
        for step in steps:
            try:
                run_slurm(["scancel", f"--signal={sig}", step])
            except SlurmCommandError as exc:
                print(f"watchdog: SIG{sig} to step {step} failed: {exc}", flush=True)

    return send


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m saul.resilience.watchdog")
    parser.add_argument("stage_dir", type=Path)
    parser.add_argument("--job", required=True)
    parser.add_argument("--timeout", type=float, required=True, help="seconds without progress in phase train")
    parser.add_argument("--start-grace", type=float, default=1800.0, help="seconds allowed before the first heartbeat")
    parser.add_argument("--gpu", action="store_true",
                        help="GPU ranks: kill only after the collective timeout, once the flight recorder has dumped")
    args = parser.parse_args(argv)
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    kill_after = flight_recorder_wait_s(args.timeout) if args.gpu else DUMP_GRACE_S
    verdict = watch(args.stage_dir, args.job, args.timeout, args.start_grace, slurm_signaller(args.job),
                    restart=restart, kill_after_s=kill_after)
    if verdict:
        print(f"watchdog: {verdict}: stacks dumped, ranks killed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
