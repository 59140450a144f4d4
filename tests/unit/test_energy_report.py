"""Energy report of a synthetic ADASTRA-like campaign written in the toolkit's real formats.

30 job attempts over 3 stages (CPT on 4 nodes, annealing and IFT on 2), with requeues,
crashes, node failures, killed jobs and one node whose meter never started. Every file is
what the toolkit writes: power logs from the real NodeSampler reading pm_counters files of
known power (monitoring/meter.py's record layout), ledger records, metrics, a config.yaml
composed by saul.config, and Slurm accounting captured by monitoring.accounting through a
fake `sacct` executable (the only stand-in: there is no Slurm database in a unit test).

    python -m tests.unit.test_energy_report docs/energy-sample

regenerates the sample report shown in the README.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from monitoring import accounting, campaign, co2, export, report
from monitoring.sampler import NodeSampler
from monitoring.sources import SourceOptions, detect_sources

try:  # tests/unit is a plain directory on sys.path, or a package
    from energy_fixtures import PmCountersNode, Profile, sysfs_tmp  # noqa: F401
except ModuleNotFoundError:
    from tests.unit.energy_fixtures import PmCountersNode, Profile, sysfs_tmp  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
REPORT = [sys.executable, str(REPO / "monitoring" / "report.py")]
T0 = 1_708_416_000.0  # 2024-02-20 08:00 UTC: the paper's campaign started on Feb 20
METER_INTERVAL_S = 120.0
SLURM_STEP_LEAD_S = 1.5  # the meter step starts this much before our first sample
KILLED = ("node_failure", "killed")


@dataclass
class Attempt:
    """What the generator made happen, i.e. the ground truth the report must recover."""

    stage: str
    job: str
    restart: int
    attempt: int
    outcome: str  # stopped | done | crash | node_failure | killed
    nodes: List[str]
    watts: float  # per node
    start: float
    end: float = 0.0
    unmetered: List[str] = field(default_factory=list)
    first_step_done: float = 0.0
    last_checkpoint_time: Optional[float] = None

    @property
    def metered_j(self) -> float:
        return self.watts * (len(self.nodes) - len(self.unmetered)) * (self.end - self.start)


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%dT%H:%M:%S")  # sacct prints local time


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")


def write_meter_log(power_dir: Path, counters_root: Path, node: str, job: str, restart: int,
                    start: float, end: float, watts: float, clean: bool) -> None:
    """One meter run as monitoring.meter writes it: start, samples (real sampler over real
    pm_counters files), summary; a killed meter stops at its last tick with no summary."""
    counters = PmCountersNode(counters_root / f"{node}-{job}-{restart}", parts={},
                              rest=Profile.constant(watts))
    counters.write(0.0)
    detection = detect_sources(["pm_counters"], SourceOptions(pm_counters_root=counters.root))
    sampler = NodeSampler(detection)
    base = {"node": node, "job": job, "attempt": restart, "source": detection.label}
    lines = [{"kind": "start", "time": round(start, 3), **base, "schema": 1, "pid": 4242,
              "interval_s": METER_INTERVAL_S, "estimated": detection.estimated, **detection.describe()}]
    ticks = [k * METER_INTERVAL_S for k in range(int((end - start) // METER_INTERVAL_S) + 1)]
    if ticks[-1] < end - start:
        # A stop takes one last sample at the stop time; a killed node is taken to die right
        # after a sample, so `end` is its last record either way.
        ticks.append(end - start)
    for t in ticks:
        counters.write(t)
        fields, check = sampler.sample(t)
        lines.append({"kind": "sample", "time": round(start + t, 3), **base, **fields})
        if check is not None:
            lines.append({"kind": "check", "time": round(start + t, 3), **base, **check})
    if clean:
        lines.append({"kind": "summary", "time": round(end, 3), **base, "stop_reason": "stop file",
                      **sampler.summary_fields()})
    power_dir.mkdir(parents=True, exist_ok=True)
    with open(power_dir / f"{node}.jsonl", "a", encoding="utf-8") as out:
        out.writelines(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)


class FakeSacct:
    """A `sacct` executable first on PATH that prints what the test put in a file."""

    def __init__(self, root: Path):
        self.bin = root / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.output = root / "sacct.out"
        script = self.bin / "sacct"
        script.write_text(f"#!/bin/sh\ncat {self.output}\n")
        script.chmod(0o755)

    def capture(self, stage_dir: Path, job: str, rows: List[List[str]]) -> None:
        self.output.write_text("".join("|".join(map(str, row)) + "\n" for row in rows))
        old = os.environ["PATH"]
        os.environ["PATH"] = f"{self.bin}{os.pathsep}{old}"
        try:
            accounting.capture(stage_dir, job, settle_s=0)
        finally:
            os.environ["PATH"] = old


class StageWriter:
    """Writes one stage's attempts: meters, ledger, metrics, job_end, Slurm captures."""

    def __init__(self, runs_root: Path, run: str, stage: str, nodes: List[str], tokens_per_step: int,
                 step_time_s: float, sacct: FakeSacct, scratch: Path, site: str = "adastra"):
        from omegaconf import OmegaConf
        from saul.config.compose import compose

        self.dir = runs_root / run / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = compose([f"stage={'anneal' if stage != 'cpt' else 'cpt'}", "model=mixtral-8x7b", f"site={site}",
                       f"nodes={len(nodes)}", f"run={run}", f"runs_root={runs_root}"]).cfg
        cfg.stage = stage
        (self.dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        self.stage, self.nodes, self.tps, self.step_time = stage, nodes, tokens_per_step, step_time_s
        self.sacct, self.scratch = sacct, scratch
        self.step = 0  # the newest checkpoint's step: where the next attempt resumes
        self.attempts: List[Attempt] = []
        self.slurm_runs: Dict[str, List[List[List[str]]]] = {}

    def attempt(self, job: str, outcome: str, start: float, steps: int, watts: float,
                unmetered=(), checkpoint_every: int = 10) -> Attempt:
        restart = sum(1 for a in self.attempts if a.job == job)
        a = Attempt(self.stage, job, restart, len(self.attempts) + 1, outcome, list(self.nodes), watts, start,
                    unmetered=list(unmetered))
        ledger, metrics = self.dir / "ledger.jsonl", self.dir / "metrics.jsonl"
        _append(ledger, {"event": "attempt_start", "attempt": a.attempt, "job_id": job, "nodes": len(a.nodes),
                         "world_size": 8 * len(a.nodes), "host": a.nodes[0], "pid": 1, "time": start + 25.0})
        step_start, t = self.step, start + 90.0  # 90 s of launch, imports and checkpoint load
        for k in range(1, steps + 1):
            t += self.step_time
            step = step_start + k
            if k == 1:
                a.first_step_done = t
            if step % 5 == 0 or (k == steps and outcome in ("stopped", "done")):  # log_every=5, stop step
                _append(metrics, {"step": step, "attempt": a.attempt, "time": t, "step_time_s": self.step_time,
                                  "tokens": step * self.tps, "loss": 2.0, "tokens_per_s": self.tps / self.step_time})
            if step % checkpoint_every == 0 or (k == steps and outcome in ("stopped", "done")):
                t += 20.0  # the save
                _append(metrics, {"event": "checkpoint", "step": step, "attempt": a.attempt, "seconds": 20.0,
                                  "time": t})
                a.last_checkpoint_time, self.step = t, step
        a.end = t + (35.0 if outcome in ("stopped", "done") else 0.4 * self.step_time)
        for node in a.nodes:
            if node not in a.unmetered:
                write_meter_log(self.dir / "power", self.scratch, node, job, restart, start, a.end, watts,
                                clean=outcome not in KILLED)
        if outcome in ("stopped", "done"):
            _append(ledger, {"event": "attempt_end", "attempt": a.attempt, "job_id": job,
                             "exit_code": 0 if outcome == "done" else 75, "step_start": step_start,
                             "step_end": step_start + steps, "tokens_end": (step_start + steps) * self.tps,
                             "time": a.end - 30.0, "time_to_first_step_s": self.step_time})
        self._slurm(a)
        self.attempts.append(a)
        return a

    def _slurm(self, a: Attempt) -> None:
        """sacct --duplicates rows as of this run's teardown; captured unless the run died whole."""
        total_w = a.watts * len(a.nodes)
        nodelist = accounting_nodelist(a.nodes)
        alloc = [a.job, f"saul-{a.stage}", "RUNNING", "0:0", len(a.nodes), nodelist, _stamp(a.start - 1),
                 "Unknown", int(a.end - a.start), "", f"billing=64,cpu=512,gres/gpu={8 * len(a.nodes)},node={len(a.nodes)}"]
        meter_step = [f"{a.job}.0", "saul-meter", "COMPLETED", "0:0", len(a.nodes), nodelist, _stamp(a.start - 1),
                      _stamp(a.end), int(a.end - a.start), int(round(total_w * (a.end - a.start + SLURM_STEP_LEAD_S))),
                      f"cpu={len(a.nodes)},node={len(a.nodes)}"]
        ranks_step = [f"{a.job}.1", "saul-ranks", "COMPLETED", "0:0", len(a.nodes), nodelist, _stamp(a.start + 2),
                      _stamp(a.end - 5), int(a.end - a.start - 7), int(round(total_w * (a.end - a.start - 7))),
                      f"cpu={8 * len(a.nodes)},node={len(a.nodes)}"]
        batch = [f"{a.job}.batch", "batch", "RUNNING", "0:0", 1, a.nodes[0], _stamp(a.start - 1), "Unknown",
                 int(a.end - a.start), 0, "cpu=64,node=1"]
        runs = self.slurm_runs.setdefault(a.job, [])
        if runs:  # the previous run of this job is over now: its final state
            previous = self.attempts[-1]
            final = {"node_failure": "NODE_FAIL", "killed": "CANCELLED by 0"}.get(previous.outcome, "REQUEUED")
            runs[-1][0][2], runs[-1][0][7] = final, _stamp(previous.end + 2)
            runs[-1][0][9] = int(round(previous.watts * len(previous.nodes) * (previous.end - previous.start + 9)))
            runs[-1][1][2], runs[-1][1][7] = "COMPLETED", _stamp(previous.end + 2)
        runs.append([alloc, batch, meter_step, ranks_step])
        if a.outcome in KILLED:
            return  # no teardown ran: no job_end, no capture; the next run's capture shows it
        _append(self.dir / "ledger.jsonl", {
            "event": "job_end", "job_id": a.job, "restart_count": a.restart,
            "exit_code": {"done": 0, "stopped": 75}.get(a.outcome, 1),
            "class": "crash" if a.outcome == "crash" else a.outcome, "action": "requeue",
            "checkpoint_step": self.step, "nodelist": nodelist, "time": a.end + 1.0})
        self.sacct.capture(self.dir, a.job, [row for run in runs for row in run])


def accounting_nodelist(nodes: List[str]) -> str:
    """['nid001', 'nid002'] -> 'nid[001-002]' (contiguous lists, as Slurm prints them)."""
    prefix = nodes[0].rstrip("0123456789")
    numbers = [n[len(prefix):] for n in nodes]
    return f"{prefix}[{numbers[0]}-{numbers[-1]}]" if len(nodes) > 1 else nodes[0]


# --- the campaign ------------------------------------------------------------------------------
PLAN = {  # stage -> (nodes, tokens per step, step time, watts range, [(job, outcome), ...])
    "cpt": (["nid001", "nid002", "nid003", "nid004"], 4 * 32 * 8192, 60.0, (1500, 2400), [
        ("1001", "stopped"), ("1001", "crash"), ("1001", "stopped"), ("1001", "node_failure"),
        ("1001", "stopped"), ("1002", "crash"), ("1002", "stopped"), ("1002", "stopped"),
        ("1002", "killed"), ("1003", "stopped"), ("1003", "crash"), ("1003", "done")]),
    "anneal": (["nid010", "nid011"], 2 * 32 * 8192, 45.0, (900, 1800), [
        ("2001", "stopped"), ("2001", "node_failure"), ("2001", "stopped"), ("2001", "crash"),
        ("2001", "stopped"), ("2002", "stopped"), ("2002", "crash"), ("2002", "stopped"), ("2002", "done")]),
    "ift": (["nid020", "nid021"], 2 * 16 * 8192, 30.0, (600, 1400), [
        ("3001", "stopped"), ("3001", "stopped"), ("3001", "crash"), ("3001", "stopped"), ("3001", "killed"),
        ("3002", "stopped"), ("3002", "node_failure"), ("3002", "stopped"), ("3002", "done")]),
}
UNMETERED = ("cpt", 7, ["nid004"])  # attempt 7 of CPT: nid004's meter never started


def build_campaign(root: Path, scratch: Path) -> Dict[str, StageWriter]:
    rng = random.Random(20240220)
    sacct = FakeSacct(root / "fake-sacct")
    runs_root = root / "runs"
    writers, t = {}, T0
    for stage, (nodes, tps, step_time, (low, high), plan) in PLAN.items():
        writer = writers[stage] = StageWriter(runs_root, "saul54b", stage, nodes, tps, step_time, sacct, scratch)
        for i, (job, outcome) in enumerate(plan, 1):
            unmetered = UNMETERED[2] if (stage, i) == UNMETERED[:2] else ()
            steps = rng.randint(12, 30)
            a = writer.attempt(job, outcome, t, steps, float(rng.randint(low, high)), unmetered)
            t = a.end + rng.randint(30, 600)  # queue wait, or the requeue delay
    return writers


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None) as scratch:
        writers = build_campaign(root, Path(scratch))
    export_file = root / "sacct-export.txt"
    export_file.write_text(SACCT_EXPORT)
    return root, writers, export_file


