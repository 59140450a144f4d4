#!/usr/bin/env python
"""Submit one stage of a run: `python jobs/submit.py stage=cpt [model=...] [site=...] [key=value ...]`.

`stage=pipeline [pipeline.stages=[prepare,cpt,eval]]` runs (local site) or submits with afterok
dependencies (Slurm) several stages of the run in a row: see jobs/pipeline.py.

Composes and validates the config (nothing is written when it is wrong: one line, exit 2),
prints the launch plan, freezes config.yaml in the run directory and launches the ranks:
local processes on the `local` site, Slurm jobs elsewhere. Re-running the same command resumes
the stage from its newest valid checkpoint. `dry_run=true` / `--dry-run` only prints.

Exit codes: 0 stage done; 2 bad input; 75 stopped (checkpointed; run the same command to
resume); anything else: the stage failed (see the rank logs named on the last line).
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from jobs.frozen_config import check_layout, freeze_or_check, load_frozen, resolve_schedule_steps  # noqa: E402
from saul import exit_codes  # noqa: E402
from saul.config.compose import compose  # noqa: E402
from saul.config.errors import ConfigError  # noqa: E402
from saul.config.validate import check_data, validate  # noqa: E402
from saul.rundir import RunDir  # noqa: E402

USAGE = __doc__.split("\n\n")[0] + "\nSee README.md for the grammar, stages and examples."


def parse_argv(argv):
    overrides, dry_run = [], False
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        if arg in ("--dry-run", "-n"):
            dry_run = True
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option '{arg}': options are --dry-run and --help; settings are key=value")
        else:
            overrides.append(arg)
    return overrides, dry_run


def prepare_submission(argv):
    """Everything that can fail on bad input, before anything is written."""
    overrides, dry_flag = parse_argv(argv)
    composed = compose(overrides)
    cfg = composed.cfg
    if dry_flag:
        cfg.dry_run = True
    warnings = validate(cfg)
    rundir = RunDir.from_config(cfg)
    resolve_schedule_steps(cfg, load_frozen(rundir.config))
    for check in (check_data, check_layout):
        try:
            check(cfg, rundir)
        except ConfigError as exc:
            if not cfg.dry_run:
                raise
            warnings.append(f"when run for real: {exc}")
    return composed, cfg, rundir, warnings


def start_local_meter(cfg, rundir: RunDir, job_id: str):
    """This node's power meter for the local job; a meter that cannot start never stops training."""
    if not cfg.energy.enabled:
        return None
    import socket

    from monitoring.meter import start_node_meter
    from saul.resilience import ledger

    meter = start_node_meter(
        rundir.power, socket.gethostname(), job_id, ledger.next_attempt(rundir.ledger), cfg.energy.interval_s,
        sources=list(cfg.site.energy_sources) or None, pm_counters_root=cfg.energy.pm_counters_root or None,
        rapl_root=cfg.energy.rapl_root or None,
    )
    if meter.poll() is not None:
        print(f"warning: the power meter did not start (exit {meter.returncode}); see {rundir.power}", file=sys.stderr)
        return None
    return meter


def launch_local(cfg, rundir: RunDir) -> int:
    from jobs.follow import Follower
    from jobs.local_launcher import LocalJob

    job = LocalJob(rundir.root, cfg.nproc, rundir.logs, hang_timeout_s=cfg.resilience.hang_timeout_s,
                   start_grace_s=cfg.resilience.start_grace_s)
    meter = start_local_meter(cfg, rundir, job.job_id)
    job.start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, job.on_user_signal)
    follower = Follower(job.log_path(0), rundir.metrics)
    t0 = time.time()
    try:
        code = job.wait(tick=follower.tick)
    finally:
        follower.close()
        if meter is not None:
            from monitoring.meter import stop_node_meter

            stop_node_meter(meter)
    elapsed = time.time() - t0
    logs = ", ".join(str(job.log_path(r)) for r in range(cfg.nproc))
    if code == exit_codes.DONE:
        print(f"done: stage {cfg.stage} of run {cfg.run} finished in {elapsed:.1f}s; outputs in {rundir.root}")
    elif code == exit_codes.STOPPED:
        print(f"stopped after a checkpoint ({elapsed:.1f}s): run the same command to resume; logs: {logs}")
    elif code == exit_codes.CONFIG_ERROR:
        print(f"error: stage {cfg.stage} refused its input (see the 'error:' line above); logs: {logs}", file=sys.stderr)
    else:
        print(f"failed: a rank exited with code {code} after {elapsed:.1f}s; rank logs: {logs}; "
              f"run the same command to resume from the newest valid checkpoint", file=sys.stderr)
    return code


