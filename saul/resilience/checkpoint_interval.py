"""checkpoint.every_steps=auto: Young's checkpoint interval, sqrt(2 x save cost x MTBF), in steps.

Young (1974): with a save costing C seconds and failures arriving every M seconds on average,
the interval that loses the least time (saves plus work redone after a failure) is about
sqrt(2 C M). Here:
  - C is measured: the newest checkpoint save of this run (metrics.jsonl `checkpoint` records,
    this attempt's saves first). Before any save was ever measured the first save is taken after
    one step, to measure it. C is what training waits for: the whole save when it is synchronous,
    only the snapshot into host memory when it is asynchronous (checkpoint.async_save: the record's
    `seconds`; the write that overlaps training is its `background_s` and costs no training time).
    One asynchronous save is in flight at a time, so the interval is never shorter than the newest
    background write: a save due sooner would wait for the previous one.
  - M is the run's own failure rate: the wall time since its first attempt started divided by
    the failures the ledger recorded (crashes, hangs, node failures, in-job restarts included).
    Before the first failure, DEFAULT: Llama 3's pre-training report (419 unexpected
    interruptions in 54 days on 16,384 GPUs, about 50,700 GPU-hours per interruption) divided by
    the run's rank count: about 66 h for 96 nodes x 8 GCDs, 25,000 h for 2 ranks. A run that
    fails more often learns its own rate at its first failure.
  - the interval in seconds becomes steps with the mean step time (this attempt's, else the
    run's logged steps), at least 1.
Rank 0 chooses, every rank follows (one broadcast per save), and each choice is written to
metrics.jsonl as a `checkpoint_interval` record (monitoring/goodput.py shows the newest).
Standard library only: the goodput report and the login side read it too.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Iterable, List, Optional, Tuple

LLAMA3_GPU_HOURS_PER_FAILURE = 54 * 24 * 16384 / 419  # ≈ 50,676: Meta's Llama 3 paper (2024), section 3.3.4
FAILURE_CLASSES = ("crash", "hang", "node_failure", "lost")
RECENT_STEPS = 50  # step times averaged for the interval


def default_mtbf_s(world_size: int) -> float:
    return LLAMA3_GPU_HOURS_PER_FAILURE * 3600.0 / max(1, int(world_size))


def young_interval_s(save_s: float, mtbf_s: float) -> float:
    return math.sqrt(2.0 * save_s * mtbf_s)


def interval_steps(save_s: float, mtbf_s: float, step_s: float) -> int:
    """Young's interval in whole steps (at least 1)."""
    if step_s <= 0:
        return 1
    return max(1, int(round(young_interval_s(save_s, mtbf_s) / step_s)))


def failures(ledger_records: Iterable[dict]) -> int:
    """Failures the run saw: each in-job restart and each job end the failure budget counts."""
    return sum(1 for r in ledger_records if r.get("event") in ("step_restart", "job_end")
               and r.get("class") in FAILURE_CLASSES)


def run_started(ledger_records: Iterable[dict]) -> Optional[float]:
    times = [r["time"] for r in ledger_records if r.get("event") == "attempt_start" and "time" in r]
    return min(times) if times else None


def observed_mtbf_s(ledger_records: List[dict], now: float, world_size: int) -> Tuple[float, str]:
    """(MTBF in seconds, where it comes from)."""
    count = failures(ledger_records)
    start = run_started(ledger_records)
    if count == 0 or start is None or now <= start:
        return default_mtbf_s(world_size), f"default for {world_size} ranks (no failure yet)"
    return (now - start) / count, f"observed: {count} failure(s) in {now - start:.0f}s"


def measured_costs(metrics_records: List[dict]) -> Tuple[Optional[float], Optional[float]]:
    """(newest checkpoint save's stall of training in seconds, mean of the newest logged step times) from
    metrics.jsonl."""
    saves = [r["seconds"] for r in metrics_records if r.get("event") == "checkpoint" and "seconds" in r]
    steps = [r["step_time_s"] for r in metrics_records if "step_time_s" in r and "event" not in r]
    return (saves[-1] if saves else None), (statistics.mean(steps[-RECENT_STEPS:]) if steps else None)