SACCT_EXPORT = """JobIDRaw|JobName|State|ExitCode|NNodes|NodeList|Start|End|ElapsedRaw|ConsumedEnergyRaw|AllocTRES
9001|eval-legalbench|COMPLETED|0:0|1|nid100|2024-05-14T10:00:00|2024-05-14T12:00:00|7200|9000000|billing=64,cpu=64,gres/gpu=8,node=1
9001.batch|batch|COMPLETED|0:0|1|nid100|2024-05-14T10:00:00|2024-05-14T12:00:00|7200|9000000|cpu=64,node=1
9002|dpo|NODE_FAIL|1:0|8|nid[200-207]|2024-05-10T10:00:00|2024-05-10T11:00:00|3600|50000000|billing=512,gres/gpu=64,node=8
9002|dpo|COMPLETED|0:0|8|nid[200-207]|2024-05-10T11:05:00|2024-05-10T13:05:00|7200|100000000|billing=512,gres/gpu=64,node=8
1001|saul-cpt|REQUEUED|0:0|4|nid[001-004]|2024-02-20T08:00:00|2024-02-20T08:30:00|1800|123|billing=64,node=4
"""


def collected(root: Path) -> campaign.Campaign:
    result = campaign.collect_campaign(root / "runs", now=T0 + 30 * 86400)
    return result


