"""What a run's stages are doing, read from the run directory (plus one query of Slurm's job states).

`jobs/status.py` renders it and `jobs/cancel.py` acts on it. Everything comes from the files of
the run-directory contract (config.yaml, ledger.jsonl, metrics.jsonl, checkpoints/), because
Slurm's accounting database is purged at some sites and a local run has no scheduler at all;
Slurm (jobs.slurm_launcher.job_states: sacct and squeue) only adds whether a recorded job is
still queued or running, or how it ended.

Two steps keep this fast and testable: `load_stage` reads a stage's files (only the tail of
metrics.jsonl, which grows by a line per logged step for the whole run), `summarize` turns them
into a `StageStatus` given the Slurm states. Torch-free, like the rest of the login side.
"""
from __future__ import annotations

import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from jobs.slurm_launcher import job_states, live_states
from saul import exit_codes
from saul.config.errors import ConfigError, did_you_mean
from saul.config.schema import PIPELINE_ORDER, ResilienceConfig
from saul.resilience import ledger
from saul.resilience.node_exclusion import excluded_nodes
from saul.rundir import RunDir
from saul.train.checkpoint import list_step_dirs, read_manifest

THROUGHPUT_WINDOW = 10  # step records averaged for tokens/s and step time
METRICS_TAIL_BYTES = 16 << 10  # first read from the end of metrics.jsonl; doubled until enough records
METRICS_TAIL_MAX_BYTES = 8 << 20
# Without a scheduler's word (job purged, no Slurm client here, rank on another host), an open attempt whose
# files have not changed for this long is taken for dead: longer than any sane checkpoint save.
STALE_AFTER_S = 30 * 60
# Newest jobs per stage whose state is asked from Slurm (each costs an RPC to the controller): an
# older one cannot still be live, since every resubmission follows the previous job's end. The same
# number as submit's live-job check (jobs.slurm_launcher.live_job), so cancel stops what submit refuses over.
QUERIED_JOBS = 5
# Slurm states of a job that holds no nodes yet (CONFIGURING: nodes are booting).
WAITING_STATES = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING")
# Events this module understands; anything else is counted by name (failure, ...).
KNOWN_EVENTS = ("submitted", "attempt_start", "attempt_end", "config_change", "cancelled", "node_excluded",
                "node_cleared", "job_end")
# Of those, the ones that change a stage's fate; the newest decides when no job or rank is live.
FATE_EVENTS = ("submitted", "attempt_start", "attempt_end", "cancelled")

STATE_RUNNING = "running"
STATE_PENDING = "pending"
STATE_STOPPED = "stopped (resumable)"
STATE_FAILED = "failed"
STATE_DONE = "done"
STATE_CANCELLED = "cancelled"
STATE_NEVER_STARTED = "never started"
STATE_UNKNOWN = "unknown"  # a Slurm job was submitted, but neither Slurm nor the run directory tells its fate
# A pipeline stage whose afterok dependency failed: Slurm keeps it pending forever (DependencyNeverSatisfied).
STATE_BLOCKED = "blocked"
STATE_WAITING = "waiting"  # a pipeline stage not started yet, after the stages before it (local site)
NEVER_STARTS = ("DependencyNeverSatisfied",)
UNITS_IN_METRICS = ("eval",)  # stages whose step records carry their own total (max_steps)


@dataclass
class JobStatus:
    job_id: str
    state: str  # Slurm's (RUNNING, PENDING, CANCELLED, ...), "local", or "UNKNOWN": not asked (older than the
    # newest QUERIED_JOBS) or unknown to Slurm (purged, or no Slurm client here)


@dataclass
class AttemptSummary:
    count: int = 0
    last: Optional[int] = None  # attempt number of the newest attempt
    job_id: Optional[str] = None
    host: Optional[str] = None  # rank 0's host
    pid: Optional[int] = None  # rank 0's pid
    world_size: Optional[int] = None
    nodes: Optional[int] = None
    started_at: Optional[float] = None
    open: bool = False  # started without an attempt_end: running, or killed before it could write one
    exit_code: Optional[int] = None  # of the newest attempt that ended
    reason: Optional[str] = None