def submitted_job_ids(rundir: RunDir) -> list:
    from saul.resilience import ledger

    return [str(r["job_id"]) for r in ledger.read(rundir.ledger) if r.get("event") == "submitted"]


def check_slurm_submission(cfg, rundir: RunDir) -> None:
    """Refuse what would fail later (account, image) or collide (a live job of the same run and stage)."""
    from jobs import slurm_launcher

    slurm_launcher.account_for(cfg.site)
    slurm_launcher.image_path(cfg.site)
    live = slurm_launcher.live_job(submitted_job_ids(rundir))
    if live:
        raise ConfigError(
            f"run '{cfg.run}' stage {cfg.stage} already has live Slurm job {live[0]} ({live[1]}): watch it with "
            f"`python jobs/status.py run={cfg.run}` or cancel it with `python jobs/cancel.py run={cfg.run}`"
        )


def launch_slurm(cfg, rundir: RunDir) -> int:
    from jobs import slurm_launcher
    from jobs.slurm_follow import follow_slurm_job
    from saul.resilience import ledger
    from saul.stage_entry import StageTask

    job = slurm_launcher.submit(cfg, rundir, StageTask(str(rundir.root)))
    ledger.append(rundir.ledger, {"event": "submitted", "job_id": str(job.job_id), "site": cfg.site.name,
                                  "nodes": cfg.nodes, "nproc": cfg.nproc, "time_limit_min": cfg.time_limit_min})
    log = rundir.logs / "slurm" / f"{job.job_id}_0_log.out"
    print(f"submitted Slurm job {job.job_id} ({cfg.nodes} node(s) x {cfg.nproc} ranks) on site {cfg.site.name}")
    print(f"watch: python jobs/status.py run={cfg.run} --watch    rank 0 log: {log}")
    if not cfg.follow:
        return exit_codes.DONE
    return follow_slurm_job(str(job.job_id), log, rundir)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "stage=pipeline" in argv and not {"-h", "--help"} & set(argv):  # several stages in a row: jobs/pipeline.py
        from jobs import pipeline

        return pipeline.main(argv)
    from jobs.plan import describe, make_plan

    try:
        composed, cfg, rundir, warnings = prepare_submission(argv)
        plan = make_plan(cfg, rundir)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(describe(cfg, plan, composed.site.reason))
        if cfg.dry_run:
            if cfg.site.scheduler == "slurm":
                from jobs.slurm_launcher import render_batch_script

                script, command = render_batch_script(cfg, rundir)
                print(f"\n# sbatch script\n{script}\n# each rank (one Slurm task per device) runs\n{command}")
            print("\n# resolved config\n" + OmegaConf.to_yaml(cfg), end="")
            return exit_codes.DONE
        if cfg.site.scheduler == "slurm":
            check_slurm_submission(cfg, rundir)
        print(freeze_or_check(rundir.config, cfg, rundir.ledger))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.CONFIG_ERROR
    if cfg.site.scheduler == "slurm":
        return launch_slurm(cfg, rundir)
    return launch_local(cfg, rundir)


if __name__ == "__main__":
    sys.exit(main())
