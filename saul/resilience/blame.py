"""Blame a node for repeated crashes: which node's rank failed first in each crashed launch, counted per node.

Slurm takes a node out of service only when it notices (NODE_FAIL, DOWN, not responding); a node
with a bad GPU or bad memory keeps crashing its ranks while Slurm sees it healthy. After every
crashed launch of the ranks' step, step_restart calls `attribute_crash`, which reads what the
ranks and their witnesses recorded for that launch (saul.resilience.rank_guard) and decides who
failed first:

  * a Python exception of our own code (not a device error, not the ripple of a dead peer) on any
    rank: software, nobody is blamed (a bug fails the same way on every node);
  * otherwise the suspects are the ranks that were gone before Slurm's SIGTERM reached any rank
    (`srun --kill-on-bad-exit` SIGTERMs the rest once one has died; within SIGTERM_RACE_S of it counts
    as before: a witness can wake late), or raised a device error;
    ranks that only saw their peer vanish (connection reset, NCCL abort) are victims, not suspects;
  * when the suspects stand on every node of the launch (every rank died together), or the launch
    ran on one node, or no rank left a record: ambiguous, nobody is blamed, and the record says why.

Each crashed launch leaves one `crash_attribution` record (suspect nodes and ranks, why, the
evidence). A node named in `resilience.blame_after` of them in this stage's ledger (since it was
last cleared) gets a `node_blamed` record with that evidence and is excluded like a node Slurm
took out: a spare replaces it, the run shrinks (allow_shrink), or the requeue avoids it.
Standard library only (Python >= 3.8, the batch host's python3).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List

from saul.resilience import ledger
from saul.resilience.node_exclusion import exclude, excluded_nodes
from saul.resilience.rank_guard import launch_file

# A rank that raised because its peer died (the socket closed under a collective, the communicator was
# aborted) is a victim of the first death, not evidence of a software fault.
PEER_LOSS = re.compile(r"connection (closed|reset)|broken pipe|peer|DistBackendError|DistNetworkError|"
                       r"communicator was aborted|NCCL communicator|Socket Timeout|gloo", re.IGNORECASE)
# A device failing shows up in Python as the runtime's error: evidence against the node it ran on.
DEVICE_ERROR = re.compile(r"uncorrectable|ECC error|illegal memory access|CUDA error: (unspecified launch|an illegal)|"
                          r"hipErrorIllegalAddress|HIP error: (an illegal|unspecified launch)|Xid|"
                          r"GPU is lost|fallen off the bus", re.IGNORECASE)


# A witness wakes when its rank dies, but on a busy node it may be scheduled tens of ms late, when Slurm's SIGTERM
# is pending too (seen: 26 ms on 2 shared cores). A rank gone this soon after the first SIGTERM may have died before
# it: it stays a suspect, which makes "every rank died together" ambiguous instead of blaming the first to wake.
# (A rank that Slurm's SIGTERM ended takes longer: the signal only asks it to stop at the next step boundary.)
SIGTERM_RACE_S = 1.0


@dataclass
class Verdict:
    suspects: List[str]  # nodes, empty when nobody is blamed for this crash
    ranks: List[int]
    why: str
    evidence: Dict[str, object] = field(default_factory=dict)


def exception_kind(record: dict) -> str:
    text = f"{record.get('type', '')}: {record.get('message', '')}"
    if DEVICE_ERROR.search(text):
        return "device"
    if PEER_LOSS.search(text):
        return "peer_loss"
    return "software"


def attribute(records: List[dict]) -> Verdict:
    """The suspects of one crashed launch from its rank records (rank_start, rank_exception, rank_gone)."""
    starts = {int(r["rank"]): r for r in records if r.get("event") == "rank_start"}
    node_of = {rank: str(r.get("node")) for rank, r in starts.items()}
    launch_nodes = sorted(set(node_of.values()))
    exceptions = {int(r["rank"]): r for r in records if r.get("event") == "rank_exception"}
    gone = {int(r["rank"]): r for r in records if r.get("event") == "rank_gone"}
    for rank, r in list(exceptions.items()) + list(gone.items()):
        node_of.setdefault(rank, str(r.get("node")))
    kinds = {rank: exception_kind(r) for rank, r in exceptions.items()}
    evidence = {"ranks_started": len(starts), "nodes": launch_nodes,
                "exceptions": {str(k): f"{r.get('type')}: {str(r.get('message', ''))[:200]}" for k, r in exceptions.items()},
                "gone": {str(k): r.get("time") for k, r in gone.items()}}
    software = sorted(rank for rank, kind in kinds.items() if kind == "software")
    if software:
        first = exceptions[software[0]]
        return Verdict([], [], f"a Python exception in our code on rank(s) {_ranks(software)} ({first.get('type')}: "
                       f"{str(first.get('message', ''))[:120]}): a software failure, no node is blamed", evidence)
    sigterms = [float(r["sigterm_at"]) for r in gone.values() if r.get("sigterm_at") is not None]
    first_sigterm = min(sigterms) if sigterms else None
    evidence["first_sigterm"] = first_sigterm
    died_first = {rank for rank, r in gone.items()
                  if (first_sigterm is None or float(r["time"]) < first_sigterm + SIGTERM_RACE_S)
                  and kinds.get(rank) != "peer_loss"}
    device = {rank for rank, kind in kinds.items() if kind == "device"}
    suspects_ranks = sorted(died_first | device)
    if not starts and not gone:
        return Verdict([], [], "no rank recorded anything for this launch (no start, no exit): nobody is blamed",
                       evidence)
    if not suspects_ranks:
        return Verdict([], [], "no rank died before Slurm stopped the step (no witness saw a death ahead of the "
                       "SIGTERM): nobody is blamed", evidence)
    nodes = sorted({node_of[rank] for rank in suspects_ranks if rank in node_of})
    if len(launch_nodes) <= 1:
        return Verdict([], suspects_ranks, f"the launch ran on one node ({','.join(launch_nodes) or 'unknown'}): its "
                       "crash cannot be told apart from our code's, nobody is blamed", evidence)
    if set(nodes) >= set(launch_nodes):
        return Verdict([], suspects_ranks, f"ranks {_ranks(suspects_ranks)} on every node ({','.join(launch_nodes)}) "
                       "died together: ambiguous, nobody is blamed", evidence)
    how = "a device error" if device and not died_first else "died first, before Slurm's SIGTERM"
    return Verdict(nodes, suspects_ranks, f"rank(s) {_ranks(suspects_ranks)} on {','.join(nodes)} {how}", evidence)


def _ranks(ranks: Iterable[int]) -> str:
    return ",".join(str(r) for r in ranks)


def crash_counts(records: List[dict]) -> Dict[str, int]:
    """node -> crashed launches it was the suspect of, since its last node_cleared (oldest first in the ledger)."""
    counts: Dict[str, int] = {}
    for record in records:
        if record.get("event") == "crash_attribution":
            for node in record.get("suspects", []):
                counts[node] = counts.get(node, 0) + 1
        elif record.get("event") == "node_cleared":
            counts.pop(record.get("node"), None)
    return counts


def attribute_crash(stage_dir: Path, job_id: str, restart: int, launch: int, exit_code: int,
                    blame_after: int) -> List[str]:
    """Record who this crashed launch points at; blame and exclude the nodes that reached `blame_after`.
    Returns the nodes blamed now (already excluded in the ledger)."""
    path = Path(stage_dir) / "ledger.jsonl"
    verdict = attribute(ledger.read(launch_file(stage_dir, job_id or "local", restart, launch)))
    ledger.append(path, {"event": "crash_attribution", "job_id": job_id, "restart_count": restart,
                         "step_restart": launch, "exit_code": exit_code, "suspects": verdict.suspects,
                         "ranks": verdict.ranks, "why": verdict.why, "evidence": verdict.evidence, "time": time.time()})
    print(f"blame: launch {launch} of job {job_id}: {verdict.why}", flush=True)
    if blame_after <= 0 or not verdict.suspects:
        return []
    records = ledger.read(path)
    counts = crash_counts(records)
    already = excluded_nodes(path, 10 ** 6)
    blamed = [node for node in verdict.suspects if counts.get(node, 0) >= blame_after and node not in already]
    for node in blamed:
        crashes = [r for r in records if r.get("event") == "crash_attribution" and node in r.get("suspects", [])]
        reason = f"blamed for {len(crashes)} crashes of its ranks (resilience.blame_after={blame_after})"
        ledger.append(path, {"event": "node_blamed", "node": node, "job_id": job_id, "crashes": len(crashes),
                             "blame_after": blame_after, "reason": reason,
                             "evidence": [{k: r.get(k) for k in ("job_id", "restart_count", "step_restart", "exit_code",
                                                                  "ranks", "why")} for r in crashes],
                             "time": time.time()})
        exclude(path, [node], reason, job_id)
        print(f"blame: node {node} {reason}: excluded for this run", flush=True)
    return blamed

