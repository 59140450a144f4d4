"""Hang detection: no heartbeat progress in phase `train` for `timeout_s` -> dump every rank's stack, kill, requeue.

    python3 -m saul.resilience.watchdog <stage_dir> --timeout S [--job JOB]

Runs in the background of the batch script (one per job) or inside the local launcher. It
acts through Slurm, so it reaches ranks on every node: SIGUSR1 makes each rank's faulthandler
write all thread stacks into its log, then SIGKILL ends the step; srun returns non-zero, and
after_job sees the `hang` marker and classifies the attempt as a hang. Standard library only.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from saul.resilience import heartbeat, ledger

DUMP_GRACE_S = 5.0


class HangDetector:
    """Pure decision: given heartbeats over time, is the stage hung? (save/load phases never are)."""

    def __init__(self, timeout_s: float, start_grace_s: float):
        self.timeout_s, self.start_grace_s = timeout_s, start_grace_s
        self.started = time.time()
        self.last_progress: Optional[float] = None
        self.last_key = None

    def observe(self, beat: Optional[dict], now: float) -> Optional[str]:
        if beat is None:
            if now - self.started > self.start_grace_s:
                return f"no heartbeat {self.start_grace_s:.0f}s after start"
            return None
        key = (beat.get("step"), beat.get("phase"))
        if key != self.last_key:
            self.last_key, self.last_progress = key, now
            return None
        if beat.get("phase") in ("load", "save", "done"):
            return None
        if beat.get("time", 0) < self.started:  # a previous attempt's heartbeat: not ours yet
            return None
        idle = now - max(self.last_progress, beat.get("time", 0))
        if idle > self.timeout_s:
            return f"no progress for {idle:.0f}s at step {beat.get('step')} (phase {beat.get('phase')})"
        return None


def hang_marker(stage_dir: Path, job: str) -> Path:
    """One marker per run of a job (a requeued job keeps its id, so the restart count is part of the name)."""
    return stage_dir / "heartbeats" / f"hang-{job}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"


def act_on_hang(stage_dir: Path, job: str, verdict: str, signal_ranks: Callable[[str], None]) -> None:
    """Mark the attempt as hung (after_job reads the marker), dump every rank's stacks, kill the ranks."""
    marker = hang_marker(stage_dir, job)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(verdict)
    ledger.append(stage_dir / "ledger.jsonl", {"event": "hang", "job_id": job, "why": verdict})
    signal_ranks("USR1")  # faulthandler: stacks of every thread of every rank into the rank logs
    time.sleep(DUMP_GRACE_S)
    signal_ranks("KILL")


def watch(stage_dir: Path, job: str, timeout_s: float, start_grace_s: float, signal_ranks: Callable[[str], None],
          poll_s: float = 2.0) -> Optional[str]:
    detector = HangDetector(timeout_s, start_grace_s)
    while True:
        verdict = detector.observe(heartbeat.read(stage_dir / "heartbeats"), time.time())
        if verdict:
            act_on_hang(stage_dir, job, verdict, signal_ranks)
            return verdict
        time.sleep(poll_s)


RANKS_STEP_NAME = "saul-ranks"  # the --job-name of the ranks' srun (jobs/slurm_launcher.py)


def rank_steps(job: str) -> list:
    out = subprocess.run(["squeue", "-h", "-s", "-j", job, "-o", "%i|%j"], capture_output=True, text=True,
                         check=False).stdout
    return [line.split("|")[0] for line in out.splitlines() if line.endswith(f"|{RANKS_STEP_NAME}")]


def slurm_signaller(job: str) -> Callable[[str], None]:
    def send(sig: str) -> None:
        # Signal the ranks' step only: a job-wide SIGKILL would also kill this batch script (and the
        # teardown that must requeue), and the meters must keep running to the end.
        for step in rank_steps(job) or [job]:
            subprocess.run(["scancel", f"--signal={sig}", step], check=False)

    return send


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m saul.resilience.watchdog")
    parser.add_argument("stage_dir", type=Path)
    parser.add_argument("--job", required=True)
    parser.add_argument("--timeout", type=float, required=True, help="seconds without progress in phase train")
    parser.add_argument("--start-grace", type=float, default=1800.0, help="seconds allowed before the first heartbeat")
    args = parser.parse_args(argv)
    verdict = watch(args.stage_dir, args.job, args.timeout, args.start_grace, slurm_signaller(args.job))
    if verdict:
        print(f"watchdog: {verdict}: stacks dumped, ranks killed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
