"""In-job restart: after the ranks' step ends, relaunch it inside the same allocation, or leave to after_job.

    python3 -m saul.resilience.step_restart <stage_dir> <srun exit code> --step N [--budget B]
                                            [--min-time-left S] [--off] [--blame-after K]

Run by the batch script's restart loop right after `srun` returns (jobs/slurm_launcher.py). A
Slurm requeue costs a queue wait (seconds here, minutes to hours on a busy machine) and a new
allocation; a crash or a hang of the ranks needs neither, so they are relaunched on the nodes the
job already holds, with a fresh rendezvous port, while the failure budget lasts. The job goes
back to Slurm (after_job: requeue or stop) only when:
  - the ranks finished, stopped on request (time limit, preemption) or refused their input;
  - the failure budget is spent (the same count after_job keeps: crashes in a row without a new
    checkpoint, in-job restarts included);
  - a node of the allocation is out of service (Slurm's view) or blamed for repeated crashes, and
    neither a healthy spare nor, with resilience.allow_shrink, a smaller node count is left
    (saul.resilience.spares);
  - less than `--min-time-left` seconds of the job's time limit remain;
  - the user cancelled the run, or in-job restart is switched off (resilience.in_job_restart=false).

Every crash (not a hang, a stop or bad input) is first attributed (saul.resilience.blame: a
`crash_attribution` record, even with in-job restart off); a node that reaches `--blame-after`
crashes is blamed and excluded, and then counts as lost: swapped for a spare without spending the
failure budget, or the job leaves for a requeue that avoids it.

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
from typing import Dict, List, Optional, Tuple

from saul.resilience import ledger
from saul.resilience.after_job import cancelled, classify, decide, newest_checkpoint_step
from saul.resilience.blame import attribute_crash
from saul.resilience.node_exclusion import exclude, excluded_nodes
from saul.resilience.spares import current_allocation, read_step_nodes, usable_count
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
                  was_cancelled: bool, spare_ready: bool = False) -> Tuple[bool, str]:
    """(relaunch here?, why): the pure decision, every input already gathered. `lost_nodes`: the ranks'
    nodes Slurm took out of service; `spare_ready`: enough usable nodes remain in the allocation to
    run on (resilience.spare_nodes: a spare; resilience.allow_shrink: fewer nodes). A node failure is the hardware's, not the run's: a swap
    does not spend the failure budget (as a Slurm NODE_FAIL requeue does not)."""
    kind = "hang" if hung and code != 0 else classify(code)
    if kind not in ("crash", "hang"):
        return False, f"the ranks' step ended {kind}: after_job decides"
    if not enabled:
        return False, "in-job restart is off (resilience.in_job_restart=false): requeue through Slurm"
    if was_cancelled:
        return False, "cancelled by the user"
    if lost_nodes and spare_ready:
        why = (f"node(s) {','.join(lost_nodes)} out of service or blamed: relaunching on the healthy nodes of this "
               "allocation")
    else:
        action, why = decide(code, history, checkpoint_step, budget, hung)
        if action != "requeue":
            return False, why
        if lost_nodes:
            return False, (f"node(s) {','.join(lost_nodes)} of the allocation are out of service or blamed and no "
                           "spare is left: the job goes back to Slurm")
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


def spare_view(stage_dir: Path, path: Path, job_id: str, need: int) -> Tuple[Dict[str, str], bool, Dict[str, str]]:
    """(the ranks' nodes out of service -> why, enough usable nodes left to run on?, other lost nodes)."""
    from saul.resilience.before_job import unhealthy

    allocation = current_allocation(job_id)
    # The failed node may already be gone from the job's nodelist: ask about the ranks' nodes too.
    step = read_step_nodes(stage_dir)
    bad = unhealthy(sorted(set(allocation) | set(step)))
    excluded = excluded_nodes(path, int(os.environ.get("SAUL_MAX_EXCLUDED_NODES", "16")))
    lost = {node: why for node, why in bad.items() if node in step}
    new_spares_lost = {node: why for node, why in bad.items() if node not in step and node not in excluded}
    return lost, usable_count(allocation, bad, excluded) >= need, new_spares_lost


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m saul.resilience.step_restart")
    parser.add_argument("stage_dir", type=Path)
    parser.add_argument("exit_code", type=int)
    parser.add_argument("--step", type=int, required=True, help="how many times the ranks' step ran before, in this run")
    parser.add_argument("--budget", type=int, default=int(os.environ.get("SAUL_FAILURE_BUDGET", "3")))
    parser.add_argument("--min-time-left", type=float, default=0.0, help="seconds of the time limit a relaunch needs")
    parser.add_argument("--step-started", type=float, default=None, help="when this ranks' step was launched (epoch s)")
    parser.add_argument("--off", action="store_true", help="never relaunch here (resilience.in_job_restart=false)")
    parser.add_argument("--node-counts", default="", help="node counts the ranks may run on, best first "
                        "(spare nodes, allow_shrink: saul.resilience.spares)")
    parser.add_argument("--blame-after", type=int, default=0, help="crashes that blame a node (resilience.blame_after; "
                        "0: never)")
    args = parser.parse_args(argv)
    returned = time.time()  # srun returned just before this process started
    path = args.stage_dir / "ledger.jsonl"
    job_id = os.environ.get("SLURM_JOB_ID", "")
    records = ledger.read(path)
    hung = hang_marker(args.stage_dir, job_id).is_file()
    checkpoint_step = newest_checkpoint_step(args.stage_dir)
    kind = "hang" if hung and args.exit_code != 0 else classify(args.exit_code)
    failed = kind in ("crash", "hang") and not args.off
    blamed: List[str] = []
    if kind == "crash" and args.blame_after > 0:  # also with in-job restart off: the requeue then avoids the node
        blamed = attribute_crash(args.stage_dir, job_id, int(os.environ.get("SLURM_RESTART_COUNT", "0")), args.step,
                                 args.exit_code, args.blame_after)
    spare_ready, to_exclude = False, {}
    if args.node_counts and failed:
        need = min(int(c) for c in args.node_counts.split(","))
        lost_why, spare_ready, lost_spares = spare_view(args.stage_dir, path, job_id, need)
        lost = sorted(set(lost_why) | set(blamed))  # a blamed node is already excluded: spare_view counts it out
        # A failed node is excluded for the rest of this run, whether the ranks or only a spare stood on it.
        to_exclude = {**lost_spares, **{n: w for n, w in lost_why.items() if n not in excluded_nodes(path, 10 ** 6)}}
    else:
        lost = sorted(set(lost_allocation_nodes(allocation_nodes())) | set(blamed)) if failed else []
    left = time_left_s(job_id) if failed else None
    relaunch, why = decide_in_job(args.exit_code, hung, budget_history(records), checkpoint_step, args.budget,
                                  not args.off, lost, left, args.min_time_left, cancelled(path, job_id), spare_ready)
    for node in sorted(to_exclude):
        exclude(path, [node], to_exclude[node], job_id)
    if not relaunch:
        print(f"step_restart: exit code {args.exit_code}: leaving the allocation's restart loop: {why}", flush=True)
        return LEAVE
    ledger.append(path, {
        "event": "step_restart", "job_id": job_id, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "step_restart": args.step + 1, "exit_code": args.exit_code,
        "class": "node_failure" if lost and spare_ready else kind, "action": "relaunch",
        "why": why, "checkpoint_step": checkpoint_step, "nodelist": os.environ.get("SLURM_JOB_NODELIST", ""),
        "lost_nodes": lost, "blamed_nodes": blamed, "step_started": args.step_started, "step_returned": returned, "time_left_s": left,
    })
    print(f"step_restart: exit code {args.exit_code} -> relaunching the ranks in this allocation: {why}", flush=True)
    return RELAUNCH


if __name__ == "__main__":
    sys.exit(main())
