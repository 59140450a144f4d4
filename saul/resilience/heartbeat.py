"""Rank 0's heartbeat: `heartbeats/rank0.json` = {step, phase, time}, replaced atomically at every step.

One heartbeat is enough to detect a hang: a rank that stops making progress stalls the next
collective, so rank 0 stops beating too; the stack dumps of every rank then show which one
is stuck. The phase says what may legitimately take long: `load` and `save` (checkpoint I/O)
are never called a hang, only `train` is.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

PHASES = ("start", "load", "train", "save", "done")


class Heartbeat:
    def __init__(self, directory: Path, enabled: bool):
        self.path = directory / "rank0.json"
        self.enabled = enabled
        if enabled:
            directory.mkdir(parents=True, exist_ok=True)

    def beat(self, step: int, phase: str) -> None:
        if not self.enabled:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"step": step, "phase": phase, "time": time.time(), "pid": os.getpid()}))
        os.replace(tmp, self.path)


def read(directory: Path):
    try:
        return json.loads((directory / "rank0.json").read_text())
    except (OSError, ValueError):
        return None
