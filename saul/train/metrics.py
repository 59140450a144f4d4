"""metrics.jsonl: one line per logged step, written by rank 0, append-only and flushed per line.

Read it back with saul.resilience.ledger.read, the one JSONL reader."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Optional


class MetricsWriter:
    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self._fh: Optional[IO[str]] = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", buffering=1, encoding="utf-8")

    def write(self, record: dict) -> None:
        if self._fh is None:
            return
        record.setdefault("time", time.time())
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")

    def sync(self) -> None:
        """Make everything written so far durable (at checkpoints: metrics never lag the checkpoint)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

