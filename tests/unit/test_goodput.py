"""Goodput of hand-built stages written in the toolkit's real formats, checked against numbers worked out by hand.

`Timeline` plays a stage the way the toolkit runs it: rank 0's attempt_start, a start-up, steps
of a known time (a step record after the step, then the save and its checkpoint record every
checkpoint.every_steps), and an ending: attempt_end + after_job's job_end (done, stopped), a kill
after some step with after_job's job_end (crash, hang with the watchdog's record), or a node
failure (no record at all, then before_job's job_end at the next run's start). Records go through
the real writers (saul.resilience.ledger, saul.train.metrics) into a config.yaml composed by
saul.config, so the report reads exactly what a run directory holds.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from omegaconf import OmegaConf

from monitoring import goodput, report
from saul.config.compose import compose
from saul.resilience import ledger
from saul.train.metrics import MetricsWriter

REPO = Path(__file__).resolve().parents[2]
T0 = 1_708_416_000.0
STEP_S, SAVE_S, STARTUP_S, EXPORT_S = 0.5, 2.0, 10.0, 1.0  # exact in binary: sums stay exact
TOKENS_PER_STEP = 1024


class Timeline:
    def __init__(self, runs_root: Path, run: str, every_steps: int = 10, max_steps: int = 40, log_every: int = 1,
                 job_id: str = "700"):
        self.dir = runs_root / run / "cpt"
        self.dir.mkdir(parents=True)
        cfg = compose(["stage=cpt", "model=tiny-mixtral", "site=local-slurm", "nodes=2", f"run={run}",
                       f"runs_root={runs_root}", f"checkpoint.every_steps={every_steps}",
                       f"train.max_steps={max_steps}", f"train.log_every={log_every}"]).cfg
        (self.dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        self.every, self.max_steps, self.log_every, self.job_id = every_steps, max_steps, log_every, job_id
        self.metrics = MetricsWriter(self.dir / "metrics.jsonl", enabled=True)
        self.attempt = 0
        self.restart = 0
        self.saved = 0  # the newest checkpoint: where the next attempt resumes
        self.node_failure_pending = False

    def _ledger(self, record: dict) -> None:
        ledger.append(self.dir / "ledger.jsonl", record)

    def _job_end(self, cls: str, when: float, code: Optional[int], action: str = "requeue", **extra) -> None:
        self._ledger({"event": "job_end", "job_id": self.job_id, "restart_count": self.restart, "exit_code": code,
                      "class": cls, "action": action, "why": "test", "checkpoint_step": self.saved,
                      "nodelist": "n[1-2]", "time": when, **extra})
        self.restart += 1

    def _save(self, step: int, t: float) -> float:
        t += SAVE_S
        self.metrics.write({"event": "checkpoint", "step": step, "seconds": SAVE_S, "attempt": self.attempt, "time": t})
        self.saved = step
        return t

    def attempt_until(self, start: float, last_step: int, ending: str, step_times=None, launch_s: float = 0.0,
                      first_step_from: str = "process") -> float:
        """Run one attempt whose attempt_start is at `start` (its process started `launch_s` earlier) to
        `last_step`, end it as `ending`; returns its last record's time. attempt_end's time_to_first_step_s
        counts from the process start (loop.py today) or, `first_step_from="loop"`, from the step loop
        (loop.py before: the first step's time only)."""
        if self.node_failure_pending:  # before_job accounts for the run Slurm ended, at the next run's start
            self._job_end("node_failure", start - 1.0, None, slurm_state="NODE_FAIL", blamed_nodes=["n2"])
            self.node_failure_pending = False
        self.attempt += 1
        self._ledger({"event": "attempt_start", "attempt": self.attempt, "job_id": self.job_id, "world_size": 2,
                      "nodes": 2, "host": "n1", "pid": 4242, "time": start})
        step_start = step = self.saved
        t = start + STARTUP_S
        first_step_s = None
        while step < last_step:
            step += 1
            step_s = step_times[step] if step_times else STEP_S
            t += step_s
            first_step_s = step_s if first_step_s is None else first_step_s
            stopping = ending == "stopped" and step == last_step
            if step % self.log_every == 0 or step == self.max_steps or stopping:
                self.metrics.write({"step": step, "loss": 7.0 - step / 100, "lr": 1e-3, "grad_norm": 1.0,
                                    "step_time_s": step_s, "tokens_per_s": TOKENS_PER_STEP / step_s,
                                    "tokens": step * TOKENS_PER_STEP, "samples": step * 16,
                                    "max_steps": self.max_steps, "batch_digest": "0" * 16, "attempt": self.attempt,
                                    "time": t})
            if step % self.every == 0 or step == self.max_steps:
                t = self._save(step, t)
        if ending in ("done", "stopped"):
            if ending == "stopped" and self.saved != step:
                t = self._save(step, t)  # checkpoint.save_on_stop
            if ending == "done":
                t += EXPORT_S
            self._ledger({"event": "attempt_end", "attempt": self.attempt, "job_id": self.job_id,
                          "exit_code": 0 if ending == "done" else 75, "reason": ending, "step_start": step_start,
                          "step_end": step, "tokens_end": step * TOKENS_PER_STEP,
                          "resumed_from": f"step-{step_start:08d}" if step_start else None,
                          "time_to_first_step_s": (launch_s + STARTUP_S + first_step_s if first_step_from == "process"
                                                   else first_step_s), "time": t})
            self._job_end(ending, t + 1.0, 0 if ending == "done" else 75, "done" if ending == "done" else "requeue")
        elif ending == "hang":
            self._ledger({"event": "hang", "job_id": self.job_id, "why": "no progress", "time": t + 20.0})
            self._job_end("hang", t + 25.0, 137)
        elif ending == "crash":
            self._job_end("crash", t + 5.0, 137)
        elif ending == "node_failure":
            self.node_failure_pending = True
        return t


def stage_of(timeline: Timeline) -> goodput.StageGoodput:
    return goodput.collect_stage(timeline.dir)


def test_a_clean_run_counts_start_up_saves_and_export_against_its_steps(tmp_path):
    tl = Timeline(tmp_path, "clean")
    end = tl.attempt_until(T0, 40, "done")
    assert end == T0 + 10 + 40 * 0.5 + 4 * 2.0 + 1.0
    s = stage_of(tl)
    (a,) = s.attempts
    assert (a.end_class, a.closed, a.step_start, a.step_end) == ("done", True, 0, 40)
    assert a.productive_s == 20.0 and a.redone_steps == 0 and a.startup_s == 10.0
    assert a.checkpoints == 4 and a.checkpoint_s == 8.0 and a.other_s == pytest.approx(1.0)
    assert s.elapsed_s == s.wall_s == 39.0
    assert s.ratio == pytest.approx(20 / 39) and s.ratio_without_gaps == pytest.approx(20 / 39)
    assert s.failures == [] and s.mtbf_s is None and s.young_s is None and s.mean_recovery_s is None
    assert s.mean_checkpoint_s == 2.0 and s.mean_step_s == 0.5
    assert s.every_steps == 10 and s.max_steps == 40
    assert "n/a (no failure observed, so no MTBF)" in goodput.young_line(s)


def test_a_crash_after_a_checkpoint_makes_the_steps_after_it_redone(tmp_path):
    tl = Timeline(tmp_path, "crash")
    last = tl.attempt_until(T0, 25, "crash")  # saves at 10 and 20; killed after step 25
    assert last == T0 + 10 + 12.5 + 4.0
    tl.attempt_until(T0 + 60.0, 40, "done")  # resumes at 20
    s = stage_of(tl)
    first, second = s.attempts
    assert (first.end_class, first.closed, first.step_end) == ("crash", False, 25)
    assert first.wall_s == 26.5 and first.gap_after_s == 33.5
    assert (first.redone_steps, first.redone_s, first.productive_s) == (5, 2.5, 10.0)
    assert first.redone_after_step == 20
    assert second.step_start == 20 and second.productive_s == 10.0 and second.wall_s == 25.0
    assert first.recovery_after_s == 33.5 + 10.0
    assert s.productive_s == 20.0 and s.wall_s == 51.5 and s.elapsed_s == 85.0
    assert s.ratio == pytest.approx(20 / 85) and s.ratio_without_gaps == pytest.approx(20 / 51.5)
    assert s.mtbf_s == 51.5 and s.mean_recovery_s == 43.5 and s.mean_checkpoint_s == 2.0
    assert s.young_s == pytest.approx(math.sqrt(2 * 2.0 * 51.5)) and s.young_steps == 29  # 14.35 s / 0.5 s
    assert s.configured_interval_s == 5.0
    assert s.expected_overhead(5.0) == pytest.approx(2.0 / 5.0 + 5.0 / (2 * 51.5))
    (crash,) = s.losses()
    assert (crash.end_class, crash.attempts, crash.redone_steps, crash.redone_s, crash.recovery_s) == (
        "crash", 1, 5, 2.5, 43.5)


def test_a_node_failure_without_attempt_end_then_a_crash_then_done(tmp_path):
    tl = Timeline(tmp_path, "nodefail", max_steps=30)
    assert tl.attempt_until(T0, 17, "node_failure") == T0 + 20.5  # save at 10
    assert tl.attempt_until(T0 + 80.0, 14, "crash") == T0 + 92.0  # from 10, no save of its own
    tl.attempt_until(T0 + 120.0, 30, "done")
    s = stage_of(tl)
    a1, a2, a3 = s.attempts
    assert [a.end_class for a in s.attempts] == ["node_failure", "crash", "done"]
    assert not a1.closed and not a2.closed and a3.closed
    assert a2.step_start == 10  # no attempt_end: the newest earlier checkpoint, as the loader picks it
    assert (a1.redone_steps, a1.redone_s, a2.redone_steps, a2.redone_s) == (7, 3.5, 4, 2.0)
    assert (a1.wall_s, a2.wall_s, a3.wall_s) == (20.5, 12.0, 25.0)
    assert (a1.gap_after_s, a2.gap_after_s) == (59.5, 28.0)
    assert s.productive_s == 15.0 and s.elapsed_s == 145.0
    assert s.ratio == pytest.approx(15 / 145) and s.ratio_without_gaps == pytest.approx(15 / 57.5)
    assert len(s.failures) == 2 and s.mtbf_s == 28.75
    assert s.recoveries_after_failures == [69.5, 38.0] and s.mean_recovery_s == 53.75
    assert s.young_s == pytest.approx(math.sqrt(115.0)) and s.young_steps == 21
    assert {c.end_class: (c.redone_steps, c.redone_s) for c in s.losses()} == {
        "node_failure": (7, 3.5), "crash": (4, 2.0)}
    assert any("attempt(s) 2 have no attempt_end" in n and "step(s) 10" in n for n in s.notes)


def test_the_launch_before_attempt_start_is_reported_where_attempt_end_dates_the_process(tmp_path):
    tl = Timeline(tmp_path, "launch")
    tl.attempt_until(T0, 25, "crash", launch_s=4.0)  # killed: no attempt_end to date its process
    tl.attempt_until(T0 + 60.0, 40, "done", launch_s=3.0)  # imports and process-group init before attempt_start
    s = stage_of(tl)
    first, second = s.attempts
    assert (first.launch_s, second.launch_s) == (None, 3.0) and s.mean_launch_s == 3.0
    # Every attempt on the attempt_start clock: the launch stays in the gap, the recovery is the same.
    assert (first.start, second.start, second.startup_s) == (T0, T0 + 60.0, 10.0)
    assert first.gap_after_s == 33.5 and first.recovery_after_s == 43.5 and s.elapsed_s == 85.0
    assert any("known from attempt_end for attempt(s) 2: 3.0 s on average" in n for n in s.notes)


def test_a_time_to_first_step_counted_from_the_step_loop_dates_no_launch(tmp_path):
    tl = Timeline(tmp_path, "oldloop")
    tl.attempt_until(T0, 40, "done", first_step_from="loop")  # loop.py before it counted from the process start
    (a,) = stage_of(tl).attempts
    assert a.launch_s is None and a.start == T0 and a.startup_s == STARTUP_S


def test_planned_stops_are_no_failures_and_lose_no_work(tmp_path):
    tl = Timeline(tmp_path, "stops", max_steps=30)
    assert tl.attempt_until(T0, 12, "stopped") == T0 + 20.0  # save at 10, save on stop at 12
    tl.attempt_until(T0 + 50.0, 30, "done")
    s = stage_of(tl)
    first, second = s.attempts
    assert first.end_class == "stopped" and not first.failed and first.redone_steps == 0
    assert second.step_start == 12 and second.wall_s == 24.0
    assert s.productive_s == 15.0 and s.elapsed_s == 74.0 and s.ratio == pytest.approx(15 / 74)
    assert s.failures == [] and s.mtbf_s is None and s.mean_recovery_s is None and s.young_s is None
    (stopped,) = s.losses()
    assert (stopped.end_class, stopped.redone_steps, stopped.recoveries, stopped.recovery_s) == ("stopped", 0, 1, 40.0)


def test_a_hang_is_a_failure_and_its_wait_for_the_watchdog_is_recovery(tmp_path):
    tl = Timeline(tmp_path, "hang", max_steps=20)
    last = tl.attempt_until(T0, 15, "hang")  # save at 10; stuck after step 15
    tl.attempt_until(last + 40.0, 20, "done")
    s = stage_of(tl)
    assert [a.end_class for a in s.attempts] == ["hang", "done"]
    assert s.attempts[0].redone_steps == 5 and s.attempts[0].recovery_after_s == 40.0 + STARTUP_S


def test_unlogged_steps_take_the_next_logged_steps_time(tmp_path):
    times = {step: 0.25 * (1 + (step - 1) // 5) for step in range(1, 21)}  # 0.25, 0.5, 0.75, 1.0 per block of 5
    tl = Timeline(tmp_path, "sparse", max_steps=20, every_steps=20, log_every=5)
    tl.attempt_until(T0, 20, "done", step_times=times)
    s = stage_of(tl)
    (a,) = s.attempts
    assert a.productive_s == pytest.approx(5 * (0.25 + 0.5 + 0.75 + 1.0)) and a.measured_steps == 4
    assert a.startup_s == pytest.approx(STARTUP_S)
    assert any("4 of 20 step times measured" in n for n in s.notes)


def test_the_report_renders_markdown_and_the_progress_figure(tmp_path):
    runs = tmp_path / "runs"
    tl = Timeline(runs, "faulty", max_steps=30)
    tl.attempt_until(T0, 17, "node_failure")
    tl.attempt_until(T0 + 80.0, 14, "crash")
    tl.attempt_until(T0 + 120.0, 30, "done")
    assert report.main([f"runs_root={runs}", "run=faulty", "kind=goodput"]) == 0
    out = runs / "faulty" / "reports"
    md = (out / "goodput.md").read_text()
    assert md.startswith("# Goodput report: run faulty")
    for text in ("## faulty / cpt", "effective training time ratio: **10.3%**", "without the waits between "
                 "attempts: 26.1%", "observed MTBF: 28.8 s", "mean recovery after a failure: 53.8 s",
                 "= **10.7 s ≈ 21 steps**", "configured every 10 steps ≈ 5.0 s", "### Where the time went",
                 "| node_failure | yes | 1 | 7 | 3.5 |", "| 1 | 700 |", "node_failure (no attempt_end)",
                 "![Progress vs wall time, faulty/cpt](goodput_cpt.png)"):
        assert text in md, text
    png = out / "goodput_cpt.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not (out / "energy.md").exists()  # kind=goodput only


def test_kind_all_writes_both_reports_and_energy_stays_as_it_was(tmp_path):
    runs = tmp_path / "runs"
    Timeline(runs, "both").attempt_until(T0, 40, "done")
    result = subprocess.run([sys.executable, str(REPO / "monitoring" / "report.py"), f"runs_root={runs}",
                             "run=both"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = runs / "both" / "reports"
    assert (out / "energy.md").is_file() and (out / "goodput.md").is_file()
    assert "Goodput: run both" in result.stdout and "both/cpt: ratio 51.3%" in result.stdout
    assert report.main([f"runs_root={runs}", "run=both", "kind=energy", f"out={tmp_path / 'energy-only'}"]) == 0
    assert sorted(p.name for p in (tmp_path / "energy-only").iterdir() if p.suffix == ".md") == ["energy.md"]


def test_a_stage_without_training_attempts_says_so(tmp_path):
    runs = tmp_path / "runs"
    (runs / "dataonly" / "prepare").mkdir(parents=True)
    (runs / "dataonly" / "prepare" / "config.yaml").write_text("stage: prepare\n")
    assert report.main([f"runs_root={runs}", "run=dataonly", "kind=goodput"]) == 0
    assert "**No training attempts**" in (runs / "dataonly" / "reports" / "goodput.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["run=nope", "kind=goodput"], "unknown run 'nope' under"),
    (["kind=goodness"], "kind=goodness: choose one of all, energy, goodput"),
    (["knid=goodput"], "unknown key 'knid' (did you mean kind?)"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message, capsys):
    runs = tmp_path / "runs"
    Timeline(runs, "some").attempt_until(T0, 40, "done")
    assert report.main([f"runs_root={runs}", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_missing_runs_root_is_bad_input_for_goodput(tmp_path, capsys):
    assert report.main([f"runs_root={tmp_path / 'nowhere'}", "kind=goodput"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_an_in_job_restart_is_split_into_recovery_phases(tmp_path):
    """A crash relaunched inside the allocation: each phase between the records that date it, medians in the
    summary; a requeued crash without the relaunch record merges the undated phases."""
    t = 1000.0
    records = [
        {"event": "attempt_start", "attempt": 1, "job_id": "7", "time": t, "process_start": t - 5},
        {"event": "step_restart", "job_id": "7", "class": "crash", "step_returned": t + 26.0, "time": t + 26.5},
        {"event": "attempt_start", "attempt": 2, "job_id": "7", "time": t + 31.0, "process_start": t + 27.0},
        {"event": "attempt_end", "attempt": 2, "job_id": "7", "exit_code": 0, "time": t + 60.0, "step_start": 0},
    ]
    metrics = [{"step": 1, "step_time_s": 1.0, "attempt": 1, "time": t + 10.0, "loss": 1.0},
               {"step": 2, "step_time_s": 1.0, "attempt": 1, "time": t + 20.0, "loss": 1.0},
               {"step": 1, "step_time_s": 0.5, "attempt": 2, "time": t + 34.5, "loss": 1.0}]
    s = goodput.analyse(records, metrics)
    first = s.attempts[0]
    assert first.end_class == "crash"
    assert first.phases == {"detect + tear down": 6.0, "relaunch": 1.0, "imports + rendezvous": 4.0,
                            "model build + checkpoint load": 3.0, "first step": 0.5}
    assert "detect + tear down 6.0; relaunch 1.0" in goodput.recovery_phase_line(s)
    requeued = goodput.analyse([r for r in records if r["event"] != "step_restart"]
                               + [{"event": "job_end", "job_id": "7", "class": "crash", "time": t + 26.5}], metrics)
    assert list(requeued.attempts[0].phases) == ["detect + tear down + relaunch", "imports + rendezvous",
                                                 "model build + checkpoint load", "first step"]
    assert requeued.attempts[0].phases["detect + tear down + relaunch"] == 7.0
    assert goodput.analyse(records[2:], metrics[2:]).attempts[0].phases == {}  # no failure, no recovery


def test_a_node_swap_and_the_auto_interval_are_reported(tmp_path):
    """A node set DOWN with a spare: the step_restart (class node_failure) is a failure, the swap is named in the
    summary; with checkpoint.every_steps=auto the newest interval rank 0 chose stands beside Young's."""
    t = 1000.0
    records = [
        {"event": "attempt_start", "attempt": 1, "job_id": "7", "time": t, "process_start": t - 5},
        {"event": "node_excluded", "node": "n2", "reason": "Slurm state down", "job_id": "7", "time": t + 20.5},
        {"event": "step_restart", "job_id": "7", "class": "node_failure", "lost_nodes": ["n2"],
         "step_returned": t + 20.0, "time": t + 20.5},
        {"event": "node_swap", "job_id": "7", "failed": ["n2"], "replacements": ["n3"], "time": t + 21.0},
        {"event": "attempt_start", "attempt": 2, "job_id": "7", "time": t + 30.0, "process_start": t + 22.0},
        {"event": "attempt_end", "attempt": 2, "job_id": "7", "exit_code": 0, "time": t + 60.0, "step_start": 0},
    ]
    metrics = [{"step": 1, "step_time_s": 1.0, "attempt": 1, "time": t + 10.0, "loss": 1.0},
               {"event": "checkpoint", "step": 1, "seconds": 2.0, "attempt": 1, "time": t + 12.0},
               {"event": "checkpoint_interval", "step": 1, "every_steps": 42, "time": t + 12.0},
               {"step": 2, "step_time_s": 1.0, "attempt": 2, "time": t + 40.0, "loss": 1.0}]
    s = goodput.analyse(records, metrics, {"checkpoint": {"every_steps": "auto"}})
    assert s.attempts[0].end_class == "node_failure" and len(s.failures) == 1
    assert goodput.allocation_line(s) == ("inside the allocation: 1 in-job restart(s), 1 node swap(s), 0 shrink(s) "
                                          "(n2 -> n3)")
    shrunk = goodput.analyse([{**r, "event": "shrink", "replacements": [], "nodes_after": ["n1"]}
                              if r["event"] == "node_swap" else r for r in records], metrics)
    assert goodput.allocation_line(shrunk) == ("inside the allocation: 1 in-job restart(s), 0 node swap(s), 1 shrink(s) "
                                               "(n2 -> none (on 1 node(s)))")
    assert s.auto_interval and s.every_steps == 42
    blamed = goodput.analyse(records[:2] + [
        {"event": "node_blamed", "node": "n2", "crashes": 2, "job_id": "7", "time": t + 20.4}] + records[2:4] + [
        {"event": "meter_restart", "job_id": "7", "nodes": ["n1", "n3"], "time": t + 21.5}] + records[4:], metrics)
    assert goodput.allocation_line(blamed) == (
        "inside the allocation: 1 in-job restart(s), 1 node swap(s), 0 shrink(s) (n2 -> n3); n2 blamed for 2 crashes; "
        "power meter relaunched 1 time(s) on the new nodes")
    assert "auto, newest choice every 42 steps" in goodput.young_line(s)
    fixed = goodput.analyse(records, metrics, {"checkpoint": {"every_steps": 8}})
    assert not fixed.auto_interval and fixed.every_steps == 8 and "configured every 8 steps" in goodput.young_line(fixed)
