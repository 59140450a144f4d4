"""In-job restart: after the ranks' step ends, relaunch it inside the same allocation, or leave to after_job.

    python3 -m saul.resilience.step_restart <stage_dir> <srun exit code> --step N [--budget B]
                                            [--min-time-left S] [--off]

Run by the batch script's restart loop right after `srun` returns (jobs/slurm_launcher.py). A
Slurm requeue costs a queue wait (seconds here, minutes to hours on a busy machine) and a new
allocation; a crash or a hang of the ranks needs neither, so they are relaunched on the nodes the
job already holds, with a fresh rendezvous port, while the failure budget lasts. The job goes
back to Slurm (after_job: requeue or stop) only when:
  - the ranks finished, stopped on request (time limit, preemption) or refused their input;
  - the failure budget is spent (the same count after_job keeps: crashes in a row without a new
    checkpoint, in-job restarts included);
  - a node of the allocation is out of service (Slurm's view) and no healthy spare is left;
  - less than `--min-time-left` seconds of the job's time limit remain;
  - the user cancelled the run, or in-job restart is switched off (resilience.in_job_restart=false).

Exit 0: relaunch now (a `step_restart` record is in the ledger, with the phases measured so far);
exit 1: leave the loop. Standard library only (Python >= 3.8, the batch host's python3).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from saul.resilience import ledger
from saul.resilience.after_job import cancelled, classify, decide, newest_checkpoint_step
from saul.resilience.watchdog import hang_marker
from saul.slurm_commands import slurm_output

RELAUNCH, LEAVE = 0, 1
BUDGET_EVENTS = ("job_end", "step_restart")  # both count towards the failure budget


def budget_history(records: List[dict]) -> List[dict]:
    """The outcomes the failure budget counts, oldest first: every requeue decision and in-job restart."""
    return [r for r in records if r.get("event") in BUDGET_EVENTS]


def parse_time_left(text: str) -> Optional[float]:
    """squeue's %L (`1-02:03:04`, `2:03:04`, `3:04`, `UNLIMITED`) in seconds; None when unknown or unlimited."""
    text = text.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def time_left_s(job_id: str) -> Optional[float]:
    return parse_time_left(slurm_output(["squeue", "-h", "-j", job_id, "-o", "%L"])) if job_id else None


def decide_in_job(code: int, hung: bool, history: List[dict], checkpoint_step: int, budget: int, enabled: bool,
                  lost_nodes: List[str], time_left: Optional[float], min_time_left: float,
                  was_cancelled: bool) -> Tuple[bool, str]:
    """(relaunch here?, why): the pure decision, every input already gathered."""
    kind = "hang" if hung and code != 0 else classify(code)
    if kind not in ("crash", "hang"):
        return False, f"the ranks' step ended {kind}: after_job decides"
    if not enabled:
        return False, "in-job restart is off (resilience.in_job_restart=false): requeue through Slurm"
    if was_cancelled:
        return False, "cancelled by the user"
    action, why = decide(code, history, checkpoint_step, budget, hung)
    if action != "requeue":
        return False, why
    if lost_nodes:
        return False, (f"node(s) {','.join(lost_nodes)} of the allocation are out of service and no spare is left: "
                       "the job goes back to Slurm")
    if time_left is not None and time_left < min_time_left:
        return False, f"{time_left:.0f}s of the time limit left (< {min_time_left:.0f}s): requeue instead"
    return True, f"{why}; in-job restart"


def allocation_nodes() -> List[str]:
    from saul.resilience.before_job import expand_nodelist

    return expand_nodelist(os.environ.get("SLURM_JOB_NODELIST", ""))


def lost_allocation_nodes(nodes: List[str]) -> List[str]:
    """Nodes of this job that Slurm has taken out of service (DOWN, DRAIN, not responding...)."""
    from saul.resilience.before_job import unhealthy

    return sorted(unhealthy(nodes))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m saul.resilience.step_restart")
    parser.add_argument("stage_dir", type=Path)
    parser.add_argument("exit_code", type=int)
    parser.add_argument("--step", type=int, required=True, help="how many times the ranks' step ran before, in this run")
    parser.add_argument("--budget", type=int, default=int(os.environ.get("SAUL_FAILURE_BUDGET", "3")))
    parser.add_argument("--min-time-left", type=float, default=0.0, help="seconds of the time limit a relaunch needs")
    parser.add_argument("--step-started", type=float, default=None, help="when this ranks' step was launched (epoch s)")
    parser.add_argument("--off", action="store_true", help="never relaunch here (resilience.in_job_restart=false)")
    args = parser.parse_args(argv)
    returned = time.time()  # srun returned just before this process started
    path = args.stage_dir / "ledger.jsonl"
    job_id = os.environ.get("SLURM_JOB_ID", "")
    records = ledger.read(path)
    hung = hang_marker(args.stage_dir, job_id).is_file()
    checkpoint_step = newest_checkpoint_step(args.stage_dir)
    nodes = allocation_nodes()
    kind = "hang" if hung and args.exit_code != 0 else classify(args.exit_code)
    lost = lost_allocation_nodes(nodes) if kind in ("crash", "hang") and not args.off else []
    left = time_left_s(job_id) if kind in ("crash", "hang") and not args.off else None
    relaunch, why = decide_in_job(args.exit_code, hung, budget_history(records), checkpoint_step, args.budget,
                                  not args.off, lost, left, args.min_time_left, cancelled(path, job_id))
    if not relaunch:
        print(f"step_restart: exit code {args.exit_code}: leaving the allocation's restart loop: {why}", flush=True)
        return LEAVE
    ledger.append(path, {
        "event": "step_restart", "job_id": job_id, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "step_restart": args.step + 1, "exit_code": args.exit_code, "class": kind, "action": "relaunch",
        "why": why, "checkpoint_step": checkpoint_step, "nodelist": os.environ.get("SLURM_JOB_NODELIST", ""),
        "step_started": args.step_started, "step_returned": returned, "time_left_s": left,
    })
    print(f"step_restart: exit code {args.exit_code} -> relaunching the ranks in this allocation: {why}", flush=True)
    return RELAUNCH


if __name__ == "__main__":
    sys.exit(main())
