"""Bad nodes of a run: recorded in the stage ledger, excluded from later attempts, cleared by hand.

    python3 -m saul.resilience.node_exclusion <stage_dir> list
    python3 -m saul.resilience.node_exclusion <stage_dir> clear <node>

Only hardware verdicts blame a node (Slurm's NODE_FAIL, a node Slurm itself set DOWN/DRAIN):
a crash or a user error never does. The list is capped so a run cannot exclude itself out of
its partition; the oldest entries drop first. Standard library only.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Dict, List

from saul.resilience import ledger


def excluded_nodes(ledger_path: Path, cap: int) -> Dict[str, dict]:
    """node -> its newest exclusion record, in exclusion order, at most `cap` of them."""
    current: Dict[str, dict] = {}
    for record in ledger.read(ledger_path):
        if record.get("event") == "node_excluded":
            current.pop(record["node"], None)
            current[record["node"]] = record
        elif record.get("event") == "node_cleared":
            current.pop(record["node"], None)
    nodes = list(current)[-cap:] if cap > 0 else []
    return {n: current[n] for n in nodes}


def exclude(ledger_path: Path, nodes: List[str], reason: str, job_id: str) -> None:
    for node in nodes:
        ledger.append(ledger_path, {"event": "node_excluded", "node": node, "reason": reason, "job_id": job_id,
                                    "time": time.time()})


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[1] not in ("list", "clear") or (argv[1] == "clear") != (len(argv) == 3):
        sys.stderr.write("usage: python3 -m saul.resilience.node_exclusion <stage_dir> list | clear <node>\n")
        return 2
    path = Path(argv[0]) / "ledger.jsonl"
    if not path.is_file():
        sys.stderr.write(f"error: {argv[0]} has no ledger.jsonl: not a stage directory of a run\n")
        return 2
    current = excluded_nodes(path, cap=10 ** 6)
    if argv[1] == "list":
        for node, record in current.items():
            print(f"{node}\t{record.get('reason', '')}\t{time.strftime('%Y-%m-%d %H:%M', time.localtime(record['time']))}")
        return 0
    node = argv[2]
    if node not in current:
        sys.stderr.write(f"error: node {node} is not excluded (excluded: {', '.join(current) or 'none'})\n")
        return 2
    ledger.append(path, {"event": "node_cleared", "node": node, "time": time.time()})
    print(f"{node} cleared: later attempts may run on it again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