# --- the tests ---------------------------------------------------------------------------------
def test_every_attempt_is_a_row_with_its_metered_energy_and_end(synthetic):
    root, writers, _ = synthetic
    rows = collected(root).rows
    truth = [a for w in writers.values() for a in w.attempts]
    assert len(rows) == len(truth) == 30
    by_key = {(r.stage, r.job_id, r.restart): r for r in rows}
    for a in truth:
        row = by_key[(a.stage, a.job, a.restart)]
        assert row.attempt == a.attempt and row.nodes == len(a.nodes) and row.node_names == a.nodes
        assert row.failure_class == a.outcome
        assert row.metered_energy_j == pytest.approx(a.metered_j, rel=1e-4)
        assert row.duration_s == pytest.approx(a.end - a.start, abs=1e-3)
        assert row.mean_power_per_node_w == pytest.approx(a.watts, rel=1e-4)
        assert row.source == "pm_counters"
        assert row.gpu_hours == pytest.approx(len(a.nodes) * 8 * (a.end - a.start) / 3600, rel=1e-6)
        assert row.node_hours == pytest.approx(len(a.nodes) * (a.end - a.start) / 3600, rel=1e-6)
    classes = [r.failure_class for r in rows]
    assert classes.count("node_failure") == 3 and classes.count("killed") == 2 and classes.count("crash") == 6


