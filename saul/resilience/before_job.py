"""Run at the start of every batch script: account for a previous run of this job that ended without us.

    python3 -m saul.resilience.before_job <stage_dir>

When Slurm requeued the job itself (NODE_FAIL, node set DOWN, batch host lost), the previous
run's teardown never ran: no `job_end` was written and nobody blamed the node. This fills that
in from sacct (which keeps one row per run of a requeued job) and sinfo (which node Slurm took
out), records the node exclusion, and makes sure this run's allocation avoids those nodes.
Standard library only (Python >= 3.8).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, List

from saul.resilience import ledger
from saul.resilience.after_job import newest_checkpoint_step
from saul.resilience.node_exclusion import exclude, excluded_nodes
from saul.slurm_commands import SlurmCommandError, run_slurm, slurm_output

BAD_NODE_STATES = ("down", "drain", "drng", "fail", "failg", "maint", "boot", "unk", "no_respond")


def previous_runs(job_id: str) -> List[Dict[str, str]]:
    """Earlier runs of this job id, oldest first (sacct -D: one allocation row per run)."""
    fields = ("JobIDRaw", "State", "NodeList", "Start", "End", "ExitCode")
    out = slurm_output(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", ",".join(fields)])
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
    # RESIZING: a --no-kill job (spare nodes) lost a node and went on in the same run; not a run of its own.
    return [r for r in rows if r["State"].split()[0] not in ("RUNNING", "PENDING", "RESIZING")]


def expand_nodelist(nodelist: str) -> List[str]:
    return slurm_output(["scontrol", "show", "hostnames", nodelist]).split() if nodelist else []


def unhealthy(nodes: List[str]) -> Dict[str, str]:
    """node -> Slurm's state and reason, for the nodes Slurm itself has taken out of service."""
    if not nodes:
        return {}
    out = slurm_output(["sinfo", "-h", "-N", "-n", ",".join(nodes), "-o", "%N|%t|%E"])
    bad = {}
    for line in out.splitlines():
        node, state, reason = (line.split("|") + ["", ""])[:3]
        if state.rstrip("*~#!%$@^-").lower() in BAD_NODE_STATES or state.endswith("*"):
            bad[node] = f"Slurm state {state}" + (f": {reason}" if reason and reason != "none" else "")
    return bad


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python3 -m saul.resilience.before_job <stage_dir>\n")
        return 2
    stage_dir = Path(argv[0])
    job_id = os.environ.get("SLURM_JOB_ID", "")
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    cap = int(os.environ.get("SAUL_MAX_EXCLUDED_NODES", "16"))
    path = stage_dir / "ledger.jsonl"
    if not job_id or restarts == 0:
        return 0
    ended = {int(r.get("restart_count", -1)) for r in ledger.read(path)
             if r.get("event") == "job_end" and str(r.get("job_id")) == job_id}
    runs = previous_runs(job_id)
    for restart, run in enumerate(runs[:restarts]):
        if restart in ended:
            continue
        state = run["State"].split()[0]
        nodes = expand_nodelist(run["NodeList"])
        blamed = unhealthy(nodes) if state in ("NODE_FAIL", "BOOT_FAIL") else {}
        ledger.append(path, {
            "event": "job_end", "job_id": job_id, "restart_count": restart, "exit_code": None,
            "class": "node_failure" if state in ("NODE_FAIL", "BOOT_FAIL") else "lost",
            "action": "requeue", "why": f"Slurm ended this run {state} and requeued the job",
            "checkpoint_step": newest_checkpoint_step(stage_dir), "nodelist": run["NodeList"],
            "blamed_nodes": sorted(blamed), "slurm_state": state, "start": run["Start"], "end": run["End"],
        })
        for node, reason in blamed.items():
            exclude(path, [node], reason, job_id)
            print(f"before_job: run {restart} of job {job_id} ended {state}; node {node} excluded ({reason})",
                  flush=True)
    current = excluded_nodes(path, cap)
    mine = set(expand_nodelist(os.environ.get("SLURM_JOB_NODELIST", "")))
    if current and mine & set(current):
        # Allocated an excluded node anyway (it came back): go again elsewhere rather than fail on it later.
        try:
            run_slurm(["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={','.join(current)}"])
            run_slurm(["scontrol", "requeue", job_id])
        except SlurmCommandError as exc:
            print(f"before_job: warning: could not requeue away from excluded nodes ({exc}); running here", flush=True)
            return 0
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
