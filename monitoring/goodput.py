"""Goodput of a training stage: how much of its wall time went into steps that count, and why not the rest.

Read from the run directory alone (torch-free, like all of monitoring/):

    ledger.jsonl    attempt_start / attempt_end (rank 0), job_end (after_job, or before_job for a
                    run Slurm ended itself), step_restart (a relaunch inside the allocation:
                    saul/resilience/step_restart.py), hang (watchdog), cancelled (jobs/cancel.py)
    metrics.jsonl   step records (step, step_time_s, attempt, time) and checkpoint records
                    ({"event": "checkpoint", "step", "seconds", "attempt"}: the save cost)
    config.yaml     checkpoint.every_steps, train.max_steps, train.log_every

Per attempt (one `attempt_start`):
- wall time: attempt_start -> attempt_end; an attempt killed without attempt_end ends at its last
  own record (step, checkpoint): what came after is invisible and counts as downtime.
- launch: rank 0's process start -> attempt_start (imports, process-group init), known only from
  attempt_end (saul/train/loop.py counts its time_to_first_step_s from the process start). A killed
  attempt has none, so every attempt is timed from its attempt_start, on one clock for all stages
  and runs, and the launch is reported beside it; it lies in the gap before the attempt.
- steps: every logged step record covers itself and the unlogged steps since the previous record
  (train.log_every > 1), each at the logged step's step_time_s.
- redone steps: steps after the step a LATER attempt resumed from; their step time is lost work.
  Productive step time is the step time of every step that was never redone.
- start-up: attempt_start -> the first step begins (model build, checkpoint load, data).
- gap after: this attempt's end -> the next attempt_start (failure detection, teardown, requeue,
  queue wait, launch). Recovery after an attempt = gap after + the next start-up.
- end class: job_end's class when the requeue path wrote one (crash, hang, node_failure, lost,
  stopped, done, user_error), else attempt_end's exit code, else `killed` (a later attempt
  exists) or `unfinished` (the last attempt: still running, or never followed).

Stage totals: effective training time ratio = productive step time / elapsed time from the first
attempt_start to the last attempt's end, and / the attempts' wall time alone (the gaps taken out);
observed MTBF = attempts' wall time / failures (planned stops are no failures); Young's optimal
checkpoint interval T = sqrt(2 x mean checkpoint save cost x MTBF), in seconds and in steps of the
mean step time, beside the configured checkpoint.every_steps.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from monitoring.campaign import is_stage_dir, list_runs
from saul.resilience import ledger
from saul.resilience.after_job import classify

FAILURE_CLASSES = ("crash", "hang", "node_failure", "lost", "killed")
PLANNED_CLASSES = ("done", "stopped", "preempted", "cancelled", "user_error")
UNFINISHED = "unfinished"
# Where a recovery's time goes, in order. detect + tear down: the failed attempt's last record -> the ranks'
# step returned (srun's kill-on-bad-exit, or the watchdog); relaunch: -> rank 0's process start (the
# restart decision, port, srun, container); imports + rendezvous: -> attempt_start; model build +
# checkpoint load: -> the first step began; first step: its step time.
RECOVERY_PHASES = ("detect + tear down", "relaunch", "imports + rendezvous", "model build + checkpoint load",
                   "first step")


@dataclass
class AttemptGoodput:
    """Where one attempt's time went. Times are Unix seconds, durations seconds."""

    attempt: int
    job_id: str
    start: float  # attempt_start
    end: float
    closed: bool  # ended with its own attempt_end; else `end` is its last record
    step_start: int  # the step it resumed from
    step_end: int  # the last step it is known to have finished
    end_class: str
    productive_steps: int = 0
    productive_s: float = 0.0
    redone_steps: int = 0
    redone_s: float = 0.0
    measured_steps: int = 0  # steps with a record of their own (the rest borrow a neighbour's time)
    checkpoints: int = 0
    checkpoint_s: float = 0.0
    startup_s: Optional[float] = None  # attempt_start -> first step begins; None: it never stepped
    gap_after_s: Optional[float] = None  # -> the next attempt_start; None for the last attempt
    launch_s: Optional[float] = None  # rank 0's process start -> attempt_start; None: no attempt_end
    recovery_after_s: Optional[float] = None  # gap after + the next attempt's start-up
    points: List[Tuple[float, int]] = field(default_factory=list, repr=False)  # (time, step) of its records
    checkpoint_points: List[Tuple[float, int]] = field(default_factory=list, repr=False)
    redone_after_step: Optional[int] = None  # its steps beyond this one were redone later
    # The recovery after this attempt by phase (RECOVERY_PHASES), where the records date them.
    phases: Dict[str, float] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def failed(self) -> bool:
        return self.end_class in FAILURE_CLASSES

    @property
    def steps(self) -> int:
        return self.productive_steps + self.redone_steps

    @property
    def other_s(self) -> float:
        """Wall time outside steps, saves and start-up: logging, final export, step-time sampling error."""
        return self.wall_s - self.productive_s - self.redone_s - self.checkpoint_s - (self.startup_s or 0.0)


