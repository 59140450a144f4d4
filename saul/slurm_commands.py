"""Run a Slurm client command (sacct, squeue, sinfo, scontrol) and get its output, or "" when it fails.

Shared by the login side and the batch-script helpers; standard library only. A Slurm client
that is missing, slow or refusing is an answer too ("unknown"), never an exception.
"""
from __future__ import annotations

import subprocess
from typing import List


def slurm_output(cmd: List[str], timeout_s: float = 30) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""