def test_a_node_without_a_meter_is_reported_and_extrapolated(synthetic):
    root, writers, _ = synthetic
    stage, number, missing = UNMETERED
    a = writers[stage].attempts[number - 1]
    rows = collected(root).rows
    row = next(r for r in rows if r.stage == stage and r.attempt == number)
    assert row.unmetered_nodes == missing and row.estimated
    assert "no meter on nid004" in row.note
    assert row.energy_j == pytest.approx(a.watts * 4 * (a.end - a.start), rel=1e-4)
    assert row.slurm_rel_diff is None  # Slurm's step covers 4 nodes, ours 3: not like with like
    others = [r for r in rows if r is not row]
    assert not any(r.unmetered_nodes or r.estimated for r in others)


def test_stage_totals_add_up_to_the_campaign_total_and_to_the_truth(synthetic):
    root, writers, _ = synthetic
    rows = collected(root).rows
    total = report.totals("all", rows)
    stages = report.grouped(rows, lambda r: r.stage)
    assert sorted(t.label for t in stages) == ["anneal", "cpt", "ift"]
    assert sum(t.kwh for t in stages) == pytest.approx(total.kwh, rel=1e-12)
    assert sum(t.gpu_hours for t in stages) == pytest.approx(total.gpu_hours, rel=1e-12)
    assert sum(t.lost_kwh for t in stages) == pytest.approx(total.lost_kwh, rel=1e-12)
    truth_j = sum(a.watts * len(a.nodes) * (a.end - a.start) for w in writers.values() for a in w.attempts)
    assert total.kwh == pytest.approx(truth_j / 3.6e6, rel=1e-4)
    assert 0 < total.lost_kwh < total.kwh


