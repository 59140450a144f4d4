"""One row per job attempt of a run or of a whole campaign, from the run directory alone.

A job attempt is one run of one Slurm job on its nodes (a requeued job has several: restart
0, 1, ...) or one local launch. Everything comes from files the toolkit wrote (sites purge
their accounting database; nothing lives only in Slurm):

    power/<node>.jsonl       our meters: energy and duration per node (monitoring/power_log.py)
    ledger.jsonl             attempt_start/attempt_end (ranks), job_end (the requeue path)
    metrics.jsonl            step records (tokens, step_time_s) and checkpoint events
    accounting/<job>.json    Slurm's view, captured at teardown (monitoring/accounting.py)
    config.yaml              site.gpus_per_node, site.country_iso_code

Keys that tie them together: the meter's `attempt` is SLURM_RESTART_COUNT on Slurm (the
ledger attempt number on the local site), job_end carries `restart_count`, and sacct
--duplicates lists the runs of a job in restart order. Ledger attempts (whose number counts
every attempt of the stage) are matched to job attempts by job id and time.

Energy lost to failures: an attempt that did not end in checkpoint-then-stop (or done) makes
the work after its last checkpoint be redone, and the next attempt spends its start-up
(launch, imports, checkpoint load, first step) recovering. Lost = wall time from that
checkpoint (or the attempt's start) to its end x the attempt's mean power over all its nodes,
plus the next attempt's time to its first step x that attempt's mean power. The recovery
part is charged once: a next attempt that fails too counts its own loss from the end of
that recovery.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from monitoring import accounting
from monitoring.power_log import MeterRun, load_power_dir
from saul.resilience import ledger
from saul.resilience.after_job import classify

# Attempts whose work after the last checkpoint is redone by the next one.
LOSSY_CLASSES = ("crash", "hang", "node_failure", "killed", "timeout", "cancelled", "user_error")
RUNNING_GRACE_S = 600.0  # an open attempt whose meters wrote this recently is still running
_MATCH_SLACK_S = 60.0  # clock skew between the batch node, the rank-0 node and the meters
_NOT_STAGES = ("data", "reports")
_SLURM_CLASS = {"COMPLETED": "done", "NODE_FAIL": "node_failure", "TIMEOUT": "timeout",
                "CANCELLED": "cancelled", "FAILED": "crash", "OUT_OF_MEMORY": "crash",
                "BOOT_FAIL": "crash", "DEADLINE": "timeout", "PREEMPTED": "killed",
                "REQUEUED": "requeued", "RUNNING": "running"}


@dataclass
class AttemptRow:
    """One job attempt: what ran where, for how long, with how much energy, and how it ended."""

    run: str
    stage: str
    job_id: str
    restart: int  # Slurm restart count (local site: ledger attempt number)
    attempt: Optional[int] = None  # ledger attempt number; None when no rank ever started
    origin: str = "toolkit"  # toolkit | sacct (a job known only from a sacct export)
    site: str = ""
    country: str = ""
    nodes: int = 0
    node_names: List[str] = field(default_factory=list)
    unmetered_nodes: List[str] = field(default_factory=list)  # names, or "?" when unknown
    start: Optional[float] = None  # Unix seconds
    end: Optional[float] = None
    duration_s: float = 0.0
    energy_j: Optional[float] = None  # all nodes; unmetered ones extrapolated (then estimated)
    metered_energy_j: Optional[float] = None  # the nodes that had a working meter
    mean_power_per_node_w: Optional[float] = None
    node_hours: float = 0.0
    gpu_hours: float = 0.0
    source: str = ""  # pm_counters | amdsmi+rapl+estimate | ... | slurm
    estimated: bool = False
    slurm_energy_j: Optional[float] = None
    slurm_scope: str = ""  # which Slurm row: "meter step 12.0" or "allocation"
    slurm_rel_diff: Optional[float] = None  # (ours - Slurm) / Slurm, like with like only
    tokens: Optional[int] = None  # trained in this attempt
    tokens_kept: Optional[int] = None  # of those, the ones a checkpoint kept
    failure_class: str = ""  # done | stopped | crash | hang | node_failure | killed | timeout | ...
    exit_code: Optional[int] = None
    slurm_state: str = ""
    lost_s: float = 0.0  # wall time of work redone because of this failure
    recovery_s: float = 0.0  # the next attempt's time to its first step
    lost_energy_j: float = 0.0
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.failure_class in LOSSY_CLASSES

    def record(self) -> dict:
        """Flat, export-friendly: lists become comma-joined strings."""
        out = asdict(self)
        out["node_names"] = ",".join(self.node_names)
        out["unmetered_nodes"] = ",".join(self.unmetered_nodes)
        return out


@dataclass
class Campaign:
    """The attempts of a stage, a run or a whole campaign, in start order, with reading notes."""

    rows: List[AttemptRow]
    notes: List[str]
    scope: str


@dataclass
class _Attempt:
    """Everything known about one (job, restart) before it becomes a row."""

    job_id: str
    restart: int
    meters: Dict[str, List[MeterRun]] = field(default_factory=dict)
    job_end: Optional[dict] = None
    slurm: Optional[accounting.SlurmRun] = None
    start_record: Optional[dict] = None
    end_record: Optional[dict] = None
    step_start: int = 0  # the step it resumed from (set with the tokens)

    def window(self) -> Tuple[Optional[float], Optional[float]]:
        """(start, end): the meters' span when any node was metered (the figure the energy is
        for), else Slurm's allocation times, else the ledger's."""
        runs = [r for node_runs in self.meters.values() for r in node_runs]
        alloc = self.slurm.allocation if self.slurm is not None else {}
        ledger_ends = [r.get("time") for r in (self.end_record, self.job_end) if r]
        starts = _known([r.start_time for r in runs]) or _known([accounting.parse_time(alloc.get("Start"))]) \
            or _known([(self.start_record or {}).get("time")])
        ends = _known([r.end_time for r in runs]) or _known([accounting.parse_time(alloc.get("End"))]) \
            or _known(ledger_ends)
        return (min(starts) if starts else None, max(ends) if ends else None)


def _known(values: Sequence[Optional[float]]) -> List[float]:
    return [v for v in values if v is not None]


# --- reading a stage -------------------------------------------------------------------------
def read_site(stage_dir: Path) -> dict:
    """{'name', 'gpus_per_node', 'country_iso_code'} from config.yaml; defaults when absent."""
    site = {}
    try:
        site = (yaml.safe_load((stage_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("site") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    return {"name": str(site.get("name", "")), "gpus_per_node": int(site.get("gpus_per_node") or 0),
            "country_iso_code": str(site.get("country_iso_code") or "")}


def is_stage_dir(path: Path) -> bool:
    return path.is_dir() and path.name not in _NOT_STAGES and any(
        (path / name).exists() for name in ("config.yaml", "ledger.jsonl", "power"))


def _gather(stage_dir: Path, notes: List[str]) -> Dict[Tuple[str, int], _Attempt]:
    attempts: Dict[Tuple[str, int], _Attempt] = {}

    def at(job_id, restart) -> _Attempt:
        key = (str(job_id), int(restart))
        return attempts.setdefault(key, _Attempt(*key))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        power = load_power_dir(stage_dir / "power") if (stage_dir / "power").is_dir() else {}
    notes.extend(f"{stage_dir.name}: {w.message}" for w in caught)
    for (node, job), entry in power.items():
        for run in entry.runs:
            at(job, run.attempt).meters.setdefault(node, []).append(run)
    records = ledger.read(stage_dir / "ledger.jsonl")
    for record in records:
        if record.get("event") == "job_end" and record.get("job_id"):
            at(record["job_id"], record.get("restart_count", 0)).job_end = record
    for job_id, capture in accounting.load_captures(stage_dir).items():
        for restart, slurm_run in enumerate(accounting.runs_of(capture["rows"], job_id)):
            at(job_id, restart).slurm = slurm_run
    _attach_ledger_attempts(attempts, records)
    return attempts


def _attach_ledger_attempts(attempts: Dict[Tuple[str, int], _Attempt], records: List[dict]) -> None:
    """Pair attempt_start/attempt_end by attempt number and give each pair to its job attempt:
    the one of the same job whose window holds the start (nearest within the slack), else the
    first one with no known start, else a new one (no meter, no capture, no job_end)."""
    ends = {r.get("attempt"): r for r in records if r.get("event") == "attempt_end"}
    windows = {key: a.window() for key, a in attempts.items()}
    for start in (r for r in records if r.get("event") == "attempt_start"):
        job_id, when = str(start.get("job_id")), start.get("time") or 0.0
        free = sorted((k for k in attempts if k[0] == job_id and attempts[k].start_record is None),
                      key=lambda k: k[1])
        spans = {k: windows.get(k, (None, None)) for k in free}
        near = sorted((_distance(spans[k], when), k[1], k) for k in free if spans[k][0] is not None)
        near = [k for d, _, k in near if d <= _MATCH_SLACK_S]
        # No start known (no meter, no capture): a job_end that came after this start, or nothing.
        unplaced = [k for k in free if spans[k][0] is None
                    and (spans[k][1] is None or spans[k][1] >= when - _MATCH_SLACK_S)]
        if near or unplaced:
            key = (near or unplaced)[0]
        else:
            key = (job_id, 1 + max([k[1] for k in attempts if k[0] == job_id], default=-1))
            attempts[key] = _Attempt(*key)
        attempts[key].start_record = start
        attempts[key].end_record = ends.get(start.get("attempt"))


def _distance(window: Tuple[Optional[float], Optional[float]], when: float) -> float:
    """0 inside the window, else how far outside (an open end reaches to infinity)."""
    start, end = window
    end = float("inf") if end is None else end
    return max(0.0, start - when, when - end)


# --- one row ---------------------------------------------------------------------------------
def _classify(a: _Attempt, is_last: bool, now: float) -> Tuple[str, Optional[int]]:
    state = a.slurm.state if a.slurm else ""
    code = (a.job_end or a.end_record or {}).get("exit_code")
    if state == "NODE_FAIL":
        return "node_failure", code
    if a.job_end is not None:
        cls = str(a.job_end.get("class", "crash"))
        return ("timeout" if cls == "crash" and state == "TIMEOUT" else cls), code
    if a.end_record is not None:
        return classify(code), code
    # A capture taken at teardown says RUNNING for its own run: that is no verdict.
    if state in _SLURM_CLASS and state not in ("REQUEUED", "COMPLETED", "RUNNING"):
        return _SLURM_CLASS[state], code
    runs = [r for node_runs in a.meters.values() for r in node_runs]
    last_seen = max((r.end_time or 0.0 for r in runs), default=0.0)
    if is_last and runs and not any(r.complete for r in runs) and now - last_seen < RUNNING_GRACE_S:
        return "running", code
    return "killed", code  # no end record anywhere: SIGKILL, node loss, scancel


def _energy(a: _Attempt, row: AttemptRow, expected: List[str]) -> None:
    per_node = {}  # node -> (energy J, duration s) over that node's meter runs
    broken = []
    for node, runs in sorted(a.meters.items()):
        energies = [r.energy_j for r in runs if r.energy_j is not None]
        if not energies:
            broken.append(node)  # the meter ran but found no energy source
            continue
        per_node[node] = (sum(energies), sum(r.duration_s for r in runs))
    row.source = "/".join(dict.fromkeys(r.source for node in per_node for r in a.meters[node]))
    row.estimated = any(r.estimated for node in per_node for r in a.meters[node])
    missing = [n for n in dict.fromkeys([*expected, *sorted(a.meters)]) if n not in per_node]
    unknown = max(0, row.nodes - len(per_node) - len(missing))
    row.unmetered_nodes = missing + ["?"] * unknown
    if per_node:
        row.duration_s = max(d for _, d in per_node.values())
        row.metered_energy_j = sum(e for e, _ in per_node.values())
        node_seconds = sum(d for _, d in per_node.values())
        row.mean_power_per_node_w = row.metered_energy_j / node_seconds if node_seconds > 0 else None
        row.energy_j = row.metered_energy_j
        if row.unmetered_nodes and row.mean_power_per_node_w is not None:
            row.energy_j += row.mean_power_per_node_w * row.duration_s * len(row.unmetered_nodes)
            row.estimated = True
    if broken:
        _add_note(row, "meter without an energy source on " + ",".join(broken))
    if row.unmetered_nodes:
        names = ",".join(n for n in missing) or f"{unknown} node(s)"
        if unknown and missing:
            names += f" and {unknown} unnamed node(s)"
        how = "extrapolated from the metered nodes' mean power" if per_node else "not measured"
        _add_note(row, f"no meter on {names} ({how})")


def _slurm_energy(a: _Attempt, row: AttemptRow) -> None:
    """Slurm's figure for the attempt, and how far ours is from it when both cover the same thing.

    The meter step runs the same processes as our meters, on the same nodes: only its start
    differs (srun launch and Python start-up before our first sample). The allocation's
    ConsumedEnergy is NOT comparable: slurmctld sums the energy of every step into it, and our
    meter step overlaps the ranks' step (seen on the test cluster: allocation = meter step +
    ranks step, about twice the node energy). It only stands in when no meter ran at all.
    """
    if a.slurm is None:
        return
    row.slurm_state = a.slurm.state
    step = a.slurm.meter_step()
    value = accounting.parse_int(step.get("ConsumedEnergyRaw")) if step else None
    if step is not None and value and accounting.parse_time(step.get("End")) is not None:
        row.slurm_energy_j, row.slurm_scope = float(value), f"meter step {step['JobIDRaw']}"
        if row.metered_energy_j is not None and not row.unmetered_nodes:
            row.slurm_rel_diff = (row.metered_energy_j - value) / value
        return
    value = accounting.parse_int(a.slurm.allocation.get("ConsumedEnergyRaw"))
    if value and a.slurm.ended:
        row.slurm_energy_j, row.slurm_scope = float(value), "allocation (sum of its steps)"
        if row.energy_j is None:
            row.energy_j, row.source, row.estimated = row.slurm_energy_j, "slurm", False
            row.mean_power_per_node_w = _per_node_power(row)
            _add_note(row, "energy from Slurm's allocation figure (overlapping steps count twice)")


def _per_node_power(row: AttemptRow) -> Optional[float]:
    if row.energy_j is None or row.nodes <= 0 or row.duration_s <= 0:
        return None
    return row.energy_j / (row.nodes * row.duration_s)


def _add_note(row: AttemptRow, text: str) -> None:
    row.note = f"{row.note}; {text}" if row.note else text


def _build_row(a: _Attempt, run: str, stage: str, site: dict, is_last: bool, now: float) -> AttemptRow:
    row = AttemptRow(run=run, stage=stage, job_id=a.job_id, restart=a.restart, site=site["name"],
                     country=site["country_iso_code"])
    if a.start_record is not None:
        row.attempt = a.start_record.get("attempt")
    row.start, row.end = a.window()
    expected = []
    if a.job_end is not None:
        expected += accounting.expand_hostlist(a.job_end.get("nodelist", ""))
    if a.slurm is not None:
        expected += accounting.expand_hostlist(a.slurm.allocation.get("NodeList", ""))
    expected = list(dict.fromkeys(expected))
    counts = [len(set(expected) | set(a.meters))]
    if a.start_record and a.start_record.get("nodes"):
        counts.append(int(a.start_record["nodes"]))
    if a.slurm is not None:
        counts.append(accounting.parse_int(a.slurm.allocation.get("NNodes")) or 0)
    row.nodes = max(counts)
    row.node_names = sorted(set(expected) | set(a.meters))
    if row.start is not None and row.end is not None:
        row.duration_s = max(0.0, row.end - row.start)
    _energy(a, row, expected)
    _slurm_energy(a, row)
    row.failure_class, row.exit_code = _classify(a, is_last, now)
    row.node_hours = row.nodes * row.duration_s / 3600.0
    row.gpu_hours = row.node_hours * site["gpus_per_node"]
    return row


# --- tokens and lost energy --------------------------------------------------------------------
def _tokens(rows: List[AttemptRow], attempts: List[_Attempt], metrics: List[dict]) -> None:
    """Tokens trained per attempt: attempt_end's tokens_end minus the tokens at the step it
    resumed from; without an attempt_end (killed), up to its last logged step."""
    steps = [m for m in metrics if "step" in m and "tokens" in m and m.get("event") is None]
    checkpoints = [m for m in metrics if m.get("event") == "checkpoint"]
    for row, a in zip(rows, attempts):
        if row.attempt is None:
            continue
        end = a.end_record or {}
        resumed = max((c["step"] for c in checkpoints if (c.get("attempt") or 0) < row.attempt), default=0)
        step_start = a.step_start = end.get("step_start", resumed)
        mine = [m for m in steps if m.get("attempt") == row.attempt]
        per_step = _tokens_per_step(mine) or _tokens_per_step(steps)
        if per_step is None and end.get("step_end"):
            per_step = end.get("tokens_end", 0) / end["step_end"]
        if per_step is None:
            continue
        step_end = end.get("step_end", max((m["step"] for m in mine), default=step_start))
        if "tokens_end" in end:
            row.tokens = int(end["tokens_end"] - round(step_start * per_step))
        else:
            row.tokens = int(round((step_end - step_start) * per_step))
        saved = [c["step"] for c in checkpoints if c.get("attempt") == row.attempt]
        kept = step_end if row.failure_class in ("done", "stopped") else max(saved, default=step_start)
        row.tokens_kept = int(round(max(0, kept - step_start) * per_step))


def _tokens_per_step(steps: List[dict]) -> Optional[float]:
    """The global batch in tokens (constant within a stage: the batch is a frozen key)."""
    for m in steps:
        if m.get("step"):
            return m["tokens"] / m["step"]
    return None


def _first_step_done(row: AttemptRow, step_start: int, metrics: List[dict]) -> Optional[float]:
    """When the attempt's first step finished: its first logged step, minus the unlogged ones."""
    mine = [m for m in metrics if m.get("attempt") == row.attempt and "step_time_s" in m]
    if row.attempt is None or not mine:
        return None
    first = min(mine, key=lambda m: m["step"])
    done = first["time"] - first["step_time_s"] * max(0, first["step"] - step_start - 1)
    return max(done, row.start) if row.start is not None else done