@dataclass
class ClassLoss:
    """What the attempts that ended one way cost: steps redone, and the restarts after them."""

    end_class: str
    attempts: int = 0
    redone_steps: int = 0
    redone_s: float = 0.0
    recoveries: int = 0
    recovery_s: float = 0.0


@dataclass
class StageGoodput:
    run: str
    stage: str
    attempts: List[AttemptGoodput]
    every_steps: Optional[int] = None
    auto_interval: bool = False  # checkpoint.every_steps=auto: every_steps is the newest interval rank 0 chose
    max_steps: Optional[int] = None
    log_every: Optional[int] = None
    notes: List[str] = field(default_factory=list)
    in_job_restarts: int = 0  # relaunches of the ranks inside the allocation (step_restart records)
    swaps: List[dict] = field(default_factory=list)  # node_swap (a spare came in) and shrink (fewer nodes) records
    blamed: List[dict] = field(default_factory=list)  # node_blamed: repeated crashes of its ranks (saul.resilience.blame)
    meter_restarts: int = 0  # the power meter relaunched on the ranks' new nodes after a swap or shrink

    # --- time ---------------------------------------------------------------------------------
    @property
    def productive_s(self) -> float:
        return sum(a.productive_s for a in self.attempts)

    @property
    def redone_s(self) -> float:
        return sum(a.redone_s for a in self.attempts)

    @property
    def wall_s(self) -> float:
        """The attempts' wall time, gaps between them taken out."""
        return sum(a.wall_s for a in self.attempts)

    @property
    def gaps_s(self) -> float:
        return sum(a.gap_after_s or 0.0 for a in self.attempts)

    @property
    def elapsed_s(self) -> float:
        """First attempt_start -> last attempt's end."""
        return self.wall_s + self.gaps_s

    @property
    def ratio(self) -> Optional[float]:
        """Effective training time ratio: productive step time / elapsed time."""
        return self.productive_s / self.elapsed_s if self.elapsed_s > 0 else None

    @property
    def ratio_without_gaps(self) -> Optional[float]:
        """The same over the attempts' wall time only (requeue and queue waits taken out)."""
        return self.productive_s / self.wall_s if self.wall_s > 0 else None

    # --- failures -----------------------------------------------------------------------------
    @property
    def failures(self) -> List[AttemptGoodput]:
        return [a for a in self.attempts if a.failed]

    @property
    def mtbf_s(self) -> Optional[float]:
        return self.wall_s / len(self.failures) if self.failures else None

    @property
    def recoveries_after_failures(self) -> List[float]:
        return [a.recovery_after_s for a in self.failures if a.recovery_after_s is not None]

    @property
    def mean_recovery_s(self) -> Optional[float]:
        values = self.recoveries_after_failures
        return sum(values) / len(values) if values else None

    def losses(self) -> List[ClassLoss]:
        """Per end class, failures first; classes with nothing to say are left out."""
        out: Dict[str, ClassLoss] = {}
        for a in self.attempts:
            if a.end_class in ("done", UNFINISHED):
                continue
            loss = out.setdefault(a.end_class, ClassLoss(a.end_class))
            loss.attempts += 1
            loss.redone_steps += a.redone_steps
            loss.redone_s += a.redone_s
            if a.recovery_after_s is not None:
                loss.recoveries += 1
                loss.recovery_s += a.recovery_after_s
        return sorted(out.values(), key=lambda c: (c.end_class not in FAILURE_CLASSES, c.end_class))

    # --- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoints(self) -> int:
        return sum(a.checkpoints for a in self.attempts)

    @property
    def mean_checkpoint_s(self) -> Optional[float]:
        n = self.checkpoints
        return sum(a.checkpoint_s for a in self.attempts) / n if n else None

    @property
    def mean_step_s(self) -> Optional[float]:
        steps = sum(a.steps for a in self.attempts)
        return (self.productive_s + self.redone_s) / steps if steps else None

    @property
    def young_s(self) -> Optional[float]:
        """Young's optimal checkpoint interval: sqrt(2 x checkpoint cost x MTBF)."""
        if self.mean_checkpoint_s is None or self.mtbf_s is None:
            return None
        return math.sqrt(2.0 * self.mean_checkpoint_s * self.mtbf_s)

    @property
    def young_steps(self) -> Optional[int]:
        if self.young_s is None or not self.mean_step_s:
            return None
        return max(1, round(self.young_s / self.mean_step_s))

    @property
    def configured_interval_s(self) -> Optional[float]:
        if not self.every_steps or self.mean_step_s is None:
            return None
        return self.every_steps * self.mean_step_s

    def expected_overhead(self, interval_s: Optional[float]) -> Optional[float]:
        """Young's first-order cost of an interval, as a share of time: saves (C/T) plus half an
        interval redone per failure (T / 2 MTBF). Recovery adds the same at every interval."""
        c, m = self.mean_checkpoint_s, self.mtbf_s
        if interval_s is None or interval_s <= 0 or c is None or m is None:
            return None
        return c / interval_s + interval_s / (2.0 * m)

    @property
    def mean_launch_s(self) -> Optional[float]:
        known = [a.launch_s for a in self.attempts if a.launch_s is not None]
        return sum(known) / len(known) if known else None

    @property
    def measured_steps(self) -> int:
        return sum(a.measured_steps for a in self.attempts)


