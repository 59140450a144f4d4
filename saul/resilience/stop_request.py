"""Stop requests: a signal (time limit ahead, preemption, Ctrl-C) becomes a flag the ranks read.

The handler only records the request; acting on it (agreeing on one stop step across ranks,
checkpointing, exiting with the "resume me" code) happens at a safe point: before the first
step, or at a step boundary, where the model and optimizer are consistent. A second SIGINT/SIGTERM
while stopping means "now".

One request per process, installed first thing in the task (`install()`, from
`StageTask.__call__`), before the heavy imports, the rendezvous and the model build: until then
submitit's own USR2 handler would requeue the job by itself, bypassing our requeue path and the
ledger. A signal received during start-up is kept and acted on at the first safe point.

Leaving (`leaving()`): once every rank has decided to exit and written what it must, the first
rank to exit makes Slurm (`srun --kill-on-bad-exit`) SIGTERM the others. That SIGTERM is part of
leaving, not a reason to die with 143: it is noted and ignored, and the rank exits with its code.
"""
from __future__ import annotations

import signal
import sys
import time
from typing import Optional

# USR2 is what the launchers ask Slurm to send ahead of the time limit. USR1 is not a stop
# request: it asks for a stack dump (the hang watchdog's signal, see stage_entry).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class StopRequest:
    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self.received_at: Optional[float] = None
        self.reason: Optional[str] = None
        self.is_leaving = False
        self.signals_while_leaving = 0

    @property
    def requested(self) -> bool:
        return self.signal is not None or self.reason is not None

    def install(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        # A launcher may start the rank with these signals blocked, so that one sent before this
        # point waits (pending) instead of killing the interpreter or reaching submitit: deliver it now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def request(self, reason: str) -> None:
        """Stop at the next safe point for a reason of our own (step budget reached, hang policy)."""
        if self.reason is None:
            self.reason = reason

    def leaving(self) -> None:
        """From now on this rank only exits: a signal is counted, never turned into another exit code."""
        self.is_leaving = True

    def _handle(self, signum, frame) -> None:
        if self.is_leaving:
            self.signals_while_leaving += 1
            return
        if self.signal is not None and signum in (signal.SIGTERM, signal.SIGINT):
            sys.stderr.write(f"second {signal.Signals(signum).name} while stopping: exiting now\n")
            sys.stderr.flush()
            raise SystemExit(128 + signum)
        self.signal = signum
        self.received_at = time.time()
        self.reason = f"signal {signal.Signals(signum).name}"

    def describe(self) -> str:
        return self.reason or "none"


_current: Optional[StopRequest] = None


def install() -> StopRequest:
    """The process's stop request, its handlers (re)installed: the same object on every call, so a
    signal received early in the task is still known to the training loop."""
    global _current
    if _current is None:
        _current = StopRequest()
    return _current.install()


def current() -> StopRequest:
    """The installed stop request (installing it if the task did not: a rank started by hand)."""
    return _current if _current is not None else install()
