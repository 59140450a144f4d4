#!/usr/bin/env python
"""Show what runs are doing.

    python jobs/status.py [run=NAME] [stage=S] [runs_root=DIR] [--watch] [--interval S] [--json] [--lineage]

One row per run and stage: state (running, pending, stopped (resumable), failed, done, cancelled,
never started), Slurm jobs and their state, attempts and how the last one ended, nodes,
step / max_steps, tokens/s and step time over the last 10 logged steps, ETA (remaining steps x
mean step time), the newest checkpoint and its age, excluded nodes and other ledger events.

  --watch        redraw every --interval seconds (default 5) with a progress bar per stage; Ctrl-C quits
  --json         print the same as JSON (one object: runs_root, time, stages)
  --lineage      (with run=) the chain from raw data to evaluation results: per stage the data
                 fingerprint and sources, code revision, image, config hash, the checkpoint it started
                 from, the hash of its output and its energy (saul/lineage.py)

With run=, the view is the run's chain in pipeline order: every stage with its energy so far, the
stages of a pipeline (jobs/pipeline.py) that have not started yet ("waiting"), and a stage whose
dependency failed ("blocked": Slurm will never start it).

Reads only the run directory and Slurm's job states (no torch): it answers in a fraction of a second.
Exit codes: 0 shown (also when there are no runs yet); 2 bad input or unknown run/stage.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):  # run as a script: make the repo importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.progress_bar import ProgressBar  # noqa: E402
from rich.table import Table  # noqa: E402

from jobs import run_status  # noqa: E402
from monitoring.units import format_energy  # noqa: E402
from jobs.run_status import StageStatus  # noqa: E402
from saul import exit_codes  # noqa: E402
from saul.config.errors import ConfigError  # noqa: E402

OPTIONS = {"--watch": False, "--interval": True, "--json": False, "--lineage": False, "--help": False, "-h": False}
DEFAULT_INTERVAL_S = 5.0
STATE_STYLES = {
    run_status.STATE_RUNNING: "green", run_status.STATE_PENDING: "yellow", run_status.STATE_STOPPED: "cyan",
    run_status.STATE_FAILED: "bold red", run_status.STATE_DONE: "bold green", run_status.STATE_CANCELLED: "magenta",
    run_status.STATE_NEVER_STARTED: "dim", run_status.STATE_UNKNOWN: "yellow", run_status.STATE_BLOCKED: "bold red",
    run_status.STATE_WAITING: "dim",
}
PIPED_WIDTH = 250
JOBS_SHOWN = 2  # newest jobs listed per stage; older ones are counted


def duration(seconds: Optional[float]) -> str:
    """3725 -> '1h02m': compact enough for a table cell, precise enough to plan around."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def rate(tokens_per_s: Optional[float]) -> str:
    if tokens_per_s is None:
        return "-"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if tokens_per_s >= scale:
            return f"{tokens_per_s / scale:.1f}{unit}"
    return f"{tokens_per_s:.0f}"


def jobs_cell(s: StageStatus) -> str:
    if s.scheduler == "local":
        return "local" if s.jobs else "-"
    shown = [f"{j.job_id} {j.state}" for j in reversed(s.jobs[-JOBS_SHOWN:])]
    older = len(s.jobs) - len(shown)
    return "\n".join(shown + ([f"+{older} earlier"] if older else [])) or "-"


def attempts_cell(s: StageStatus) -> str:
    a = s.attempts
    if not a.count:
        return "-"
    if a.open:
        return f"{a.count} (#{a.last} has not ended)"
    return f"{a.count}, last exit {a.exit_code} ({a.reason})"


def nodes_cell(s: StageStatus) -> str:
    shape = f"{s.nodes or '?'}x{s.nproc or '?'}"
    return f"{shape} @{s.attempts.host}" if s.attempts.host else shape


def step_cell(s: StageStatus) -> str:
    p = s.progress
    if p.step is None:
        return "-"
    if not p.max_steps:
        return str(p.step)
    return f"{p.step}/{p.max_steps} ({100 * p.fraction:.0f}%)"


def checkpoint_cell(s: StageStatus) -> str:
    c = s.checkpoint
    if c is None:
        return "-"
    saved = f", saved in {c.save_s:.1f}s" if c.save_s is not None else ""
    return f"step {c.step}, {duration(c.age_s)} ago{saved}"


def notes_cell(s: StageStatus, now: float) -> str:
    notes: List[str] = []
    if s.state == run_status.STATE_BLOCKED:
        notes.append(f"never starts: its dependency {s.blocked_by or s.dependency} failed (Slurm: {s.pending_reason}); "
                     f"fix that stage and submit the pipeline again, or cancel with jobs/cancel.py")
    elif s.state == run_status.STATE_WAITING:
        notes.append(f"runs after {s.dependency}" if s.dependency else "first in the pipeline")
    elif s.pending_reason:
        notes.append(f"waiting: {s.pending_reason}" + (f" (after job {s.dependency})" if s.dependency else ""))
    if s.excluded_nodes:
        notes.append("excluded: " + ",".join(s.excluded_nodes))
    notes += [f"{name} x{count}" for name, count in s.other_events.items()]
    if s.config_changes:
        notes.append(f"config changed x{s.config_changes}")
    if s.requeue_verdict and s.state in (run_status.STATE_FAILED, run_status.STATE_STOPPED):
        notes.append(f"requeue path: {s.requeue_verdict}")
    if s.state == run_status.STATE_RUNNING and s.progress.last_step_at:
        notes.append(f"last step {duration(max(0.0, now - s.progress.last_step_at))} ago")  # clocks of nodes differ
    return "; ".join(notes)