@dataclass
class Progress:
    step: Optional[int] = None
    max_steps: Optional[int] = None
    tokens: Optional[int] = None
    tokens_per_s: Optional[float] = None  # mean of the last THROUGHPUT_WINDOW step records
    step_time_s: Optional[float] = None  # idem
    eta_s: Optional[float] = None  # remaining steps x mean step time
    last_step_at: Optional[float] = None

    @property
    def fraction(self) -> Optional[float]:
        if self.step is None or not self.max_steps:
            return None
        return min(1.0, self.step / self.max_steps)


@dataclass
class CheckpointSummary:
    step: int
    created: float
    age_s: float
    save_s: Optional[float] = None  # how long the save took, when metrics.jsonl still holds its record


@dataclass
class StageStatus:
    run: str
    stage: str
    path: str
    state: str
    scheduler: str  # "slurm" or "local"
    site: Optional[str] = None
    jobs: List[JobStatus] = field(default_factory=list)
    attempts: AttemptSummary = field(default_factory=AttemptSummary)
    nodes: Optional[int] = None
    nproc: Optional[int] = None
    progress: Progress = field(default_factory=Progress)
    checkpoint: Optional[CheckpointSummary] = None
    excluded_nodes: List[str] = field(default_factory=list)
    requeue_verdict: Optional[str] = None  # the newest job_end of the requeue path: "<action>: <why>"
    config_changes: int = 0
    other_events: Dict[str, int] = field(default_factory=dict)
    last_activity: Optional[float] = None  # newest mtime of ledger/metrics
    dependency: Optional[str] = None  # job id the newest submission waits for (afterok: a pipeline stage)
    pending_reason: Optional[str] = None  # Slurm's reason for a pending job (squeue %r)
    blocked_by: Optional[str] = None  # "<stage> (job <id>, <state>)" when the dependency failed
    energy_j: Optional[float] = None  # metered so far (every attempt, all nodes); filled by the chain view

    @property
    def live_jobs(self) -> List[JobStatus]:
        return [j for j in self.jobs if j.state in live_states()]


@dataclass
class StageFiles:
    """Everything `summarize` needs from one stage directory, read once."""
    rundir: RunDir
    config: dict
    records: List[dict]  # ledger.jsonl
    metrics_tail: List[dict]  # newest records of metrics.jsonl, oldest first
    checkpoint: Optional[Tuple[int, float]]  # (step, created) of the newest readable checkpoint
    last_activity: Optional[float]
    prepared: bool  # stage=prepare only: its dataset manifest exists
    excluded_nodes: List[str] = field(default_factory=list)  # what the next sbatch excludes (capped), oldest first


# ---------------------------------------------------------------- reading the files

