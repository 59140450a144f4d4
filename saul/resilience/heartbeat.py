"""Rank 0's heartbeat: `heartbeats/rank0.json` = {step, phase, time, job_id, restart_count, attempt}.

One heartbeat is enough to detect a hang: a rank that stops making progress stalls the next
collective, so rank 0 stops beating too; the stack dumps of every rank then show which one
is stuck. The phase says what may legitimately take long: `load` and `save` (checkpoint I/O)
are never called a hang, only `train` is. The job id, Slurm restart count and ledger attempt
say whose beat it is: after a requeue the previous attempt's last beat is still on disk, and
the watchdog must not take it for this attempt's.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from saul.data.atomic import write_text_atomic

PHASES = ("start", "load", "train", "save", "done")


class Heartbeat:
    """Writes at most once per `min_interval_s` within a phase (a file rewrite costs milliseconds on
    shared filesystems, a step of a small model not much more), and at once on every phase change."""

    def __init__(self, directory: Path, enabled: bool, min_interval_s: float = 1.0, job_id: str = "",
                 attempt: Optional[int] = None, restart_count: Optional[int] = None):
        self.path = directory / "rank0.json"
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        if restart_count is None:
            restart_count = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        self.identity = {"job_id": str(job_id), "restart_count": restart_count, "attempt": attempt}
        self._last = (None, 0.0)  # (phase, time of the last write)
        if enabled:
            directory.mkdir(parents=True, exist_ok=True)

    def beat(self, step: int, phase: str) -> None:
        if not self.enabled:
            return
        now = time.time()
        if phase == self._last[0] and now - self._last[1] < self.min_interval_s:
            return
        self._last = (phase, now)
        record = dict(self.identity, step=step, phase=phase, time=time.time(), pid=os.getpid())
        # Not durable (no directory sync): a heartbeat only matters while this attempt lives.
        write_text_atomic(self.path, json.dumps(record), sync_dir=False)


def read(directory: Path):
    try:
        return json.loads((directory / "rank0.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