def newest_background_s(metrics_records: List[dict]) -> Optional[float]:
    """The newest asynchronous save's background write (metrics.jsonl), None when none was made."""
    writes = [r["background_s"] for r in metrics_records if r.get("event") == "checkpoint" and r.get("background_s")]
    return writes[-1] if writes else None


def choose(step: int, save_s: Optional[float], step_s: Optional[float], ledger_records: List[dict], world_size: int,
           now: Optional[float] = None, write_s: Optional[float] = None) -> dict:
    """The next save step and why (a `checkpoint_interval` record); `write_s`: the newest asynchronous save's
    background write, the shortest interval worth choosing."""
    mtbf, source = observed_mtbf_s(ledger_records, time.time() if now is None else now, world_size)
    if save_s is None or step_s is None:
        every, young = 1, None  # nothing measured yet: save after one step to measure the cost
    else:
        young = young_interval_s(save_s, mtbf)
        every = interval_steps(save_s, mtbf, step_s)
        if write_s and young < write_s and step_s > 0:
            every = max(every, math.ceil(write_s / step_s))
    return {"event": "checkpoint_interval", "step": step, "every_steps": every, "next_save_step": step + every,
            "save_s": save_s, "write_s": write_s, "step_s": step_s, "mtbf_s": mtbf, "mtbf_from": source,
            "young_interval_s": round(young, 3) if young is not None else None}


class Cadence:
    """When the step loop saves: every N steps, or Young's interval re-chosen after every save (auto).

    `due` is called by every rank after every step at the same point; for auto it broadcasts rank 0's
    choice (a collective), so all ranks save at the same step."""

    def __init__(self, every_steps, is_main: bool, world_size: int, broadcast: Callable, write: Callable,
                 read_ledger: Callable[[], List[dict]], read_metrics: Callable[[], List[dict]]):
        self.auto = str(every_steps) == "auto"
        self.every = None if self.auto else int(every_steps)
        self.is_main, self.world_size = is_main, world_size
        self.broadcast, self.write = broadcast, write
        self.read_ledger, self.read_metrics = read_ledger, read_metrics
        self.next_save: Optional[int] = None
        self.step_times: List[float] = []
        self.save_s: Optional[float] = None
        self.write_s: Optional[float] = None  # the newest asynchronous save's background write

    def due(self, step: int, step_s: float) -> bool:
        if not self.auto:
            return step % self.every == 0
        self.step_times = (self.step_times + [step_s])[-RECENT_STEPS:]
        if self.next_save is None:  # first step of this attempt: plan from the run's earlier measurements
            self._plan(step - 1, from_files=True)
        return step >= self.next_save

    def saved(self, step: int, seconds: float) -> None:
        if self.auto:
            self.save_s = seconds
            self._plan(step, from_files=False)

    def written(self, background_s: float) -> None:
        """An asynchronous save finished its background write (rank 0 plans with it)."""
        self.write_s = background_s or None

    def _plan(self, step: int, from_files: bool) -> None:
        record = None
        if self.is_main:
            save_s, step_s = self.save_s, (statistics.mean(self.step_times[1:] or self.step_times)
                                           if self.step_times else None)
            if from_files:
                old_save, old_step = measured_costs(self.read_metrics())
                save_s = save_s if save_s is not None else old_save
                step_s = old_step if old_step is not None else step_s
                self.write_s = self.write_s if self.write_s is not None else newest_background_s(self.read_metrics())
            record = choose(step, save_s, step_s, self.read_ledger(), self.world_size, write_s=self.write_s)
            self.write(record)
        self.next_save = int(self.broadcast(record["next_save_step"] if record else None))
