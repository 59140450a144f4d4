"""Every Slurm client call from Python (sbatch, squeue, sacct, sinfo, scontrol, scancel, srun) goes through here.

Shared by the login side and the batch-script helpers; standard library only (Python >= 3.8).
Each call has a timeout: a controller that does not answer is a clear message, never a hang.
`slurm_output` is for questions ("unknown" is an answer: ""), `run_slurm` for actions whose
failure the caller must report.

The timeout of every call is `SAUL_SLURM_TIMEOUT_S` seconds when set (tests, very slow
controllers), else the caller's default.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import List, Optional

DEFAULT_TIMEOUT_S = 60.0


class SlurmCommandError(RuntimeError):
    """A Slurm client did not answer in time, is missing, or refused; the message says which and what to do."""


def timeout_for(default_s: float) -> float:
    try:
        return float(os.environ.get("SAUL_SLURM_TIMEOUT_S", "")) or default_s
    except ValueError:
        return default_s


def run_slurm(cmd: List[str], timeout_s: float = DEFAULT_TIMEOUT_S, check: bool = True,
              input_text: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run `cmd`; raise SlurmCommandError when it is missing, times out, or (check=True) exits non-zero."""
    timeout_s = timeout_for(timeout_s)
    shown = " ".join(cmd)
    try:
        # Its own process group: on a timeout the whole client (and anything it started) is killed,
        # otherwise a grandchild holding the pipes would keep us waiting after all.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        raise SlurmCommandError(f"`{shown}` could not be started ({exc.strerror}): is Slurm's client installed "
                                f"and on PATH here?") from None
    try:
        out, err = proc.communicate(input_text, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        raise SlurmCommandError(f"`{shown}` did not answer within {timeout_s:g}s (is slurmctld overloaded or "
                                f"down? `scontrol ping` tells)") from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise SlurmCommandError(f"`{shown}` failed: {(err or out).strip() or f'exit code {proc.returncode}'}")
    return result


def slurm_output(cmd: List[str], timeout_s: float = 30) -> str:
    """The command's stdout, or "" when it is missing, refuses or times out (a timeout is said on stderr)."""
    try:
        return run_slurm(cmd, timeout_s, check=True).stdout
    except SlurmCommandError as exc:
        if "did not answer" in str(exc):
            sys.stderr.write(f"warning: {exc}\n")
        return ""