def test_tokens_kept_sum_to_the_final_step_of_each_stage(synthetic):
    root, writers, _ = synthetic
    rows = collected(root).rows
    for stage, writer in writers.items():
        mine = [r for r in rows if r.stage == stage]
        assert sum(r.tokens_kept for r in mine) == writer.step * writer.tps  # redone work is not kept
        assert all(r.tokens >= r.tokens_kept for r in mine)
    assert sum(r.tokens for r in rows) > sum(r.tokens_kept for r in rows)  # some work was redone


def test_co2_is_kwh_times_codecarbon_intensity_for_france(synthetic):
    from codecarbon.input import DataSource

    root, _, _ = synthetic
    rows = collected(root).rows
    total = report.totals("all", rows)
    france_g_per_kwh = DataSource().get_global_energy_mix_data()["FRA"]["carbon_intensity"]
    assert {r.country for r in rows} == {"FRA"}
    assert total.co2_kg == pytest.approx(total.kwh * france_g_per_kwh / 1000.0, rel=1e-9)
    assert co2.carbon_intensity("fra").g_per_kwh == pytest.approx(france_g_per_kwh)


def test_an_unknown_country_is_an_error_not_the_world_average():
    with pytest.raises(co2.UnknownCountry, match="'ATL' is not in codecarbon"):
        co2.co2_kg(1.0, "ATL")