def _lost_energy(rows: List[AttemptRow], attempts: List[_Attempt], metrics: List[dict]) -> None:
    checkpoint_times: Dict[int, float] = {}
    for m in metrics:
        if m.get("event") == "checkpoint" and m.get("attempt") is not None:
            checkpoint_times[m["attempt"]] = max(checkpoint_times.get(m["attempt"], 0.0), m.get("time", 0.0))
    recovered_until: Dict[int, float] = {}  # row index -> end of recovery already charged
    for i, row in enumerate(rows):
        if not row.failed or row.start is None or row.end is None or not row.energy_j or row.duration_s <= 0:
            continue
        redo_from = max(row.start, checkpoint_times.get(row.attempt, row.start), recovered_until.get(i, row.start))
        row.lost_s = max(0.0, row.end - redo_from)
        row.lost_energy_j = row.lost_s * row.energy_j / row.duration_s
        if i + 1 < len(rows):
            nxt = rows[i + 1]
            done = _first_step_done(nxt, attempts[i + 1].step_start, metrics)
            if done is not None and nxt.start is not None and nxt.energy_j and nxt.duration_s > 0:
                row.recovery_s = max(0.0, done - nxt.start)
                row.lost_energy_j += row.recovery_s * nxt.energy_j / nxt.duration_s
                recovered_until[i + 1] = done