# --- analysis ------------------------------------------------------------------------------------
def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _step_records(metrics: Sequence[dict]) -> Dict[int, List[dict]]:
    """attempt -> its step records by step (a step logged twice in one attempt: the last one)."""
    by_attempt: Dict[int, Dict[int, dict]] = {}
    for m in metrics:
        if m.get("event") is not None or not all(_number(m.get(k)) for k in ("step", "step_time_s", "time")):
            continue
        if not isinstance(m.get("attempt"), int):
            continue
        by_attempt.setdefault(m["attempt"], {})[int(m["step"])] = m
    return {a: [steps[s] for s in sorted(steps)] for a, steps in by_attempt.items()}


def _checkpoint_records(metrics: Sequence[dict]) -> List[dict]:
    return [m for m in metrics if m.get("event") == "checkpoint" and isinstance(m.get("attempt"), int)
            and all(_number(m.get(k)) for k in ("step", "seconds", "time"))]


def _end_class(start: dict, end: Optional[dict], window: Tuple[float, float], records: Sequence[dict],
               is_last: bool) -> str:
    """How the attempt ended: the requeue path's verdict first, then the ranks' own exit code."""
    job_id = str(start.get("job_id"))
    begin, until = window

    def in_window(r: dict) -> bool:
        return str(r.get("job_id")) == job_id and _number(r.get("time")) and begin <= r["time"] < until

    # after_job's verdict, or step_restart's for a launch relaunched inside the allocation
    job_end = next((r for r in records if r.get("event") in ("job_end", "step_restart") and in_window(r)), None)
    if job_end is not None and job_end.get("class"):
        cls = str(job_end["class"])
        if cls == "lost" and str(job_end.get("slurm_state", "")).startswith("PREEMPTED"):
            return "preempted"
        if cls != "done" and any(r.get("event") == "cancelled" and in_window(r) for r in records):
            return "cancelled"
        return cls
    if end is not None and isinstance(end.get("exit_code"), int):
        return classify(end["exit_code"])
    if any(r.get("event") == "hang" and in_window(r) for r in records):
        return "hang"
    return UNFINISHED if is_last else "killed"