def test_our_meter_against_the_captured_slurm_meter_step(synthetic):
    root, writers, _ = synthetic
    rows = collected(root).rows
    truth = {(a.stage, a.job, a.restart): a for w in writers.values() for a in w.attempts}
    compared = [r for r in rows if r.slurm_rel_diff is not None]
    assert len(compared) == 27  # not the 2 killed (never captured) nor the one with an unmetered node
    for row in compared:
        a = truth[(row.stage, row.job_id, row.restart)]
        assert row.slurm_scope == f"meter step {a.job}.0"
        lead = SLURM_STEP_LEAD_S / (a.end - a.start + SLURM_STEP_LEAD_S)
        assert row.slurm_rel_diff == pytest.approx(-lead, abs=2e-4)
    killed = [r for r in rows if r.failure_class == "node_failure"]
    assert all(r.slurm_state == "NODE_FAIL" for r in killed)


def small_case(root: Path, scratch: Path) -> StageWriter:
    """Two attempts on 2 nodes: a crash 200 s after its last checkpoint, then a good one."""
    writer = StageWriter(root / "runs", "small", "cpt", ["nid001", "nid002"], 1000, 10.0,
                         FakeSacct(root / "fake-sacct"), scratch)
    writer.attempt("77", "crash", T0, 29, 800.0, checkpoint_every=10)  # checkpoints at 10, 20; dies in 29..30
    writer.attempt("77", "done", T0 + 1000.0, 15, 900.0)
    return writer


def test_lost_energy_matches_a_hand_computation(tmp_path, sysfs_tmp):
    writer = small_case(tmp_path, sysfs_tmp)
    crash, good = writer.attempts
    rows = campaign.collect_run(tmp_path / "runs" / "small").rows
    # By hand: the crash began at T0; its first step ended at T0+100; steps every 10 s plus a 20 s
    # save at steps 10 and 20 -> last checkpoint written at T0+100+19*10+2*20 = T0+330; steps 21..29
    # ran to T0+420 and it died 4 s later (T0+424). Redone: 424-330 = 94 s at 2 x 800 W.
    # Recovery: the next attempt started at T0+1000 and finished its first step at T0+1100: 100 s
    # at 2 x 900 W.
    assert crash.last_checkpoint_time == T0 + 330.0 and crash.end == T0 + 424.0
    assert good.first_step_done == T0 + 1100.0
    expected_j = 94.0 * 2 * 800.0 + 100.0 * 2 * 900.0
    assert rows[0].lost_s == pytest.approx(94.0, abs=1e-3)
    assert rows[0].recovery_s == pytest.approx(100.0, abs=1e-3)
    assert rows[0].lost_energy_j == pytest.approx(expected_j, rel=1e-4)
    assert rows[1].lost_energy_j == 0.0
    assert rows[0].tokens_kept == 20 * 1000 and rows[0].tokens == 25 * 1000  # step 25: last logged
    assert rows[1].tokens_kept == 15 * 1000


def test_a_second_failure_does_not_count_the_recovery_twice(tmp_path, sysfs_tmp):
    writer = StageWriter(tmp_path / "runs", "twice", "cpt", ["nid001"], 1000, 10.0,
                         FakeSacct(tmp_path / "fake-sacct"), sysfs_tmp)
    writer.attempt("5", "crash", T0, 25, 1000.0)  # checkpoint at step 10, 20
    writer.attempt("5", "crash", T0 + 1000.0, 5, 1000.0)  # steps 21..25, no checkpoint of its own
    writer.attempt("5", "done", T0 + 2000.0, 10, 1000.0)
    first, second, _ = campaign.collect_run(tmp_path / "runs" / "twice").rows
    # The second attempt's first 100 s (launch to first step) are the first failure's recovery;
    # its own loss runs from there to its end, so the two never overlap.
    assert first.recovery_s == pytest.approx(100.0)
    assert second.lost_s == pytest.approx(second.end - (second.start + 100.0), abs=1e-3)
    assert first.lost_s + first.recovery_s + second.lost_s <= (first.end - first.start) + second.duration_s