# --- public entry points ---------------------------------------------------------------------
def collect_stage(stage_dir: Path, run: Optional[str] = None, now: Optional[float] = None) -> Campaign:
    stage_dir = Path(stage_dir)
    run = run or stage_dir.parent.name
    notes: List[str] = []
    site = read_site(stage_dir)
    attempts = list(_gather(stage_dir, notes).values())
    attempts.sort(key=lambda a: (a.window()[0] or float("inf"), a.job_id, a.restart))
    now = time.time() if now is None else now
    rows = [_build_row(a, run, stage_dir.name, site, i == len(attempts) - 1, now)
            for i, a in enumerate(attempts)]
    metrics = ledger.read(stage_dir / "metrics.jsonl")
    _tokens(rows, attempts, metrics)
    _lost_energy(rows, attempts, metrics)
    return Campaign(rows, notes, f"run {run} stage {stage_dir.name}")


def collect_run(run_dir: Path, now: Optional[float] = None) -> Campaign:
    rows, notes = [], []
    for stage_dir in sorted(p for p in Path(run_dir).iterdir() if is_stage_dir(p)):
        part = collect_stage(stage_dir, Path(run_dir).name, now)
        rows += part.rows
        notes += [f"{Path(run_dir).name}/{n}" for n in part.notes]
    return Campaign(_chronological(rows), notes, f"run {Path(run_dir).name}")


