"""One attempt of a stage in the ledger: the same `attempt_start` / `attempt_end` for every stage.

Rank 0 writes both records (the other ranks learn the attempt number by broadcast). The start
says who ran what where (job, ranks, nodes, host, process start, code revision, container image);
a code revision or image that differs from the previous attempt's adds a `code_change` record
(config_change's shape) and a warning. The end says how it ended: exit code, reason, step, plus
what the stage adds (steps and tokens of a training attempt). An attempt killed before its end
leaves its start alone: readers call that "ended abnormally".
"""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from saul import provenance
from saul.resilience import ledger


def _process_start() -> Optional[float]:
    try:
        import psutil

        return psutil.Process().create_time()  # launch cost counts, even if killed later
    except ImportError:
        return None


class Attempt:
    def __init__(self, ledger_path: Path, info, stage: str, broadcast_int: Callable[[int], int] = lambda n: n,
                 warn: Callable[[str], None] = lambda message: sys.stderr.write(message + "\n")):
        self.ledger_path, self.info, self.stage = ledger_path, info, stage
        self.broadcast_int, self.warn = broadcast_int, warn
        self.number = 0
        self.ended: Optional[dict] = None

    def start(self, **fields) -> int:
        """Write attempt_start (rank 0); every rank returns the attempt number."""
        info = self.info
        number = ledger.next_attempt(self.ledger_path) if info.is_main else 0
        self.number = self.broadcast_int(number)
        if info.is_main:
            previous = [r for r in ledger.read(self.ledger_path) if r.get("event") == "attempt_start"]
            record = {
                "event": "attempt_start", "attempt": self.number, "stage": self.stage, "job_id": info.job_id,
                "world_size": info.world_size, "nodes": info.num_nodes, "host": socket.gethostname(),
                "pid": os.getpid(), "process_start": _process_start(),
                "code": provenance.code_revision(), "image": provenance.container_image(), **fields,
            }
            changed = provenance.changes(previous[-1] if previous else None, record)
            if changed:
                ledger.append(self.ledger_path, {"event": "code_change", "attempt": self.number, "changes": changed})
                self.warn(f"warning: the code or image changed since attempt {previous[-1].get('attempt')}: "
                          + ", ".join(f"{k}: {_short(o)} -> {_short(n)}" for k, o, n in changed)
                          + "; the run continues from its checkpoint with the new code")
            ledger.append(self.ledger_path, record)
        return self.number

    def end(self, exit_code: int, reason: str, step: Optional[int] = None, **fields) -> None:
        """Write attempt_end once (rank 0); a second call (an error after the end) changes nothing."""
        if self.ended is not None:
            return
        self.ended = {"event": "attempt_end", "attempt": self.number, "stage": self.stage,
                      "job_id": self.info.job_id, "exit_code": int(exit_code), "reason": reason, "step": step,
                      "time": time.time(), **fields}
        if self.info.is_main:
            ledger.append(self.ledger_path, self.ended)


def _short(value) -> str:
    text = str(value)
    return text[:12] if len(text) == 40 and all(c in "0123456789abcdef" for c in text) else text
