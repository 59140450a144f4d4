"""Submit a stage to Slurm with submitit: one task per GPU device, optionally inside Apptainer.

Rank layout: one Slurm task per GPU device (per GCD on MI250X: 8 per node), not one task per
node running torchrun. Slurm then knows every rank (sacct shows them, --kill-on-bad-exit stops
the step when one dies, the USR2 ahead of the time limit reaches every rank directly) and no
second launcher has to be kept alive or configured inside the container.

The batch script (rendered by submitit) does, once per job on the first node: export the site
environment, compute MASTER_ADDR (the first node's Slurm NodeAddr) and MASTER_PORT (from the
job id), start one power meter per node, then `srun` the ranks, then hand the outcome to the
requeue path (saul.resilience.after_job). Torch is never imported here: the login node stays fast.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from saul.config.errors import ConfigError
from saul.config.sites import REPO_ROOT
from saul.resilience.node_exclusion import excluded_nodes
from saul.resilience.watchdog import RANKS_STEP_NAME
from saul.rundir import RunDir
from saul.slurm_commands import slurm_output

MASTER_PORT_BASE, MASTER_PORT_SPAN = 20000, 20000


def account_for(site, env=os.environ) -> str:
    account = site.account or env.get(site.account_env, "")
    if site.account_required and not account:
        raise ConfigError(
            f"site '{site.name}' charges jobs to a project account: set site.account=<project> or export "
            f"{site.account_env}=<project>"
        )
    return account


def expand_vars(text: str, env) -> str:
    """$VAR / ${VAR} from `env`; unknown ones stay as they are (and are refused where that matters)."""
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


def image_path(site, env=os.environ, must_exist: bool = True) -> str:
    """The container image with $VARS expanded on the login node; missing -> error now, not in an hour."""
    image = site.container.image
    if not image:
        return ""
    expanded = expand_vars(image, env)
    if not must_exist:
        return expanded
    if "$" in expanded:
        raise ConfigError(f"site '{site.name}': container image {image} uses an unset variable; export it or set "
                          f"site.container.image=/path/to/image.sif")
    if must_exist and not Path(expanded).is_file():
        raise ConfigError(f"site '{site.name}': container image {expanded} does not exist; build it with "
                          f"containers/build.sh and copy it there, or set site.container.image=")
    return expanded


def sbatch_extra_parameters(lines) -> Dict[str, object]:
    """`--constraint=MI250` -> {"constraint": "MI250"}, `--exclusive` -> {"exclusive": True}."""
    out: Dict[str, object] = {}
    for line in lines:
        if not line.startswith("--"):
            raise ConfigError(f"site.sbatch_extra entry '{line}' must look like --option=value or --flag")
        key, _, value = line[2:].partition("=")
        out[key.replace("-", "_")] = value if value else True
    return out


def rank_python(cfg, image: str, rundir: RunDir) -> str:
    """The interpreter each rank runs: the host's, or the image's through `apptainer exec`."""
    if not image:
        return shlex.quote(sys.executable)
    c = cfg.site.container
    binds = [str(rundir.runs_root), str(REPO_ROOT), *c.binds]
    parts = [c.runtime, "exec"] + ([c.gpu_flag] if c.gpu_flag else [])
    # Binds and image stay double-quoted: `$WORKDIR`-style parts expand on the compute node, not here.
    parts += ["--bind", '"' + ",".join(binds) + '"', '"' + image + '"', "python"]
    return " ".join(parts)


def meter_lines(cfg, rundir: RunDir, python: str) -> List[str]:
    """One power meter per node for the whole job, in the background, stopped by a file at teardown."""
    from jobs.meter_command import meter_args

    if not cfg.energy.enabled:
        return []
    args = " ".join(shlex.quote(a) for a in meter_args(cfg, str(rundir.power)))
    meter = (f'{python} -m monitoring.meter {args} --node "$SLURMD_NODENAME" --job "$SLURM_JOB_ID" '
             f'--attempt "${{SLURM_RESTART_COUNT:-0}}" --stop-file "$SAUL_METER_STOP"')
    return [
        f'export SAUL_METER_STOP="{rundir.power}/.stop-$SLURM_JOB_ID-${{SLURM_RESTART_COUNT:-0}}"',
        f"mkdir -p {shlex.quote(str(rundir.power))}",
        # --overlap: the meter shares the ranks' CPUs instead of holding one back from them.
        'srun --overlap --job-name=saul-meter --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" '
        '--ntasks-per-node=1 '
        f'--kill-on-bad-exit=0 --output={shlex.quote(str(rundir.logs))}/meter-%j-%N.out '
        f"bash -c {shlex.quote('exec ' + meter)} &",
        "SAUL_METER_PID=$!",
    ]


def watchdog_lines(cfg, rundir: RunDir) -> List[str]:
    r = cfg.resilience
    return [
        f"python3 -m saul.resilience.watchdog {shlex.quote(str(rundir.root))} --job \"$SLURM_JOB_ID\" "
        f"--timeout {r.hang_timeout_s:g} --start-grace {r.start_grace_s:g} &",
        "SAUL_WATCHDOG_PID=$!",
    ]


def teardown_lines(cfg, rundir: RunDir) -> List[str]:
    """After srun: stop the meters, then the one requeue path decides (saul.resilience.after_job)."""
    lines = ["saul_rc=$?  # srun's exit code: must stay the first teardown line",
             "kill $SAUL_WATCHDOG_PID 2>/dev/null"]
    if cfg.energy.enabled:
        lines += ['touch "$SAUL_METER_STOP"', "wait $SAUL_METER_PID 2>/dev/null"]
    lines += [
        # Sites purge their accounting database: keep this job's sacct rows (energy too) in the run directory.
        f"python3 -m monitoring.accounting capture {shlex.quote(str(rundir.root))} \"$SLURM_JOB_ID\"",
        f'export SAUL_FAILURE_BUDGET="{cfg.resilience.failure_budget}"',
        f"python3 -m saul.resilience.after_job {shlex.quote(str(rundir.root))} $saul_rc",
        "exit $saul_rc",
    ]
    return lines


def setup_lines(cfg, rundir: RunDir) -> List[str]:
    site = cfg.site
    lines = [f"module load {m}" for m in site.modules]
    env = dict(site.env)
    env.update(site.container.env)
    env["PYTHONPATH"] = f"{REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"
    env["SAUL_STAGE_DIR"] = str(rundir.root)
    env["SAUL_MAX_EXCLUDED_NODES"] = str(cfg.resilience.max_excluded_nodes)
    for key, value in env.items():
        lines.append(f'export {key}="{value}"')
    lines += [
        # A previous run of this job that Slurm ended (node failure) is accounted and its node excluded.
        f"python3 -m saul.resilience.before_job {shlex.quote(str(rundir.root))}; [ $? -eq 3 ] && exit 0",
        # The first node's address as Slurm knows it (a hostname need not resolve on every cluster).
        'export MASTER_ADDR=$(scontrol show node "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)" '
        "| sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')",
        f"export MASTER_PORT=$(( {MASTER_PORT_BASE} + SLURM_JOB_ID % {MASTER_PORT_SPAN} ))",
    ]
    return lines


def executor_parameters(cfg, rundir: RunDir, image: str, env=os.environ, strict: bool = True) -> Dict[str, object]:
    site = cfg.site
    params: Dict[str, object] = {
        "job_name": f"saul-{cfg.run}-{cfg.stage}",
        "nodes": cfg.nodes,
        "ntasks_per_node": cfg.nproc,
        "time": cfg.time_limit_min,
        "signal_delay_s": site.signal_delay_s,
        "stderr_to_stdout": True,
        "setup": (setup_lines(cfg, rundir) + meter_lines(cfg, rundir, rank_python(cfg, image, rundir))
                  + watchdog_lines(cfg, rundir)),
        "teardown": teardown_lines(cfg, rundir),
        "srun_args": ["--kill-on-bad-exit=1", "--overlap", f"--job-name={RANKS_STEP_NAME}", *site.srun_extra],
        "additional_parameters": {"requeue": True, **sbatch_extra_parameters(site.sbatch_extra)},
    }
    if site.partition:
        params["partition"] = site.partition
    excluded = excluded_nodes(rundir.ledger, cfg.resilience.max_excluded_nodes)
    if excluded:
        params["exclude"] = ",".join(excluded)
    account = account_for(site, env) if strict else (site.account or env.get(site.account_env) or
                                                     (f"${site.account_env}" if site.account_required else ""))
    if account:
        params["account"] = account
    if site.qos:
        params["qos"] = site.qos
    if site.exclusive:
        params["exclusive"] = True
    if site.gpus_per_node:
        params["gpus_per_node"] = cfg.nproc
    if site.cpus_per_node:
        params["cpus_per_task"] = max(1, site.cpus_per_node // cfg.nproc)
    return params


def make_executor(cfg, rundir: RunDir, env=os.environ, strict: bool = True):
    """strict=False (dry runs): an unset account or a missing image is shown as is instead of refused."""
    import submitit

    image = image_path(cfg.site, env, must_exist=strict)
    executor = submitit.SlurmExecutor(folder=rundir.logs / "slurm", max_num_timeout=10 ** 6,
                                      python=rank_python(cfg, image, rundir))
    executor.update_parameters(**executor_parameters(cfg, rundir, image, env, strict))
    return executor


def render_batch_script(cfg, rundir: RunDir, env=os.environ) -> Tuple[str, str]:
    """(sbatch script, per-rank command) exactly as a submit would produce them; nothing is written."""
    executor = make_executor(cfg, rundir, env, strict=False)
    command = executor._submitit_command_str  # "<python> -u -m submitit.core._submit <folder>"
    script = executor._make_submission_file_text(command, "UID")
    return script, command


def submit(cfg, rundir: RunDir, task, env=os.environ):
    """Submit `task` (the pickled StageTask); returns the submitit job."""
    executor = make_executor(cfg, rundir, env)
    return executor.submit(task)


def live_states() -> Tuple[str, ...]:
    return ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
            "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED")


def job_states(job_ids: List[str]) -> Dict[str, str]:
    """State of each job: the controller's view (squeue: pending jobs have no sacct row yet), else sacct's."""
    if not job_ids:
        return {}
    states: Dict[str, str] = {}
    for line in slurm_output(["sacct", "-n", "-P", "-X", "-o", "JobIDRaw,State", "-j", ",".join(job_ids)]).splitlines():
        job, _, state = line.partition("|")
        states[job] = state.split()[0] if state else ""
    queued = slurm_output(["squeue", "-h", "--states=all", "-o", "%i|%T", "-j", ",".join(job_ids)])
    if not queued and len(job_ids) > 1:  # squeue refuses the whole list when one id has been purged
        queued = "\n".join(slurm_output(["squeue", "-h", "--states=all", "-o", "%i|%T", "-j", job]) for job in job_ids)
    for line in queued.splitlines():
        jid, _, state = line.partition("|")
        if jid in job_ids and state:
            states[jid] = state
    return states


def live_job(job_ids: List[str], newest: int = 5) -> Optional[Tuple[str, str]]:
    """The first of the newest `newest` submissions that is still queued or running, with its state."""
    recent = job_ids[-newest:]
    states = job_states(recent)
    for job in recent:
        if states.get(job) in live_states():
            return job, states[job]
    return None
