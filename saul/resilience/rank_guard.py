"""What each rank tells the crash attribution about itself: where it ran, when it died, and whether our code failed.

    python -u -m saul.resilience.rank_guard -u -m submitit.core._submit <folder>

The Slurm launcher puts this in front of submitit's rank entry point (jobs/slurm_launcher.py); it
runs that module in the same process (signals, pid and exit code stay the rank's). Each rank
appends to <stage>/ranks/<job>.<restart>.<launch>.jsonl:

  rank_start      rank, node (SLURMD_NODENAME), host, pid, time: where Slurm placed this rank
  rank_exception  rank, node, type, message, time: an uncaught Python exception left the rank
  rank_gone       rank, node, pid, time (when the rank process ended), sigterm_at (when Slurm's
                  SIGTERM reached this rank's node, or null): written by the rank's witness

The witness is a small process of ours started next to the rank (`--witness PID FILE`, its own
command line, so nothing mistakes it for a rank). It waits on the rank's pid (pidfd: woken the
instant the rank dies, whatever killed it) and notes Slurm's SIGTERM instead of dying of it. A
rank that died on its own (SIGKILL, a segfault, a bad GPU) is gone before Slurm's SIGTERM; the
ranks `srun --kill-on-bad-exit` then ended are gone after it. saul.resilience.blame reads these
records; srun's own messages are not needed. Standard library only.
"""
from __future__ import annotations

import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from saul.process_alive import process_alive
from saul.resilience import ledger

RANKS_DIR = "ranks"  # in the stage directory


def launch_file(stage_dir: Path, job_id: str, restart: int, launch: int) -> Path:
    """One file per launch of the ranks' step: job id, Slurm restart count, launch in the allocation."""
    return Path(stage_dir) / RANKS_DIR / f"{job_id}.{int(restart)}.{int(launch)}.jsonl"


def this_launch_file(env=os.environ) -> Optional[Path]:
    stage = env.get("SAUL_STAGE_DIR")
    if not stage:
        return None
    return launch_file(Path(stage), env.get("SLURM_JOB_ID", "local"), int(env.get("SLURM_RESTART_COUNT", "0") or 0),
                       int(env.get("SAUL_STEP_RESTART", "0") or 0))


def _base(env=os.environ) -> dict:
    return {"rank": int(env.get("SLURM_PROCID", "0")), "node": env.get("SLURMD_NODENAME", socket.gethostname()),
            "pid": os.getpid()}


def record(path: Optional[Path], event: str, **fields) -> None:
    """Best effort: a rank never fails because its evidence could not be written."""
    if path is None:
        return
    try:
        ledger.append(path, {"event": event, **_base(), **fields, "time": time.time()})
    except OSError as exc:
        print(f"rank_guard: warning: cannot write {path}: {exc.strerror}", file=sys.stderr, flush=True)


def module_and_args(argv: List[str]) -> tuple:
    """`[-u] -m MODULE ARGS...` -> (MODULE, ARGS); -u is already in effect (the guard runs unbuffered)."""
    rest = list(argv)
    while rest[:1] == ["-u"]:
        rest.pop(0)
    if len(rest) < 2 or rest[0] != "-m":
        raise SystemExit("usage: python -u -m saul.resilience.rank_guard [-u] -m MODULE [ARGS...]")
    return rest[1], rest[2:]


def wait_for_exit(pid: int) -> None:
    """Return when process `pid` has ended (not our child: no exit status, only the moment)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # Python < 3.9 or kernel < 5.3: poll
        while process_alive(pid):
            time.sleep(0.02)
        return
    try:
        while True:
            try:
                if select.select([fd], [], [])[0]:
                    return
            except InterruptedError:  # a signal (Slurm's SIGTERM) woke us: keep waiting
                continue
    finally:
        os.close(fd)


def witness(pid: int, path: Path) -> int:
    """Note when rank `pid` ends and when Slurm's SIGTERM reached this node; never die of the step's signals
    before the rank did (Slurm's SIGKILL at the step's end still ends this process)."""
    sigterm_at = []

    def note(signum, _frame):
        if signum == signal.SIGTERM and not sigterm_at:
            sigterm_at.append(time.time())

    caught = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
    for signum in caught:
        signal.signal(signum, note)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, caught)  # a mask inherited from the rank would hide Slurm's SIGTERM
    wait_for_exit(pid)
    gone = time.time()
    ledger.append(path, {"event": "rank_gone", **_base(), "pid": pid, "time": gone,
                         "sigterm_at": sigterm_at[0] if sigterm_at else None})
    return 0


def start_witness(path: Optional[Path]) -> None:
    if path is None:
        return
    try:
        subprocess.Popen([sys.executable, "-m", "saul.resilience.rank_guard", "--witness", str(os.getpid()), str(path)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
    except OSError as exc:
        print(f"rank_guard: warning: no crash witness for this rank: {exc.strerror}", file=sys.stderr, flush=True)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--witness"] and len(argv) == 3:
        sys.exit(witness(int(argv[1]), Path(argv[2])))
    module, args = module_and_args(argv)
    path = this_launch_file()
    record(path, "rank_start", host=socket.gethostname())
    start_witness(path)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        raise  # an exit the code chose (its code is the rank's exit code): not an exception
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised unchanged
        record(path, "rank_exception", type=type(exc).__name__, message=str(exc)[:500])
        raise


if __name__ == "__main__":
    main()
