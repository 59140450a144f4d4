"""ledger.jsonl: the append-only record of every attempt of a stage (who ran, what it did, how it ended).

One writer per record (rank 0 of the attempt, or the login side for submissions), one JSON
object per line, flushed and fsynced: Lustre handles appends well and SQLite locking badly.
A killed attempt leaves its `attempt_start` without an `attempt_end`; readers treat that as
"ended abnormally" and the next attempt says so in its own start record.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List


def append(path: Path, record: dict) -> None:
    record = dict(record)
    record.setdefault("time", time.time())
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write(2) of one line: concurrent appenders do not interleave
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: Path) -> List[dict]:
    """Every complete record of a JSONL file (ledger, metrics): the project's one JSONL reader."""
    if not path.is_file():
        return []
    # Bytes split on "\n" only: UTF-8 whatever the locale, and a U+2028 or U+0085 inside a
    # string value (legal in JSON) does not cut its record in two as str.splitlines would.
    return parse(path.read_bytes().split(b"\n"))


def parse(lines) -> List[dict]:
    """The records of JSONL lines (str or bytes, e.g. a file's tail); a line cut mid-write is skipped."""
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:  # JSONDecodeError, or bytes cut inside a UTF-8 character
            continue
    return records


def next_attempt(path: Path) -> int:
    return 1 + sum(1 for r in read(path) if r.get("event") == "attempt_start")
