"""Run a stage's ranks as local processes: the `local` site (no Slurm), same entry point as a Slurm task.

Each rank runs `python -m saul.stage_entry <stage_dir>` with the torch.distributed variables a
Slurm task would derive (RANK, WORLD_SIZE, MASTER_ADDR/PORT). We do not use submitit's
LocalExecutor here: its controller answers Ctrl-C by SIGKILLing the ranks one second later
(cutting a checkpoint save in half) and does not report exit codes, which the retry policy
needs. This launcher behaves like `srun --kill-on-bad-exit`: one rank failing stops the group.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from saul import exit_codes

KILL_GRACE_S = 20.0  # after one rank fails, how long the others get to notice before SIGKILL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def combine_exit_codes(codes: List[int]) -> int:
    """One code for the job: a user error wins, then a crash, then 'stopped', then done."""
    for code in codes:
        if code in exit_codes.NEVER_RETRY:
            return code
    crashes = [c for c in codes if c not in (exit_codes.DONE, exit_codes.STOPPED)]
    if crashes:
        c = crashes[0]
        return 128 - c if c < 0 else c  # a rank killed by signal N reads as 128+N, like a shell
    return exit_codes.STOPPED if exit_codes.STOPPED in codes else exit_codes.DONE


class LocalJob:
    def __init__(self, stage_dir: Path, nproc: int, log_dir: Path, extra_env: Optional[dict] = None,
                 hang_timeout_s: float = 0.0, start_grace_s: float = 1800.0):
        self.stage_dir, self.nproc, self.log_dir = Path(stage_dir), nproc, Path(log_dir)
        self.hang_timeout_s, self.start_grace_s = hang_timeout_s, start_grace_s
        self.job_id = f"{int(time.time())}{os.getpid() % 1000:03d}"
        self.extra_env = dict(extra_env or {})
        self.procs: List[subprocess.Popen] = []
        self._stop_signals = 0

    def log_path(self, rank: int) -> Path:
        return self.log_dir / f"local-{self.job_id}.rank{rank}.log"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        for rank in range(self.nproc):
            env = dict(os.environ, **self.extra_env)
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(self.nproc),
                       LOCAL_WORLD_SIZE=str(self.nproc), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), SAUL_JOB_ID=self.job_id, PYTHONUNBUFFERED="1")
            with open(self.log_path(rank), "ab") as log:
                # Own session: a Ctrl-C in the terminal reaches us, and we decide what the ranks get.
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "saul.stage_entry", str(self.stage_dir)],
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                ))

    def signal_all(self, sig: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def on_user_signal(self, signum, frame) -> None:
        """First Ctrl-C/SIGTERM: ranks checkpoint and stop at an agreed step. Second: kill now."""
        self._stop_signals += 1
        if self._stop_signals == 1:
            sys.stderr.write("\nstopping: the ranks will checkpoint and exit (press Ctrl-C again to kill now)\n")
            self.signal_all(signal.SIGTERM)
        else:
            self.signal_all(signal.SIGKILL)

    def _signal_by_name(self, name: str) -> None:
        self.signal_all(getattr(signal, f"SIG{name}"))

    def wait(self, tick: Callable[[], None] = lambda: None, poll_s: float = 0.2) -> int:
        from saul.resilience import heartbeat
        from saul.resilience.watchdog import HangDetector, act_on_hang

        failed_at: Optional[float] = None
        detector = HangDetector(self.hang_timeout_s, self.start_grace_s) if self.hang_timeout_s else None
        while True:
            codes = [p.poll() for p in self.procs]
            tick()
            if detector is not None and failed_at is None:
                verdict = detector.observe(heartbeat.read(self.stage_dir / "heartbeats"), time.time())
                if verdict:
                    sys.stderr.write(f"hang: {verdict}; rank stacks go to the rank logs, then the ranks are killed\n")
                    act_on_hang(self.stage_dir, self.job_id, verdict, self._signal_by_name)
                    failed_at = time.time()
                    continue
            if all(c is not None for c in codes):
                return combine_exit_codes(codes)
            if failed_at is None and any(c not in (None, 0, exit_codes.STOPPED) for c in codes):
                failed_at = time.time()
                self.signal_all(signal.SIGTERM)
            if failed_at is not None and time.time() - failed_at > KILL_GRACE_S:
                self.signal_all(signal.SIGKILL)
            time.sleep(poll_s)