def analyse(records: Sequence[dict], metrics: Sequence[dict], config: Optional[dict] = None,
            run: str = "", stage: str = "") -> StageGoodput:
    """The stage's goodput from its ledger records, metrics records and config (all as parsed JSON/YAML)."""
    config = config or {}
    result = StageGoodput(run, stage, [], notes=[])
    result.every_steps = _config_int(config, "checkpoint", "every_steps")
    checkpoint = config.get("checkpoint") if isinstance(config.get("checkpoint"), dict) else {}
    if checkpoint.get("every_steps") == "auto":
        chosen = [r for r in metrics if r.get("event") == "checkpoint_interval" and isinstance(r.get("every_steps"), int)]
        result.auto_interval = True
        result.every_steps = chosen[-1]["every_steps"] if chosen else None
    result.max_steps = _config_int(config, "train", "max_steps")
    result.log_every = _config_int(config, "train", "log_every")
    result.in_job_restarts = sum(1 for r in records if r.get("event") == "step_restart")
    result.swaps = [r for r in records if r.get("event") in ("node_swap", "shrink")]
    result.blamed = [r for r in records if r.get("event") == "node_blamed"]
    result.meter_restarts = sum(1 for r in records if r.get("event") == "meter_restart")
    starts: Dict[int, dict] = {}
    for r in records:
        if r.get("event") == "attempt_start" and isinstance(r.get("attempt"), int) and _number(r.get("time")):
            starts.setdefault(r["attempt"], r)  # a number written twice: the first start is the real one
    ends = {r["attempt"]: r for r in records
            if r.get("event") == "attempt_end" and isinstance(r.get("attempt"), int) and _number(r.get("time"))}
    steps = _step_records(metrics)
    checkpoints = _checkpoint_records(metrics)
    order = sorted(starts, key=lambda n: (starts[n]["time"], n))
    resumed = {n: _step_start(n, ends.get(n), steps.get(n, []), checkpoints) for n in order}
    for i, n in enumerate(order):
        start, end = starts[n], ends.get(n)
        next_start = starts[order[i + 1]]["time"] if i + 1 < len(order) else math.inf
        mine = steps.get(n, [])
        saves = [c for c in checkpoints if c["attempt"] == n]
        step_start = resumed[n][0]
        if end is not None:
            finish, closed = end["time"], True
        else:
            finish = max([start["time"]] + [m["time"] for m in mine] + [c["time"] for c in saves])
            closed = False
        step_end = max([step_start] + [int(m["step"]) for m in mine]
                       + ([int(end["step_end"])] if end is not None and _number(end.get("step_end")) else []))
        result.attempts.append(AttemptGoodput(
            attempt=n, job_id=str(start.get("job_id", "")), start=start["time"], end=finish, closed=closed,
            step_start=step_start, step_end=step_end,
            end_class=_end_class(start, end, (start["time"], next_start), records, i + 1 == len(order)),
            checkpoints=len(saves), checkpoint_s=sum(c["seconds"] for c in saves),
            startup_s=_startup(start["time"], end, mine, saves, step_start),
            launch_s=_launch(start, end, mine, step_start),
            points=[(m["time"], int(m["step"])) for m in mine],
            checkpoint_points=[(c["time"], int(c["step"])) for c in saves]))
    _split_productive_and_redone(result.attempts, steps)
    for a, nxt in zip(result.attempts, result.attempts[1:]):
        a.gap_after_s = max(0.0, nxt.start - a.end)
        if nxt.startup_s is not None:
            a.recovery_after_s = a.gap_after_s + nxt.startup_s
        a.phases = _recovery_phases(a, nxt, starts[nxt.attempt], records, steps.get(nxt.attempt, []))
    inferred = [(n, resumed[n][0]) for n in order if resumed[n][1]]
    if inferred:
        result.notes.append(
            f"attempt(s) {', '.join(str(n) for n, _ in inferred)} have no attempt_end: each resumed from the newest "
            f"checkpoint an earlier attempt saved (step(s) {', '.join(str(s) for _, s in inferred)}), as the loader "
            "picks it")
    dated = [a for a in result.attempts if a.launch_s is not None]
    if dated:
        result.notes.append(
            f"launch before attempt_start (imports, process-group init), known from attempt_end for attempt(s) "
            f"{', '.join(str(a.attempt) for a in dated)}: {result.mean_launch_s:.1f} s on average; it counts in the "
            "gap before the attempt (the first attempt's launch precedes the elapsed time)")
    logged = sum(a.steps for a in result.attempts)
    if logged and result.measured_steps < logged:
        result.notes.append(
            f"{result.measured_steps} of {logged} step times measured; the others are the next logged step's "
            f"time (train.log_every={result.log_every or '?'})")
    return result