def test_report_renders_markdown_figures_and_exports(synthetic):
    root, _, export_file = synthetic
    out = root / "report-all"
    result = subprocess.run([*REPORT, f"runs_root={root / 'runs'}", f"sacct={export_file}", f"out={out}",
                             "format=both"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("energy.md", "fig6_mean_power_per_node.png", "energy_per_stage.png", "meter_vs_slurm.png"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "fig6_mean_power_per_node.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "energy.md").read_text()
    for heading in ("## Summary", "## Per stage", "## Per run", "## Energy lost to failures",
                    "## Our meter vs Slurm", "## Per job attempt"):
        assert heading in md
    assert "no meter on nid004" in md and "eval-legalbench" in md
    assert "total" in result.stdout and "cpt" in result.stdout and "energy.md" in result.stdout
    rows = export.read(out / "energy_jobs.parquet")
    assert len(rows) == 33 and sum(r.origin == "sacct" for r in rows) == 3


def test_sacct_export_rows_are_added_and_metered_jobs_not_counted_twice(synthetic):
    root, _, export_file = synthetic
    result = collected(root)
    added = campaign.rows_from_sacct(accounting.read_export(export_file), result, "FRA")
    assert added == 3
    external = [r for r in result.rows if r.origin == "sacct"]
    assert [(r.job_id, r.restart, r.failure_class) for r in sorted(external, key=lambda r: r.start)] == [
        ("9002", 0, "node_failure"), ("9002", 1, "done"), ("9001", 0, "done")]
    dpo = next(r for r in external if r.job_id == "9002" and r.restart == 1)
    assert dpo.energy_j == 100_000_000 and dpo.nodes == 8 and dpo.gpu_hours == pytest.approx(64 * 2.0)
    assert dpo.mean_power_per_node_w == pytest.approx(100_000_000 / (8 * 7200))
    assert sum(1 for r in result.rows if r.job_id == "1001") == 5  # ours, not the export's row


def test_csv_and_parquet_round_trip(synthetic, tmp_path):
    root, _, _ = synthetic
    rows = collected(root).rows
    written = export.write(rows, tmp_path, "both")
    assert [p.name for p in written] == ["energy_jobs.csv", "energy_jobs.parquet"]
    for path in written:
        back = export.read(path)
        assert [r.record() for r in back] == [r.record() for r in rows], path.name


def test_export_refuses_an_unknown_format_and_a_foreign_file(tmp_path):
    with pytest.raises(export.ExportError, match="format='xlsx'"):
        export.write([], tmp_path, "xlsx")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(export.ExportError, match="not an energy_jobs export"):
        export.read(tmp_path / "other.csv")


def test_one_run_report_goes_to_its_reports_folder(synthetic):
    root, _, _ = synthetic
    assert report.main([f"runs_root={root / 'runs'}", "run=saul54b"]) == 0
    md = (root / "runs" / "saul54b" / "reports" / "energy.md").read_text()
    assert md.startswith("# Energy report: run saul54b")


@pytest.mark.parametrize("args, message", [
    (["run=nope"], "unknown run 'nope' under"),
    (["rnu=saul54b"], "unknown key 'rnu' (did you mean run?)"),
    (["format=xlsx"], "format=xlsx: choose one of csv, parquet, both"),
    (["sacct=/no/such/file"], "sacct=/no/such/file: /no/such/file: cannot read"),
    (["country=ATL"], "country=ATL: country ISO code 'ATL' is not in codecarbon"),
    (["runs_root=/no/such/dir"], "runs_root=/no/such/dir: no such directory"),
    (["verbose"], "'verbose' is not key=value"),
])
def test_bad_input_is_one_line_and_exit_2(synthetic, args, message, capsys):
    root, _, _ = synthetic
    argv = args if any(a.startswith("runs_root=") for a in args) else [f"runs_root={root / 'runs'}", *args]
    assert report.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_bad_sacct_export_is_bad_input(tmp_path, capsys):
    bad = tmp_path / "export.txt"
    bad.write_text("this is not sacct output\n")
    assert report.main([f"sacct={bad}", f"runs_root={tmp_path}"]) == 2
    assert "not a sacct header" in capsys.readouterr().err


def test_no_power_data_is_said_in_the_report_with_exit_0(tmp_path):
    stage = tmp_path / "runs" / "dark" / "cpt"
    _append(stage / "ledger.jsonl", {"event": "attempt_start", "attempt": 1, "job_id": "5", "nodes": 1,
                                     "time": T0})
    _append(stage / "ledger.jsonl", {"event": "attempt_end", "attempt": 1, "job_id": "5", "exit_code": 0,
                                     "step_start": 0, "step_end": 10, "tokens_end": 100, "time": T0 + 60})
    result = subprocess.run([*REPORT, f"runs_root={tmp_path / 'runs'}", "run=dark"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    md = (stage.parent / "reports" / "energy.md").read_text()
    assert "**No power data**" in md and "1 attempt(s) found" in md
    assert "no power data" in result.stdout
    assert not (stage.parent / "reports" / "fig6_mean_power_per_node.png").exists()


def test_a_site_country_codecarbon_does_not_know_gets_no_co2_and_a_note(tmp_path, sysfs_tmp):
    writer = small_case(tmp_path, sysfs_tmp)
    config = writer.dir / "config.yaml"
    config.write_text(config.read_text().replace("country_iso_code: FRA", "country_iso_code: XXA"))
    result, out = report.collect({"runs_root": str(tmp_path / "runs"), "run": "small"})
    assert out == tmp_path / "runs" / "small" / "reports"
    assert any("'XXA' is unknown to codecarbon" in note for note in result.notes)
    assert report.totals("all", result.rows).co2_kg is None


def test_an_unwritable_output_folder_is_one_line_and_exit_2(tmp_path, sysfs_tmp, capsys):
    small_case(tmp_path, sysfs_tmp)
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")
    assert report.main([f"runs_root={tmp_path / 'runs'}", f"out={blocker}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the report to {blocker}") and err.count("\n") == 1


def test_damaged_files_are_noted_not_fatal(tmp_path, sysfs_tmp):
    writer = small_case(tmp_path, sysfs_tmp)
    log = writer.dir / "power" / "nid001.jsonl"
    with open(log, "a") as out:
        out.write('{"kind":"sample","time":17')  # a meter SIGKILLed mid-line
    (writer.dir / "accounting" / "77.json").write_text("{ not json")
    result = campaign.collect_run(tmp_path / "runs" / "small")
    assert any("truncated last line" in note for note in result.notes)
    assert all(r.slurm_energy_j is None for r in result.rows)  # the capture could not be read
    assert result.rows[0].metered_energy_j == pytest.approx(writer.attempts[0].metered_j, rel=1e-4)


def test_an_open_attempt_with_fresh_meters_is_running_not_lost(tmp_path, sysfs_tmp):
    writer = StageWriter(tmp_path / "runs", "live", "cpt", ["nid001"], 1000, 10.0,
                         FakeSacct(tmp_path / "fake-sacct"), sysfs_tmp)
    a = writer.attempt("9", "killed", T0, 12, 1000.0)  # no end record yet, meters without summary
    running = campaign.collect_run(tmp_path / "runs" / "live", now=a.end + 60).rows[0]
    assert running.failure_class == "running" and running.lost_energy_j == 0
    later = campaign.collect_run(tmp_path / "runs" / "live", now=a.end + 3600).rows[0]
    assert later.failure_class == "killed" and later.lost_energy_j > 0


def generate_sample(out: Path) -> None:
    """The README's sample: this campaign's report, with relative paths in it."""
    out = out.resolve()
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as scratch:
        build_campaign(Path(tmp), Path(scratch))
        (Path(tmp) / "sacct-export.txt").write_text(SACCT_EXPORT)
        os.chdir(tmp)
        code = report.main(["runs_root=runs", "sacct=sacct-export.txt", f"out={out}", "format=csv", "country=FRA", "kind=energy"])
    raise SystemExit(code)


if __name__ == "__main__":
    generate_sample(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/energy-sample"))
