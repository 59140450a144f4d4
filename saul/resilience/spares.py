"""Spare nodes and shrinking: the job holds `nodes + K` nodes (sbatch --no-kill) and runs the ranks on
`nodes` healthy ones, or on fewer when none is left and resilience.allow_shrink lets it.

    python3 -m saul.resilience.spares <stage_dir> --node-counts N[,M,...]

Run by the batch script at the top of every pass of its restart loop (jobs/slurm_launcher.py),
before the ranks' `srun`. It picks the nodes the ranks' step runs on: the first of the allowed
counts (best first: `nodes`, then the smaller ones that keep the global batch) that the usable
nodes cover. Usable: still in the job's allocation (Slurm drops a failed node from a --no-kill
job), in service (sinfo), not excluded by this run's ledger; taken in allocation order, so the
batch host (the first node, where the rendezvous port is chosen) stays the ranks' first node. It
writes them, one per line, to the file the ranks' `srun --nodelist=<file>` reads (a path with a
'/' is a host file to srun), and prints "<first node's address> <count> <moved>" (MASTER_ADDR, the
ranks' node count, 1 when the set changed since the previous pass of this job, else 0). A change
is recorded as `node_swap` (a spare came in) or `shrink` (fewer nodes; the ranks resume
elastically). Excluded nodes include those blamed for repeated crashes (saul.resilience.blame).

    python3 -m saul.resilience.spares <stage_dir> --meter-restarted

After a change the batch script relaunches the power meters on the new node set (the meter step
over the old set died with the lost node, or is stopped) and records it: `meter_restart`.

Exit 0: picked; exit 1: fewer usable nodes than the smallest count (the job goes back to Slurm).
Standard library only (Python >= 3.8, the batch host's python3).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterable, List, Optional

from saul.data.atomic import write_text_atomic
from saul.resilience import ledger
from saul.resilience.node_exclusion import excluded_nodes
from saul.slurm_commands import slurm_output

STEP_NODES_FILE = "step_nodes"  # in the stage directory; srun's --nodelist names it


def step_nodes_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / STEP_NODES_FILE


def read_step_nodes(stage_dir: Path) -> List[str]:
    try:
        return [n for n in step_nodes_path(stage_dir).read_text().split() if n]
    except FileNotFoundError:
        return []


def pick(allocation: Iterable[str], out_of_service: Iterable[str], excluded: Iterable[str], n: int) -> Optional[List[str]]:
    """The first `n` usable nodes in allocation order, or None when fewer are left."""
    bad = set(out_of_service) | set(excluded)
    usable = [node for node in allocation if node not in bad]
    return usable[:n] if len(usable) >= n else None


def usable_count(allocation: Iterable[str], out_of_service: Iterable[str], excluded: Iterable[str]) -> int:
    bad = set(out_of_service) | set(excluded)
    return sum(1 for node in allocation if node not in bad)


def parse_job_nodelist(show_job: str) -> str:
    """The allocation's NodeList from `scontrol show job -o` (not ReqNodeList/ExcNodeList)."""
    match = re.search(r"(?:^|\s)NodeList=(\S+)", show_job)
    return match.group(1) if match and match.group(1) != "(null)" else ""


def current_allocation(job_id: str) -> List[str]:
    """The job's nodes now: a --no-kill job loses a failed node from its allocation, while
    SLURM_JOB_NODELIST keeps the nodes it started with."""
    from saul.resilience.before_job import expand_nodelist

    nodelist = parse_job_nodelist(slurm_output(["scontrol", "-o", "show", "job", job_id])) if job_id else ""
    return expand_nodelist(nodelist or os.environ.get("SLURM_JOB_NODELIST", ""))


def node_address(node: str) -> str:
    """The node's NodeAddr as Slurm knows it (a hostname need not resolve on every cluster)."""
    match = re.search(r"NodeAddr=(\S+)", slurm_output(["scontrol", "show", "node", node]))
    return match.group(1) if match else node


def pick_count(allocation: List[str], out_of_service: Iterable[str], excluded: Iterable[str],
               counts: List[int]) -> Optional[List[str]]:
    """The nodes for the first (largest) allowed count the usable nodes cover, or None."""
    for n in counts:
        chosen = pick(allocation, out_of_service, excluded, n)
        if chosen is not None:
            return chosen
    return None


def swap_record(job_id: str, before: List[str], after: List[str], spares_left: int, launch: int) -> dict:
    return {"event": "node_swap" if len(after) >= len(before) else "shrink", "job_id": job_id, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            "step_restart": launch, "failed": [n for n in before if n not in after],
            "replacements": [n for n in after if n not in before], "nodes_before": before, "nodes_after": after,
            "spares_left": spares_left, "time": time.time()}


def meter_restart_record(job_id: str, nodes: List[str], launch: int) -> dict:
    return {"event": "meter_restart", "job_id": job_id, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            "step_restart": launch, "nodes": nodes, "time": time.time()}


def main(argv=None) -> int:
    from saul.resilience.before_job import unhealthy

    parser = argparse.ArgumentParser(prog="python3 -m saul.resilience.spares")
    parser.add_argument("stage_dir", type=Path)
    parser.add_argument("--node-counts", help="node counts the ranks may run on, best first: 2,1")
    parser.add_argument("--meter-restarted", action="store_true", help="record that the meters were relaunched on "
                        "the picked nodes")
    args = parser.parse_args(argv)
    job_id = os.environ.get("SLURM_JOB_ID", "")
    launch = int(os.environ.get("SAUL_STEP_RESTART", "0"))
    path = args.stage_dir / "ledger.jsonl"
    if args.meter_restarted:
        ledger.append(path, meter_restart_record(job_id, read_step_nodes(args.stage_dir), launch))
        return 0
    if not args.node_counts:
        parser.error("--node-counts is required")
    counts = [int(c) for c in args.node_counts.split(",")]
    allocation = current_allocation(job_id)
    bad = unhealthy(allocation)
    excluded = excluded_nodes(path, int(os.environ.get("SAUL_MAX_EXCLUDED_NODES", "16")))
    chosen = pick_count(allocation, bad, excluded, counts)
    if chosen is None:
        print(f"error: spares: {usable_count(allocation, bad, excluded)} usable node(s) left in this allocation "
              f"({','.join(allocation) or 'none'}; out of service: {','.join(sorted(bad)) or 'none'}; excluded: "
              f"{','.join(excluded) or 'none'}), the ranks need {counts[-1]}", file=sys.stderr, flush=True)
        return 1
    before = read_step_nodes(args.stage_dir) if launch > 0 else []
    write_text_atomic(step_nodes_path(args.stage_dir), "\n".join(chosen) + "\n")
    moved = bool(before) and before != chosen
    if moved:
        spares_left = usable_count(allocation, bad, excluded) - len(chosen)
        ledger.append(path, swap_record(job_id, before, chosen, spares_left, launch))
        print(f"spares: ranks move from {','.join(before)} to {','.join(chosen)} ({spares_left} spare(s) left)",
              file=sys.stderr, flush=True)
    print(node_address(chosen[0]), len(chosen), int(moved), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
