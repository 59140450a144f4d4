"""Stop requests: a signal (time limit ahead, preemption, Ctrl-C) becomes a flag the step loop reads.

The handler only records the request; acting on it (agreeing on one stop step across ranks,
checkpointing, exiting with the "resume me" code) happens at a step boundary, where the
model and optimizer are consistent. A second SIGINT/SIGTERM while stopping means "now".
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Optional

log = logging.getLogger("saul.stop")

# USR2 is what the launchers ask Slurm to send ahead of the time limit. USR1 is not a stop
# request: it asks for a stack dump (the hang watchdog's signal, see stage_entry).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class StopRequest:
    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self.received_at: Optional[float] = None
        self.reason: Optional[str] = None

    @property
    def requested(self) -> bool:
        return self.signal is not None or self.reason is not None

    def install(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def request(self, reason: str) -> None:
        """Stop at the next step boundary for a reason of our own (step budget reached, hang policy)."""
        if self.reason is None:
            self.reason = reason

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum in (signal.SIGTERM, signal.SIGINT):
            sys.stderr.write(f"second {signal.Signals(signum).name} while stopping: exiting now\n")
            sys.stderr.flush()
            raise SystemExit(128 + signum)
        self.signal = signum
        self.received_at = time.time()
        self.reason = f"signal {signal.Signals(signum).name}"

    def describe(self) -> str:
        return self.reason or "none"