def list_runs(runs_root: Path) -> List[str]:
    root = Path(runs_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and p.name != "reports" and any(is_stage_dir(s) for s in p.iterdir()))


def collect_campaign(runs_root: Path, now: Optional[float] = None) -> Campaign:
    rows, notes = [], []
    for run in list_runs(runs_root):
        part = collect_run(Path(runs_root) / run, now)
        rows += part.rows
        notes += part.notes
    return Campaign(_chronological(rows), notes, f"campaign {Path(runs_root)}")


def _chronological(rows: List[AttemptRow]) -> List[AttemptRow]:
    return sorted(rows, key=lambda r: (r.start if r.start is not None else float("inf"), r.run, r.stage))


def rows_from_sacct(export_rows: Sequence[Dict[str, str]], campaign: Campaign, country: str = "") -> int:
    """Add a sacct export to the campaign: jobs we already meter only lend Slurm's figure to rows
    that lack one; other jobs become rows of their own (origin 'sacct'). Returns rows added."""
    ours = {(r.job_id, r.restart): r for r in campaign.rows if r.origin == "toolkit"}
    known_jobs = {r.job_id for r in ours.values()}
    added = []
    for job_id in accounting.job_ids(export_rows):
        for restart, slurm_run in enumerate(accounting.runs_of(export_rows, job_id)):
            if job_id in known_jobs:
                row = ours.get((job_id, restart))
                if row is not None and row.slurm_energy_j is None:
                    _slurm_energy(_Attempt(job_id, restart, slurm=slurm_run), row)
                continue
            added.append(_sacct_row(job_id, restart, slurm_run, country))
    campaign.rows = _chronological(campaign.rows + added)
    return len(added)


