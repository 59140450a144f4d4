"""Show a running stage on the terminal: rank 0's log lines, and a progress bar when stdout is a TTY."""
from __future__ import annotations

import sys
from pathlib import Path

from saul.resilience.ledger import parse


class Follower:
    """Call `tick()` periodically; it prints what is new since the last call."""

    def __init__(self, log_path: Path, metrics_path: Path, stream=sys.stdout):
        self.log_path, self.metrics_path, self.stream = log_path, metrics_path, stream
        self._log_offset = 0
        self._metrics_offset = metrics_path.stat().st_size if metrics_path.is_file() else 0
        self._progress = None
        self._task = None
        if stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      TextColumn("{task.completed}/{task.total} {task.fields[info]}"),
                                      TimeRemainingColumn(), console=Console(file=stream), transient=True)

    def _new_lines(self, path: Path, offset: int):
        if not path.is_file():
            return offset, []
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        complete = data.rsplit(b"\n", 1)[0] + b"\n" if b"\n" in data else b""
        return offset + len(complete), complete.decode("utf-8", errors="replace").split("\n")[:-1]  # JSONL ends records at \n only

    def tick(self) -> None:
        self._log_offset, lines = self._new_lines(self.log_path, self._log_offset)
        for line in lines:
            if self._progress is not None:
                self._progress.console.print(line, markup=False, highlight=False)
            else:
                self.stream.write(line + "\n")
        self.stream.flush()
        self._metrics_offset, records = self._new_lines(self.metrics_path, self._metrics_offset)
        if self._progress is None:
            return
        for rec in parse(records):
            if "loss" not in rec:
                continue
            if self._task is None:
                self._progress.start()
                self._task = self._progress.add_task("training", total=rec["max_steps"], info="")
            self._progress.update(self._task, completed=rec["step"],
                                  info=f"loss {rec['loss']:.3f} {rec['tokens_per_s']:.0f} tok/s")

    def close(self) -> None:
        self.tick()
        if self._progress is not None and self._task is not None:
            self._progress.stop()