def read_config(path: Path) -> dict:
    """config.yaml as plain data (PyYAML, not OmegaConf: the file is already resolved)."""
    if not path.is_file():
        return {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(path.read_text(), Loader=loader)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def tail_records(path: Path, want_steps: int = THROUGHPUT_WINDOW) -> List[dict]:
    """The last JSON records of a JSONL file, enough to hold `want_steps` step records when it has them."""
    try:
        size = path.stat().st_size
    except OSError:
        return []
    span = METRICS_TAIL_BYTES
    with open(path, "rb") as fh:
        while True:
            start = max(0, size - span)
            fh.seek(start)
            lines = fh.read(size - start).splitlines()
            if start > 0:
                lines = lines[1:]  # the first line is cut by the seek
            records = ledger.parse(lines)
            steps = sum(1 for r in records if "step" in r and "event" not in r)
            if start == 0 or steps >= want_steps or span >= METRICS_TAIL_MAX_BYTES:
                return records
            span *= 2


def newest_checkpoint(root: Path) -> Optional[Tuple[int, float]]:
    """(step, creation time) of the newest checkpoint with a readable manifest (files are not hashed: too slow)."""
    for step, step_dir in list_step_dirs(root):
        try:
            manifest = read_manifest(step_dir)
        except ValueError:
            continue
        created = manifest.get("created") or (step_dir / "manifest.json").stat().st_mtime
        return int(manifest.get("step", step)), float(created)
    return None


def _mtime(path: Path) -> Optional[float]:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def load_stage(stage_dir: os.PathLike) -> StageFiles:
    rundir = RunDir.from_stage_dir(stage_dir)
    config = read_config(rundir.config)
    prepared = False
    if rundir.stage == "prepare":
        data_path = (config.get("data") or {}).get("path") or rundir.default_data
        prepared = (Path(data_path) / "manifest.json").is_file()
    times = [t for t in (_mtime(rundir.ledger), _mtime(rundir.metrics)) if t is not None]
    return StageFiles(
        rundir=rundir, config=config, records=ledger.read(rundir.ledger), metrics_tail=tail_records(rundir.metrics),
        checkpoint=newest_checkpoint(rundir.checkpoints), last_activity=max(times) if times else None,
        prepared=prepared, excluded_nodes=list(excluded_nodes(rundir.ledger, max_excluded_nodes(config))),
    )


# ---------------------------------------------------------------- turning them into a status

def scheduler_of(files: StageFiles) -> str:
    site = files.config.get("site") or {}
    if site.get("scheduler"):  # the site file's word: "slurm", or "none" for the local site
        return "slurm" if site["scheduler"] == "slurm" else "local"
    return "slurm" if any(r.get("event") == "submitted" for r in files.records) else "local"


def job_ids(files: StageFiles) -> List[str]:
    """Every job that ran or was submitted for the stage, oldest first."""
    ids: List[str] = []
    for r in files.records:
        if r.get("event") in ("submitted", "attempt_start") and r.get("job_id") is not None:
            job = str(r["job_id"])
            if job not in ids:
                ids.append(job)
    return ids


def job_shape(files: StageFiles) -> Tuple[Optional[int], Optional[int]]:
    """(nodes, ranks per node) of the newest submission or attempt, else of config.yaml."""
    for r in reversed(files.records):
        if r.get("event") == "submitted" and r.get("nodes"):
            return r["nodes"], r.get("nproc")
        if r.get("event") == "attempt_start" and r.get("nodes") and r.get("world_size"):
            return r["nodes"], r["world_size"] // r["nodes"]
    return files.config.get("nodes"), files.config.get("nproc")


def summarize_attempts(records: Sequence[dict]) -> AttemptSummary:
    summary = AttemptSummary()
    for r in records:
        event = r.get("event")
        if event == "attempt_start":
            summary.count += 1
            summary.last, summary.open = r.get("attempt", summary.count), True
            summary.job_id = None if r.get("job_id") is None else str(r["job_id"])
            summary.host, summary.pid = r.get("host"), r.get("pid")
            summary.world_size, summary.nodes, summary.started_at = r.get("world_size"), r.get("nodes"), r.get("time")
        elif event == "attempt_end":
            summary.open = False
            summary.exit_code, summary.reason = r.get("exit_code"), r.get("reason")
    return summary


def max_excluded_nodes(config: dict) -> int:
    """The cap sbatch applies (resilience.max_excluded_nodes), the schema's default for a config without it."""
    cap = (config.get("resilience") or {}).get("max_excluded_nodes")
    return int(cap) if cap is not None else ResilienceConfig.max_excluded_nodes


def requeue_verdict(records: Sequence[dict]) -> Optional[str]:
    ends = [r for r in records if r.get("event") == "job_end" and r.get("action")]
    return f"{ends[-1]['action']}: {ends[-1].get('why', '')}".rstrip(": ") if ends else None


def summarize_progress(metrics_tail: Sequence[dict], max_steps: Optional[int],
                       checkpoint_step: Optional[int], attempt_end_step: Optional[int]) -> Progress:
    steps = [r for r in metrics_tail if "step" in r and "event" not in r]
    last = steps[-1] if steps else {}
    # Throughput of the newest attempt only: a resume on other nodes runs at another speed.
    newest = [r for r in steps if r.get("attempt") == last.get("attempt")] if steps else []
    window = newest[-THROUGHPUT_WINDOW:]
    known_steps = [s for s in (last.get("step"), checkpoint_step, attempt_end_step) if s is not None]
    progress = Progress(
        step=max(known_steps) if known_steps else None,
        max_steps=max_steps if max_steps is not None else last.get("max_steps"),
        tokens=last.get("tokens"),
        last_step_at=last.get("time"),
    )
    rates = [r["tokens_per_s"] for r in window if isinstance(r.get("tokens_per_s"), (int, float))]
    times = [r["step_time_s"] for r in window if isinstance(r.get("step_time_s"), (int, float))]
    if rates:
        progress.tokens_per_s = sum(rates) / len(rates)
    if times:
        progress.step_time_s = sum(times) / len(times)
    if progress.step_time_s is not None and progress.step is not None and progress.max_steps is not None:
        progress.eta_s = max(0, progress.max_steps - progress.step) * progress.step_time_s
    return progress


def process_is_rank(pid: Optional[int], stage_dir: Path) -> bool:
    """Whether `pid` is alive on this host and still a rank of this stage (pids get reused)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    args = [a.decode(errors="replace") for a in cmdline if a]
    target = stage_dir.resolve()
    return "saul.stage_entry" in args and any(Path(a).resolve() == target for a in args[1:])


def outcome_state(exit_code: Optional[int]) -> str:
    if exit_code == exit_codes.DONE:
        return STATE_DONE
    if exit_code == exit_codes.STOPPED:
        return STATE_STOPPED
    return STATE_FAILED


def ended_job_state(slurm_state: str) -> str:
    """A Slurm job that ended before its stage wrote an attempt_end."""
    return STATE_CANCELLED if slurm_state == "CANCELLED" else STATE_FAILED


def stage_state(files: StageFiles, scheduler: str, jobs: Sequence[JobStatus], attempts: AttemptSummary,
                now: float, host: str, reason: Optional[str] = None) -> str:
    live = [j for j in jobs if j.state in live_states()]
    if live and reason in NEVER_STARTS:
        return STATE_BLOCKED
    if live:
        return STATE_PENDING if all(j.state in WAITING_STATES for j in live) else STATE_RUNNING
    local_here = scheduler == "local" and attempts.open and attempts.host == host
    if local_here and process_is_rank(attempts.pid, files.rundir.root):
        return STATE_RUNNING  # also after a cancel: the ranks are still checkpointing
    # Otherwise the newest event that says something about the stage's fate decides.
    decisive = [r for r in files.records if r.get("event") in FATE_EVENTS]
    if not decisive:
        return STATE_DONE if files.prepared else STATE_NEVER_STARTED
    last = decisive[-1]
    event = last["event"]
    if event == "attempt_end":
        return outcome_state(last.get("exit_code"))
    if event == "cancelled":
        return STATE_CANCELLED
    slurm_state = {j.job_id: j.state for j in jobs}.get(str(last.get("job_id")), "UNKNOWN")
    known = slurm_state not in ("UNKNOWN", "local")
    if event == "submitted":
        return ended_job_state(slurm_state) if known else STATE_UNKNOWN
    # An attempt that started and never ended, and is not live: killed before it could say so,
    # unless nobody here can tell (rank on another host, Slurm has forgotten the job).
    if local_here:
        return STATE_FAILED
    if known:
        return ended_job_state(slurm_state)
    recent = files.last_activity is not None and now - files.last_activity < STALE_AFTER_S
    return STATE_RUNNING if recent else STATE_FAILED


def summarize(files: StageFiles, slurm_states: Optional[Dict[str, str]], now: Optional[float] = None,
              host: Optional[str] = None, reasons: Optional[Dict[str, str]] = None) -> StageStatus:
    now = time.time() if now is None else now
    host = socket.gethostname() if host is None else host
    scheduler = scheduler_of(files)
    states = slurm_states or {}
    jobs = [JobStatus(j, "local" if scheduler == "local" else states.get(j) or "UNKNOWN") for j in job_ids(files)]
    attempts = summarize_attempts(files.records)
    ends = [r for r in files.records if r.get("event") == "attempt_end"]
    events = Counter(r.get("event", "?") for r in files.records)
    submitted = [r for r in files.records if r.get("event") == "submitted"]
    train = files.config.get("train") or {}
    site = files.config.get("site") or {}
    shape = job_shape(files)
    pending = [j.job_id for j in jobs if j.state == "PENDING"]
    reason = (reasons or {}).get(pending[-1]) if pending else None
    checkpoint = None
    if files.checkpoint is not None:
        step, created = files.checkpoint
        saves = [r for r in files.metrics_tail if r.get("event") == "checkpoint" and r.get("step") == step]
        save_s = saves[-1].get("seconds") if saves else None
        checkpoint = CheckpointSummary(step, created, max(0.0, now - created), save_s)
    return StageStatus(
        run=files.rundir.run, stage=files.rundir.stage, path=str(files.rundir.root),
        state=stage_state(files, scheduler, jobs, attempts, now, host, reason), scheduler=scheduler,
        site=site.get("name") or (submitted[-1].get("site") if submitted else None),
        jobs=jobs, attempts=attempts,
        nodes=shape[0], nproc=shape[1],
        # Steps of a step loop come from train.max_steps; eval counts its tasks in its own step records, and
        # ift/dpo with train.max_steps=0 (one epoch) write the steps they derived into theirs.
        progress=summarize_progress(files.metrics_tail,
                                    (train.get("max_steps") or None) if files.rundir.stage not in UNITS_IN_METRICS
                                    else None,
                                    files.checkpoint[0] if files.checkpoint else None,
                                    ends[-1].get("step_end") if ends else None),
        checkpoint=checkpoint,
        excluded_nodes=files.excluded_nodes,
        requeue_verdict=requeue_verdict(files.records),
        config_changes=events.get("config_change", 0),
        other_events={k: v for k, v in sorted(events.items()) if k not in KNOWN_EVENTS},
        last_activity=files.last_activity,
        dependency=submitted[-1].get("dependency") if submitted else None, pending_reason=reason,
    )


def stage_status(stage_dir: os.PathLike, slurm_states: Optional[Dict[str, str]] = None,
                 now: Optional[float] = None) -> StageStatus:
    """The status of one stage; `slurm_states` maps job id -> Slurm state (None: not asked)."""
    return summarize(load_stage(stage_dir), slurm_states, now)


# ---------------------------------------------------------------- finding runs and stages

def is_stage_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "config.yaml").is_file() or (path / "ledger.jsonl").is_file())


def stage_order(path: Path) -> Tuple[int, str]:
    """Pipeline order (prepare, cpt, anneal, ift, dpo, eval), then stages this version does not know, by name."""
    order = PIPELINE_ORDER
    return (order.index(path.name) if path.name in order else len(order), path.name)


def find_runs(runs_root: os.PathLike, run: Optional[str] = None) -> Dict[str, List[Path]]:
    """{run: [stage directories in pipeline order]}; an unknown `run` is a ConfigError with a did-you-mean."""
    root = Path(runs_root)
    runs: Dict[str, List[Path]] = {}
    if root.is_dir():
        for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            stages = sorted((p for p in run_dir.iterdir() if is_stage_dir(p)), key=stage_order)
            if stages:
                runs[run_dir.name] = stages
    if run is None:
        return runs
    if run not in runs:
        raise ConfigError(f"no run '{run}' under {runs_root}{did_you_mean(run, runs)}")
    return {run: runs[run]}


def select_stages(runs_root: os.PathLike, run: Optional[str] = None, stage: Optional[str] = None) -> List[Path]:
    stage_dirs = [d for dirs in find_runs(runs_root, run).values() for d in dirs]
    if stage is None:
        return stage_dirs
    chosen = [d for d in stage_dirs if d.name == stage]
    if not chosen:
        names = sorted({d.name for d in stage_dirs})
        where = f"run '{run}'" if run else f"any run under {runs_root}"
        raise ConfigError(f"no stage '{stage}' in {where}{did_you_mean(stage, names)}; "
                          f"stages: {', '.join(names) or 'none'}")
    return chosen


def pending_reasons(job_ids: List[str]) -> Dict[str, str]:
    """Slurm's reason each pending job waits (Dependency, Resources, DependencyNeverSatisfied, ...)."""
    from saul.slurm_commands import slurm_output

    reasons = {}
    for line in slurm_output(["squeue", "-h", "--states=PENDING", "-o", "%i|%r", "-j", ",".join(job_ids)]).splitlines():
        job, _, reason = line.partition("|")
        if job in job_ids and reason:
            reasons[job] = reason.strip()
    return reasons


def collect(stage_dirs: Sequence[Path], query: Callable[[List[str]], Dict[str, str]] = job_states,
            now: Optional[float] = None,
            reasons: Optional[Callable[[List[str]], Dict[str, str]]] = None) -> List[StageStatus]:
    """Statuses of the given stages with one Slurm query for all their recent jobs (and one for the
    reasons of the pending ones: `reasons`, squeue's by default when `query` is Slurm's own)."""
    loaded = [load_stage(d) for d in stage_dirs]
    slurm_ids = [j for f in loaded if scheduler_of(f) == "slurm" for j in job_ids(f)[-QUERIED_JOBS:]]
    states = query(slurm_ids) if slurm_ids else {}
    if reasons is None and query is job_states:
        reasons = pending_reasons
    waiting = [j for j, state in states.items() if state == "PENDING"]
    why = reasons(waiting) if reasons and waiting else {}
    statuses = [summarize(f, states, now, reasons=why) for f in loaded]
    link_dependencies(statuses)
    return statuses


def link_dependencies(statuses: List[StageStatus]) -> None:
    """A blocked stage names the stage whose job it waited for (a pipeline's afterok chain)."""
    owner = {j.job_id: s for s in statuses for j in s.jobs}
    for s in statuses:
        if s.state == STATE_BLOCKED and s.dependency:
            up = owner.get(str(s.dependency))
            up_state = next((j.state for j in up.jobs if j.job_id == str(s.dependency)), "?") if up else "?"
            s.blocked_by = f"{up.stage if up else '?'} (job {s.dependency}, {up_state})"


# ---------------------------------------------------------------- command-line selection (status, cancel)

def parse_selection(argv: Sequence[str], flags: Dict[str, bool],
                    keys: Sequence[str] = ("run", "stage", "runs_root")) -> Tuple[Dict[str, str], Dict[str, object]]:
    """`key=value` settings and `--options`; `flags` maps each option to whether it takes a value
    (`--interval 5` or `--interval=5`). Bad input is a ConfigError naming what is allowed."""
    settings: Dict[str, str] = {}
    options: Dict[str, object] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            if name not in flags:
                raise ConfigError(f"unknown option '{name}'{did_you_mean(name, flags)}; options: {', '.join(flags)}")
            if not flags[name]:
                options[name] = True
                continue
            if not eq:
                if not args:
                    raise ConfigError(f"option {name} needs a value")
                value = args.pop(0)
            options[name] = value
            continue
        key, eq, value = arg.partition("=")
        allowed = ", ".join(k + "=" for k in keys)
        if not eq:
            raise ConfigError(f"'{arg}' is not key=value; settings: {allowed}")
        if key not in keys:
            raise ConfigError(f"unknown setting '{key}'{did_you_mean(key, keys)}; settings: {allowed}")
        settings[key] = value
    return settings, options