def _sacct_row(job_id: str, restart: int, slurm_run: accounting.SlurmRun, country: str) -> AttemptRow:
    alloc = slurm_run.allocation
    row = AttemptRow(run="(sacct)", stage=alloc.get("JobName", "") or "?", job_id=job_id, restart=restart,
                     origin="sacct", country=country, source="slurm")
    row.node_names = accounting.expand_hostlist(alloc.get("NodeList", ""))
    row.nodes = accounting.parse_int(alloc.get("NNodes")) or len(row.node_names)
    row.start, row.end = accounting.parse_time(alloc.get("Start")), accounting.parse_time(alloc.get("End"))
    row.duration_s = float(accounting.parse_int(alloc.get("ElapsedRaw")) or 0)
    energy = accounting.parse_int(alloc.get("ConsumedEnergyRaw"))
    if energy:
        row.energy_j = row.slurm_energy_j = float(energy)
        row.slurm_scope = "allocation"
        row.mean_power_per_node_w = _per_node_power(row)
    else:
        row.note = "Slurm recorded no energy for this job"
    row.slurm_state = slurm_run.state
    row.failure_class = _SLURM_CLASS.get(row.slurm_state, row.slurm_state.lower() or "?")
    row.exit_code = accounting.parse_int(alloc.get("ExitCode", "").split(":")[0])
    row.node_hours = row.nodes * row.duration_s / 3600.0
    gpus = accounting.parse_tres(alloc.get("AllocTRES")).get("gres/gpu")
    row.gpu_hours = (accounting.parse_int(gpus) or 0) * row.duration_s / 3600.0
    return row