def eta_cell(s: StageStatus) -> str:
    return "-" if s.state == run_status.STATE_DONE else duration(s.progress.eta_s)


def status_table(statuses: List[StageStatus], now: float, with_bars: bool) -> Table:
    table = Table(title=f"runs at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}", title_justify="left")
    for name in ("run", "stage", "state", "jobs", "attempts", "nodes", "step"):
        table.add_column(name, overflow="fold", no_wrap=name in ("stage", "state", "step"))
    if with_bars:
        table.add_column("progress", width=22)
    for name in ("tok/s", "ETA", "energy", "checkpoint", "notes"):
        table.add_column(name, overflow="fold", justify="right" if name in ("tok/s", "ETA", "energy") else "left")
    for s in statuses:
        row = [s.run, s.stage, f"[{STATE_STYLES.get(s.state, '')}]{s.state}", jobs_cell(s), attempts_cell(s),
               nodes_cell(s), step_cell(s)]
        if with_bars:
            fraction = s.progress.fraction
            row.append(ProgressBar(total=1.0, completed=fraction or 0.0, width=20) if fraction is not None else "")
        row += [rate(s.progress.tokens_per_s), eta_cell(s), format_energy(s.energy_j) if s.energy_j is not None else "-",
                checkpoint_cell(s), notes_cell(s, now)]
        table.add_row(*row)
    return table


def as_json(runs_root: str, statuses: List[StageStatus], now: float) -> str:
    stages = []
    for s in statuses:
        record = asdict(s)
        record["progress"]["fraction"] = s.progress.fraction
        stages.append(record)
    return json.dumps({"runs_root": runs_root, "time": now, "stages": stages}, indent=1)


def chain_view(statuses: List[StageStatus], runs_root: str, run: Optional[str]) -> List[StageStatus]:
    """With run=: each stage's energy so far, and the pipeline's stages that have not started yet."""
    if not run:
        return statuses
    from jobs.pipeline import read_pipeline_file
    from saul.lineage import stage_energy

    run_root = Path(runs_root) / run
    for s in statuses:
        s.energy_j = (stage_energy(Path(s.path)) or {}).get("joules")
    pipeline = read_pipeline_file(run_root) or {}
    shown = {s.stage for s in statuses}
    names = list(pipeline.get("stages", []))
    for i, name in enumerate(names):
        if name not in shown:
            statuses.append(StageStatus(run=run, stage=name, path=str(run_root / name), state=run_status.STATE_WAITING,
                                        scheduler="local", site=pipeline.get("site"),
                                        dependency=names[i - 1] if i else None))
    order = {name: i for i, name in enumerate(run_status.PIPELINE_ORDER)}
    return sorted(statuses, key=lambda s: (order.get(s.stage, len(order)), s.stage))


def print_lineage(runs_root: str, run: Optional[str]) -> int:
    from saul import lineage

    if not run:
        raise ConfigError("--lineage shows one run's chain: add run=NAME")
    run_root = Path(runs_root) / run
    records = lineage.chain(run_root)
    print(f"lineage of run {run} ({run_root}), raw data to evaluation results:")
    print(lineage.describe(records, lineage.live_energies(run_root, [r["stage"] for r in records])), end="")
    return exit_codes.DONE


def make_console() -> Console:
    """A terminal's own width; piped output (grep, a log file) gets long lines rather than folded cells."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPED_WIDTH)
    return console


def watch(select, interval_s: float, console: Console, view=lambda statuses: statuses) -> None:
    """Redraw until Ctrl-C; `select()` lists the stages anew each time, so a stage submitted meanwhile shows up."""
    from rich.live import Live

    def render():
        now = time.time()
        return status_table(view(run_status.collect(select(), now=now)), now, with_bars=True)

    with Live(render(), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(interval_s)
            live.update(render(), refresh=True)


def parse_interval(value) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError(f"--interval takes a number of seconds > 0, not '{value}'")
    return seconds


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings, options = run_status.parse_selection(argv, OPTIONS)
        if "--help" in options or "-h" in options:
            print(__doc__)
            return exit_codes.DONE
        interval_s = parse_interval(options.get("--interval", DEFAULT_INTERVAL_S))
        if "--watch" in options and "--json" in options:
            raise ConfigError("--watch redraws a table; for JSON, call status.py --json repeatedly")
        runs_root = settings.get("runs_root", "runs")
        stage_dirs = run_status.select_stages(runs_root, settings.get("run"), settings.get("stage"))
        if "--lineage" in options:
            return print_lineage(runs_root, settings.get("run"))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.CONFIG_ERROR
    now = time.time()
    run = settings.get("run") if "stage" not in settings else None

    def view(statuses):
        return chain_view(statuses, runs_root, run)

    if "--json" in options:
        print(as_json(runs_root, view(run_status.collect(stage_dirs, now=now)), now))
        return exit_codes.DONE
    if not stage_dirs:
        print(f"no runs under {runs_root} yet: start one with `python jobs/submit.py stage=prepare run=NAME`")
        return exit_codes.DONE
    console = make_console()
    if "--watch" in options:
        try:
            watch(lambda: run_status.select_stages(runs_root, settings.get("run"), settings.get("stage")),
                  interval_s, console, view)
        except KeyboardInterrupt:
            pass
        return exit_codes.DONE
    console.print(status_table(view(run_status.collect(stage_dirs, now=now)), now, with_bars=False))
    return exit_codes.DONE


if __name__ == "__main__":
    sys.exit(main())