def _recovery_phases(a: AttemptGoodput, nxt: AttemptGoodput, next_start: dict, records: Sequence[dict],
                     next_steps: List[dict]) -> Dict[str, float]:
    """The recovery between two attempts by phase; a phase the records cannot date is left out."""
    if a.end_class not in FAILURE_CLASSES:
        return {}
    returned = next((r.get("step_returned") for r in records if r.get("event") == "step_restart"
                     and _number(r.get("step_returned")) and a.end <= r["step_returned"] <= nxt.start), None)
    process = next_start.get("process_start") if _number(next_start.get("process_start")) else None
    first_began = nxt.start + nxt.startup_s if nxt.startup_s is not None else None
    marks: List[Tuple[str, Optional[float]]] = [("detect + tear down", returned), ("relaunch", process), ("imports + rendezvous", nxt.start),
             ("model build + checkpoint load", first_began)]
    phases: Dict[str, float] = {}
    previous, pending = a.end, []
    for name, when in marks:  # an undated mark merges its phase into the next one's ("relaunch + imports ...")
        pending.append(name)
        if when is None:
            continue
        if when >= previous:
            phases[" + ".join(pending)] = when - previous
        previous, pending = when, []
    if next_steps and first_began is not None:
        phases["first step"] = float(next_steps[0]["step_time_s"])
    return phases


