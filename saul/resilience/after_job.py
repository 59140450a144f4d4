"""The one requeue path: run by the batch script after `srun` returns, decides whether the job goes again.

    python3 -m saul.resilience.after_job <stage_dir> <srun exit code>

Exit code contract of the ranks (saul.exit_codes): 0 done; 75 stopped after a checkpoint
(time limit ahead, preemption): requeue, and it does not use the failure budget; 2 / 93 the
input is wrong: never requeue; anything else is a crash: requeue while the failure budget
lasts, i.e. until `budget` crashes in a row left the newest checkpoint where it was.
Standard library only: it runs on the batch node's host Python (>= 3.8), outside the container.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Tuple

from saul import exit_codes
from saul.resilience import ledger
from saul.resilience.node_exclusion import excluded_nodes
from saul.resilience.watchdog import hang_marker
from saul.slurm_commands import SlurmCommandError, run_slurm
from saul.train.checkpoint import list_step_dirs, read_manifest

DEFAULT_BUDGET = 3


def newest_checkpoint_step(stage_dir: Path) -> int:
    for step, path in list_step_dirs(stage_dir / "checkpoints"):
        try:
            read_manifest(path)
            return step
        except ValueError:
            continue
    return -1


def classify(code: int) -> str:
    if code == exit_codes.DONE:
        return "done"
    if code == exit_codes.STOPPED:
        return "stopped"
    if code in exit_codes.NEVER_RETRY:
        return "user_error"
    return "crash"


def decide(code: int, history: List[dict], checkpoint_step: int, budget: int, hung: bool = False) -> Tuple[str, str]:
    """(action, why): action is one of done, requeue, stop."""
    kind = "hang" if hung and code != exit_codes.DONE else classify(code)
    if kind == "done":
        return "done", "the stage finished"
    if kind == "stopped":
        return "requeue", "stopped after a checkpoint (time limit or preemption): resuming"
    if kind == "user_error":
        return "stop", f"exit code {code} means the input is wrong; fix it and submit again (no retry)"
    crashes_without_progress = 1
    for record in reversed(history):
        if record.get("class") not in ("crash", "hang") or record.get("checkpoint_step") != checkpoint_step:
            break
        crashes_without_progress += 1
    if crashes_without_progress >= budget:
        return "stop", (f"{crashes_without_progress} crashes in a row without a new checkpoint (budget {budget}); "
                        f"see the rank logs, then submit again")
    what = "hang (killed by the watchdog)" if kind == "hang" else f"crash (exit code {code})"
    return "requeue", f"{what}, {crashes_without_progress}/{budget} of the failure budget used"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not argv[1].lstrip("-").isdigit():
        sys.stderr.write("usage: python3 -m saul.resilience.after_job <stage_dir> <srun exit code>\n")
        return exit_codes.CONFIG_ERROR
    stage_dir, code = Path(argv[0]), int(argv[1])
    job_id = os.environ.get("SLURM_JOB_ID", "")
    budget = int(os.environ.get("SAUL_FAILURE_BUDGET", DEFAULT_BUDGET))
    # In-job restarts (saul.resilience.step_restart) use the same failure budget as requeues.
    history = [r for r in ledger.read(stage_dir / "ledger.jsonl") if r.get("event") in ("job_end", "step_restart")]
    checkpoint_step = newest_checkpoint_step(stage_dir)
    hung = hang_marker(stage_dir, job_id).is_file()
    action, why = decide(code, history, checkpoint_step, budget, hung)
    if action == "requeue" and cancelled(stage_dir / "ledger.jsonl", job_id):
        action, why = "stop", "cancelled by the user (jobs/cancel.py): not requeued"
    kind = "hang" if hung and code != exit_codes.DONE else classify(code)
    ledger.append(stage_dir / "ledger.jsonl", {
        "event": "job_end", "job_id": job_id, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "exit_code": code, "class": kind, "action": action, "why": why,
        "checkpoint_step": checkpoint_step, "nodelist": os.environ.get("SLURM_JOB_NODELIST", ""),
    })
    print(f"after_job: exit code {code} -> {action}: {why}", flush=True)
    if action == "requeue" and job_id:
        excluded = excluded_nodes(stage_dir / "ledger.jsonl", int(os.environ.get("SAUL_MAX_EXCLUDED_NODES", "16")))
        try:
            if excluded:
                try:
                    run_slurm(["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={','.join(excluded)}"])
                except SlurmCommandError as exc:
                    # Slurm changes the ExcNodeList of pending jobs only, and this job still runs (it is this
                    # script): the requeue must go on. A DOWN or drained node is not allocated anyway; the ranks
                    # leave an excluded node of the next allocation to a spare or a shrink (saul.resilience.spares).
                    print(f"after_job: warning: {','.join(excluded)} not excluded from the requeued job ({exc}); "
                          f"requeueing anyway", flush=True)
            if cancelled(stage_dir / "ledger.jsonl", job_id):  # a cancel that arrived while we decided
                print("after_job: cancelled meanwhile: not requeued", flush=True)
                return code
            # Requeueing our own running job ends this script; nothing may follow it.
            run_slurm(["scontrol", "requeue", job_id])
        except SlurmCommandError as exc:
            print(f"after_job: error: the requeue failed: {exc}; resubmit with the same command", flush=True)
            return code or 1
    return 0 if action != "stop" else code


def cancelled(ledger_path: Path, job_id: str) -> bool:
    """jobs/cancel.py writes `cancelled` BEFORE it calls scancel (and `cancel_failed` if scancel refused)."""
    state = False
    for record in ledger.read(ledger_path):
        if str(record.get("job_id")) == job_id and record.get("event") in ("cancelled", "cancel_failed"):
            state = record["event"] == "cancelled"
    return state


if __name__ == "__main__":
    sys.exit(main())
