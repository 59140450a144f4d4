"""Write-temp-then-rename: a reader sees either the old file or the complete new one, never half.

Shared filesystems (Lustre, GPFS) make rename within a directory atomic; fsync of the file
before the rename and of the directory after it makes the result survive a node crash.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: os.PathLike) -> None:
    """Persist the directory entry of a rename (a no-op where the OS cannot open directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: os.PathLike, data: bytes | memoryview, sync_dir: bool = True) -> Path:
    path = Path(path)
    # The pid in the temp name keeps two writers of the same file from clobbering each other.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill mid-write leaves the old file and no temp beside it
        try:  # not unlink(missing_ok=True): the batch-script host's python3 can be 3.7 (HPE Cray OS)
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path


def write_text_atomic(path: os.PathLike, text: str, sync_dir: bool = True) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), sync_dir=sync_dir)


def write_json_atomic(path: os.PathLike, obj: Any, sync_dir: bool = True) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return write_text_atomic(path, text, sync_dir=sync_dir)