def _config_int(config: dict, section: str, key: str) -> Optional[int]:
    value = (config.get(section) or {}).get(key) if isinstance(config.get(section), dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _step_start(attempt: int, end: Optional[dict], mine: List[dict], checkpoints: List[dict]) -> Tuple[int, bool]:
    """(the step the attempt resumed from, inferred?): its attempt_end says so; a killed attempt resumed
    from the newest checkpoint an earlier attempt saved (below its first logged step)."""
    if end is not None and isinstance(end.get("step_start"), int):
        return end["step_start"], False
    first = int(mine[0]["step"]) if mine else None
    earlier = [int(c["step"]) for c in checkpoints if c["attempt"] < attempt and (first is None or c["step"] < first)]
    step = max(earlier, default=0)
    return step, step > 0


def _launch(start: dict, end: Optional[dict], mine: List[dict], step_start: int) -> Optional[float]:
    """Rank 0's process start -> attempt_start: the process start is its first step's end minus
    attempt_end's time_to_first_step_s. None without attempt_end, and for a record from before
    loop.py counted from the process start (it counted from the step loop then: after attempt_start)."""
    if end is None or not mine or not _number(end.get("time_to_first_step_s")):
        return None
    first = mine[0]
    first_step_done = first["time"] - first["step_time_s"] * (first["step"] - step_start - 1)
    launch = start["time"] - (first_step_done - end["time_to_first_step_s"])
    return launch if launch >= 0 else None


def _startup(begin: float, end: Optional[dict], mine: List[dict], saves: List[dict],
             step_start: int) -> Optional[float]:
    """Start -> the moment its first step began (the first logged step, minus the unlogged steps
    before it at that step's time and any save among them)."""
    if mine:
        first = mine[0]
        unlogged_saves = sum(c["seconds"] for c in saves if step_start < c["step"] < first["step"])
        began = first["time"] - first["step_time_s"] * (first["step"] - step_start) - unlogged_saves
        return max(0.0, began - begin)
    if end is not None and _number(end.get("time_to_first_step_s")) and _number(end.get("step_end")) \
            and end["step_end"] > step_start:
        return float(end["time_to_first_step_s"])
    return None


def _split_productive_and_redone(attempts: List[AttemptGoodput], steps: Dict[int, List[dict]]) -> None:
    """A step of an attempt is redone when a later attempt resumed from a step before it."""
    for i, a in enumerate(attempts):
        later = [b.step_start for b in attempts[i + 1:]]
        redo_after = min(later) if later else None
        a.redone_after_step = redo_after if redo_after is not None and redo_after < a.step_end else None
        previous = a.step_start
        for record in steps.get(a.attempt, []):
            step = int(record["step"])
            if step <= previous:
                continue
            covered = step - previous
            redone = 0 if redo_after is None else max(0, step - max(previous, redo_after))
            a.redone_steps += redone
            a.redone_s += redone * record["step_time_s"]
            a.productive_steps += covered - redone
            a.productive_s += (covered - redone) * record["step_time_s"]
            a.measured_steps += 1
            previous = step


# --- reading run directories -----------------------------------------------------------------------
def read_config(stage_dir: Path) -> dict:
    try:
        loaded = yaml.safe_load((Path(stage_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


NO_STEP_LOOP = ("prepare", "eval")  # stages whose attempts train no steps


def collect_stage(stage_dir: Path, run: Optional[str] = None) -> Optional[StageGoodput]:
    """None for a stage without training attempts (data preparation, a stage never started)."""
    stage_dir = Path(stage_dir)
    records = ledger.read(stage_dir / "ledger.jsonl")
    # Every stage writes attempt records; only the step-loop stages have a goodput.
    if not any(r.get("event") == "attempt_start" and r.get("stage") not in NO_STEP_LOOP for r in records):
        return None
    return analyse(records, ledger.read(stage_dir / "metrics.jsonl"), read_config(stage_dir),
                   run or stage_dir.parent.name, stage_dir.name)


def collect_run(run_dir: Path) -> List[StageGoodput]:
    stages = (collect_stage(p, Path(run_dir).name) for p in sorted(Path(run_dir).iterdir()) if is_stage_dir(p))
    return [s for s in stages if s is not None]


def collect_campaign(runs_root: Path) -> List[StageGoodput]:
    return [s for run in list_runs(runs_root) for s in collect_run(Path(runs_root) / run)]


# --- the report ------------------------------------------------------------------------------------
def _s(value: Optional[float], digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1%}"


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _table(header: Sequence[str], lines: Sequence[Sequence[object]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(str(cell) for cell in line) + " |" for line in lines]


def young_line(s: StageGoodput) -> str:
    if s.young_s is None:
        why = "no failure observed, so no MTBF" if s.mtbf_s is None else "no checkpoint save recorded"
        configured = "auto" if s.auto_interval else "configured"
        return f"Young's checkpoint interval: n/a ({why}); {configured} every {s.every_steps or '?'} steps"
    configured = (f"{'auto, newest choice' if s.auto_interval else 'configured'} every {s.every_steps} steps ≈ "
                  f"{_s(s.configured_interval_s)} s" if s.every_steps else "configured interval unknown (no config.yaml)")
    line = (f"Young's checkpoint interval sqrt(2 x {_s(s.mean_checkpoint_s, 3)} s x {_s(s.mtbf_s)} s) = "
            f"**{_s(s.young_s)} s ≈ {s.young_steps} steps** at {_s(s.mean_step_s, 3)} s/step; {configured}")
    at_configured, at_young = s.expected_overhead(s.configured_interval_s), s.expected_overhead(s.young_s)
    if at_configured is not None:
        line += (f" (expected save + redo overhead {_pct(at_configured)} configured vs {_pct(at_young)} at "
                 f"Young's interval)")
    return line


def median_phases(s: StageGoodput) -> Dict[str, float]:
    """Each recovery phase's median over the failures that dated it, in RECOVERY_PHASES order."""
    found: Dict[str, List[float]] = {}
    for a in s.attempts:
        for name, seconds in a.phases.items():
            found.setdefault(name, []).append(seconds)
    def rank(name: str) -> int:  # a merged phase sorts where its first part does
        return next((i for i, p in enumerate(RECOVERY_PHASES) if name.startswith(p)), len(RECOVERY_PHASES))

    return {name: statistics.median(v) for name, v in sorted(found.items(), key=lambda kv: rank(kv[0]))}


def recovery_phase_line(s: StageGoodput) -> str:
    phases = median_phases(s)
    if not phases:
        return "recovery by phase: no failure followed by another attempt"
    return "recovery by phase (median s): " + "; ".join(f"{name} {_s(v)}" for name, v in phases.items())


def allocation_line(s: StageGoodput) -> str:
    """What was recovered without going back to Slurm: in-job restarts, the node swaps and shrinks among them, the
    nodes blamed for repeated crashes (the reason for a swap Slurm did not ask for) and the meter's relaunches."""
    swaps = [r for r in s.swaps if r.get("event") == "node_swap"]
    shrinks = [r for r in s.swaps if r.get("event") == "shrink"]
    moves = "; ".join(f"{','.join(r.get('failed') or []) or '?'} -> "
                      f"{','.join(r.get('replacements') or []) or 'none'}"
                      + (f" (on {len(r.get('nodes_after') or [])} node(s))" if r.get("event") == "shrink" else "")
                      for r in s.swaps)
    blamed = "; ".join(f"{r.get('node', '?')} blamed for {r.get('crashes', '?')} crashes" for r in s.blamed)
    return (f"inside the allocation: {s.in_job_restarts} in-job restart(s), {len(swaps)} node swap(s), "
            f"{len(shrinks)} shrink(s)" + (f" ({moves})" if moves else "")
            + (f"; {blamed}" if blamed else "")
            + (f"; power meter relaunched {s.meter_restarts} time(s) on the new nodes" if s.meter_restarts else ""))


def summary_lines(s: StageGoodput) -> List[str]:
    counts: Dict[str, int] = {}
    for a in s.attempts:
        counts[a.end_class] = counts.get(a.end_class, 0) + 1
    classes = ", ".join(f"{n} {cls}" for cls, n in counts.items())
    return [
        f"effective training time ratio: **{_pct(s.ratio)}** ({_s(s.productive_s)} s of productive steps in "
        f"{_s(s.elapsed_s)} s from the first attempt's start to the last one's end); without the waits between "
        f"attempts: {_pct(s.ratio_without_gaps)} of {_s(s.wall_s)} s",
        f"attempts: {len(s.attempts)}; ended by {classes}; failures: {len(s.failures)}",
        allocation_line(s),
        f"lost work: {sum(a.redone_steps for a in s.attempts)} steps redone = {_s(s.redone_s)} s of step time",
        f"observed MTBF: {_s(s.mtbf_s)} s (attempts' wall time / failures; planned stops are not failures)",
        f"mean recovery after a failure: {_s(s.mean_recovery_s)} s (end of the failed attempt -> next first step)",
        recovery_phase_line(s),
        f"mean checkpoint save: {_s(s.mean_checkpoint_s, 3)} s over {s.checkpoints} saves; "
        f"mean step: {_s(s.mean_step_s, 3)} s",
        young_line(s),
    ]


def render(scope: str, stages: Sequence[StageGoodput], figures: Dict[Tuple[str, str], str]) -> str:
    md = [f"# Goodput report: {scope}", "",
          f"Generated {_when(time.time())} UTC by `monitoring/report.py kind=goodput` from each stage's ledger, "
          "metrics and config. Times are UTC; durations in seconds.", "",
          "Productive step time counts every step that was never redone; a step after the checkpoint the next "
          "attempt resumed from is redone (lost work). Start-up runs from attempt_start to the first step; the "
          "gap after an attempt runs from its end (its last record when it was killed) to the next attempt_start: "
          "failure detection, requeue, queue wait and launch (process start to attempt_start, shown where "
          "attempt_end dates it). Recovery = gap + the next start-up.", ""]
    if not stages:
        return "\n".join(md + ["**No training attempts**: no stage has an attempt_start in its ledger.", ""])
    for s in stages:
        md += _stage_section(s, figures.get((s.run, s.stage)))
    return "\n".join(md)


def _failure_kind(end_class: str) -> str:
    if end_class in FAILURE_CLASSES:
        return "yes"
    return "no (planned)" if end_class in PLANNED_CLASSES else "unknown class"


def _stage_section(s: StageGoodput, figure: Optional[str]) -> List[str]:
    md = [f"## {s.run} / {s.stage}", ""] + [f"- {line}" for line in summary_lines(s)] + [""]
    if figure:
        md += [f"![Progress vs wall time, {s.run}/{s.stage}]({figure})", ""]
    startup = sum(a.startup_s or 0.0 for a in s.attempts)
    parts = [("productive steps", s.productive_s), ("redone steps (lost work)", s.redone_s),
             ("checkpoint saves", sum(a.checkpoint_s for a in s.attempts)), ("start-up to first step", startup),
             ("other inside attempts (logging, export, ...)", sum(a.other_s for a in s.attempts)),
             ("gaps between attempts (detection, requeue, queue)", s.gaps_s)]
    md += ["### Where the time went", ""]
    md += _table(["", "s", "share of elapsed"],
                 [[name, _s(v), _pct(v / s.elapsed_s if s.elapsed_s > 0 else None)] for name, v in parts]
                 + [["**elapsed**", f"**{_s(s.elapsed_s)}**", "100.0%"]]) + [""]
    md += ["### Lost work and recovery per end class", ""]
    losses = s.losses()
    if losses:
        md += _table(["class", "failure", "attempts", "steps redone", "redone s", "recoveries", "mean recovery s"],
                     [[c.end_class, _failure_kind(c.end_class), c.attempts,
                       c.redone_steps, _s(c.redone_s), c.recoveries,
                       _s(c.recovery_s / c.recoveries if c.recoveries else None)] for c in losses]) + [""]
    else:
        md += ["Every attempt ran to the end: nothing lost, nothing recovered.", ""]
    md += ["### Attempts", ""]
    md += _table(["attempt", "job", "start", "steps", "ended", "wall s", "productive s", "redone steps", "redone s",
                  "saves (s)", "launch s", "start-up s", "gap after s", "recovery after s", "recovery by phase s"],
                 [[a.attempt, a.job_id, _when(a.start), f"{a.step_start}→{a.step_end}",
                   a.end_class + ("" if a.closed else " (no attempt_end)"), _s(a.wall_s), _s(a.productive_s),
                   a.redone_steps, _s(a.redone_s), f"{a.checkpoints} ({_s(a.checkpoint_s, 2)})", _s(a.launch_s),
                   _s(a.startup_s),
                   _s(a.gap_after_s), _s(a.recovery_after_s),
                   ", ".join(f"{k} {_s(v)}" for k, v in a.phases.items()) or "–"] for a in s.attempts]) + [""]
    if s.notes:
        md += ["### Notes", ""] + [f"- {n}" for n in s.notes] + [""]
    return md


def write_report(scope: str, stages: Sequence[StageGoodput], out: Path, one_run: bool) -> Dict[str, Path]:
    """goodput.md and one progress figure per stage in `out`; returns what was written, by name."""
    from monitoring import goodput_plot

    out.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    figures: Dict[Tuple[str, str], str] = {}
    for s in stages:
        name = f"goodput_{s.stage}.png" if one_run else f"goodput_{s.run}_{s.stage}.png"
        path = goodput_plot.progress_vs_wall_time(s, out / name)
        if path is not None:
            figures[(s.run, s.stage)] = path.name
            written[f"plot {s.run}/{s.stage}"] = path
    md = out / "goodput.md"
    tmp = md.with_name(".goodput.md.tmp")
    tmp.write_text(render(scope, stages, figures), encoding="utf-8")
    tmp.replace(md)
    written["md"] = md
    return written


def print_summary(scope: str, stages: Sequence[StageGoodput], written: Dict[str, Path]) -> None:
    print(f"Goodput: {scope}")
    if not stages:
        print("  no training attempts")
    for s in stages:
        recovery = _s(s.mean_recovery_s)
        young = f"{_s(s.young_s)} s ≈ {s.young_steps} steps" if s.young_s is not None else "n/a"
        print(f"  {s.run}/{s.stage}: ratio {_pct(s.ratio)} (without gaps {_pct(s.ratio_without_gaps)}), "
              f"{len(s.attempts)} attempts, {len(s.failures)} failures, lost {_s(s.redone_s)} s, "
              f"mean recovery {recovery} s, MTBF {_s(s.mtbf_s)} s, Young {young} vs every {s.every_steps or '?'}")
    print(f"report: {written['md']}")
