"""Read a stage's power/ directory back: per node, per job energy, whatever state the meters died in.

power/<node>.jsonl is append-only, one JSON object per line, written by monitoring.meter.
Every record has: kind, time (Unix s), node, job, attempt, source ("pm_counters" or e.g.
"amdsmi+rapl+estimate"). By kind:

  start    schema, pid, interval_s, estimated, covers, sources [{name, trust, backend, devices,
           ...}], rejected {source: reason}, skipped {source: reason}
  sample   elapsed_s (since the first sample), power_w {device: W|null}, energy_counter_j
           {device: raw counter J|null}, node_power_w (W|null), node_energy_j (J integrated
           since the first sample), estimated, events [{device, event: wrap|reset}] (optional)
  check    window_s, devices {device: {method: counter|power, verdict: accepted|rejected|
           inconclusive|unchecked, reason, counter_j, power_j}}, rejected [device]
  summary  stop_reason, duration_s, energy_j, mean_power_w, samples, estimated, device_energy_j,
           energy_method, counter_events, read_errors

A meter killed with SIGKILL leaves no summary and perhaps half a last line: the half line is
skipped with a warning and the last complete sample stands in for the summary.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple


class PowerLogWarning(UserWarning):
    """A power log line that could not be used (truncated by a kill, or corrupted)."""


@dataclass
class MeterRun:
    """One meter process: one node, one job attempt."""

    node: str
    job: str
    attempt: int
    source: str = "none"
    estimated: bool = False
    start_time: Optional[float] = None
    end_time: Optional[float] = None
    duration_s: float = 0.0
    energy_j: Optional[float] = None
    samples: int = 0
    complete: bool = False  # a summary record was written (clean stop)
    stop_reason: Optional[str] = None
    rejected_sources: Dict[str, str] = field(default_factory=dict)
    rejected_counters: List[str] = field(default_factory=list)

    @property
    def mean_power_w(self) -> Optional[float]:
        if self.energy_j is None or self.duration_s <= 0:
            return None
        return self.energy_j / self.duration_s


@dataclass
class NodeJobEnergy:
    """Everything one node measured for one job (all attempts and meter restarts)."""

    node: str
    job: str
    runs: List[MeterRun]

    @property
    def energy_j(self) -> float:
        return sum(run.energy_j or 0.0 for run in self.runs)

    @property
    def duration_s(self) -> float:
        return sum(run.duration_s for run in self.runs)

    @property
    def mean_power_w(self) -> Optional[float]:
        return self.energy_j / self.duration_s if self.duration_s > 0 else None

    @property
    def source(self) -> str:
        return "/".join(dict.fromkeys(run.source for run in self.runs))

    @property
    def estimated(self) -> bool:
        return any(run.estimated for run in self.runs)

    @property
    def complete(self) -> bool:
        return all(run.complete for run in self.runs)


def read_records(path: Path) -> Iterator[dict]:
    """Every parseable record of one file, in order; bad lines are skipped with a warning."""
    with open(path, "rb") as stream:
        lines = stream.read().split(b"\n")
    last_index = len(lines) - 1
    for index, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or "kind" not in record:
                raise ValueError("not a power-log record")
        except (ValueError, UnicodeDecodeError) as exc:
            where = "truncated last line" if index == last_index else f"line {index + 1}"
            warnings.warn(f"{path}: skipping {where} ({exc})", PowerLogWarning, stacklevel=2)
            continue
        yield record


def load_runs(path: Path) -> List[MeterRun]:
    """The meter runs in one node's file; a new start record for the same key opens a new run."""
    runs: List[MeterRun] = []
    open_runs: Dict[Tuple[str, str, int], MeterRun] = {}
    for record in read_records(path):
        key = (str(record.get("node")), str(record.get("job")), int(record.get("attempt", 0)))
        kind = record["kind"]
        if kind == "start" or key not in open_runs:
            run = MeterRun(*key, source=record.get("source", "none"))
            open_runs[key] = run
            runs.append(run)
        run = open_runs[key]
        _apply(run, record)
    return runs


def _apply(run: MeterRun, record: dict) -> None:
    kind = record["kind"]
    when = record.get("time")
    if run.start_time is None:
        run.start_time = when
    run.end_time = when
    if kind == "start":
        run.estimated = bool(record.get("estimated"))
        run.rejected_sources = dict(record.get("rejected", {}))
    elif kind == "sample":
        run.samples += 1
        run.duration_s = float(record.get("elapsed_s", run.duration_s))
        if record.get("node_energy_j") is not None:
            run.energy_j = float(record["node_energy_j"])
        run.estimated = run.estimated or bool(record.get("estimated"))
    elif kind == "check":
        run.rejected_counters = list(record.get("rejected", []))
    elif kind == "summary":
        run.complete = True
        run.stop_reason = record.get("stop_reason")
        run.duration_s = float(record.get("duration_s") or 0.0)
        run.energy_j = record.get("energy_j")
        run.samples = int(record.get("samples", run.samples))
        run.estimated = bool(record.get("estimated", run.estimated))


def load_power_dir(power_dir: Path) -> Dict[Tuple[str, str], NodeJobEnergy]:
    """{(node, job): NodeJobEnergy} for every <node>.jsonl in a stage's power/ directory."""
    summaries: Dict[Tuple[str, str], NodeJobEnergy] = {}
    for path in sorted(Path(power_dir).glob("*.jsonl")):
        for run in load_runs(path):
            entry = summaries.setdefault((run.node, run.job), NodeJobEnergy(run.node, run.job, []))
            entry.runs.append(run)
    return summaries
