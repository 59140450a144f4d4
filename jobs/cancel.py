#!/usr/bin/env python
"""Stop a run: `python jobs/cancel.py run=NAME [stage=S] [runs_root=DIR]`.

Slurm stages: `scancel` every live job of the run (or of one stage), as Slurm reports them, and
record a `cancelled` event in the stage's ledger. Slurm sends the ranks SIGTERM first, which
makes them checkpoint and exit 75 when they can within the cluster's KillWait.
Local stages: send SIGTERM to rank 0 of the newest attempt when it runs on this host: the
ranks agree on a stop step, checkpoint and exit 75 (run the same submit command to resume).

Exit codes: 0 cancelled, or nothing was live; 1 scancel refused or did not answer; 2 bad input or unknown
run/stage.
"""
from __future__ import annotations

import getpass
import os
import signal
import socket
import sys
from pathlib import Path
from typing import List

if __package__ in (None, ""):  # run as a script: make the repo importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import run_status  # noqa: E402
from jobs.run_status import StageStatus  # noqa: E402
from saul import exit_codes  # noqa: E402
from saul.config.errors import ConfigError  # noqa: E402
from saul.resilience import ledger  # noqa: E402
from saul.slurm_commands import SlurmCommandError, run_slurm  # noqa: E402

OPTIONS = {"--help": False, "-h": False}
SCANCEL_FAILED = 1
ENDING_STATES = ("COMPLETING",)  # live to Slurm but already ending: scancel would refuse them


def who() -> dict:
    """Who cancelled, for the ledger: a stopped stage should never be a mystery."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname()}


def cancel_slurm(status: StageStatus) -> List[str]:
    """Record the cancel, then scancel the stage's live jobs; returns what was done, one line each.

    The `cancelled` records come first: the requeue path (after_job) may run the moment scancel
    lands, and it must already see that this job is not to be requeued. If scancel refuses or does
    not answer, `cancel_failed` records withdraw them and RuntimeError says why."""
    live = [j for j in status.live_jobs if j.state not in ENDING_STATES]
    if not live:
        return []
    ledger_path = Path(status.path) / "ledger.jsonl"
    for job in live:
        ledger.append(ledger_path, {"event": "cancelled", "job_id": job.job_id, "state": job.state, **who()})
    try:
        run_slurm(["scancel", *[j.job_id for j in live]])
    except SlurmCommandError as exc:
        for job in live:
            ledger.append(ledger_path, {"event": "cancel_failed", "job_id": job.job_id, "why": str(exc), **who()})
        raise RuntimeError(str(exc)) from None
    return [f"cancelled Slurm job {job.job_id} ({job.state}) of run {status.run} stage {status.stage}" for job in live]


def cancel_local(status: StageStatus) -> List[str]:
    """SIGTERM rank 0 of a live local attempt on this host; returns what was done (or why not)."""
    a = status.attempts
    if not a.open or status.state != run_status.STATE_RUNNING:
        return []
    if a.host != socket.gethostname():
        return [f"run {status.run} stage {status.stage}: attempt {a.last} runs on host {a.host} (pid {a.pid}); "
                f"run this command there to stop it"]
    if not run_status.process_is_rank(a.pid, Path(status.path)):
        return []
    try:
        os.kill(int(a.pid), signal.SIGTERM)
    except ProcessLookupError:
        return []  # it ended between the check and the signal: nothing left to stop
    ledger.append(Path(status.path) / "ledger.jsonl",
                  {"event": "cancelled", "job_id": a.job_id, "pid": a.pid, "signal": "SIGTERM", **who()})
    return [f"sent SIGTERM to rank 0 (pid {a.pid}) of run {status.run} stage {status.stage}: the ranks checkpoint "
            f"and exit 75; resume with the same submit command"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings, options = run_status.parse_selection(argv, OPTIONS)
        if options:
            print(__doc__)
            return exit_codes.DONE
        if "run" not in settings:
            raise ConfigError("which run? give run=NAME (see `python jobs/status.py` for the runs)")
        runs_root = settings.get("runs_root", "runs")
        stage_dirs = run_status.select_stages(runs_root, settings["run"], settings.get("stage"))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.CONFIG_ERROR
    statuses = run_status.collect(stage_dirs)
    code = exit_codes.DONE
    done: List[str] = []
    for status in statuses:
        try:
            done += cancel_slurm(status) if status.scheduler == "slurm" else cancel_local(status)
        except (RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = SCANCEL_FAILED
    for line in done:
        print(line)
    if not done and code == exit_codes.DONE:
        states = ", ".join(f"{s.stage}: {s.state}" for s in statuses)
        print(f"nothing to cancel: run '{settings['run']}' has nothing live ({states})")
    return code


if __name__ == "__main__":
    sys.exit(main())
