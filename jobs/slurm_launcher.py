"""Submit a stage to Slurm with submitit: one task per GPU device, optionally inside Apptainer.

Rank layout: one Slurm task per GPU device (per GCD on MI250X: 8 per node), not one task per
node running torchrun. Slurm then knows every rank (sacct shows them, --kill-on-bad-exit stops
the step when one dies, the USR2 ahead of the time limit reaches every rank directly) and no
second launcher has to be kept alive or configured inside the container. Slurm also binds each
task to the cores next to its device (`--cpu-bind=mask_cpu:...` from the site's map).

The batch script (rendered by submitit's template) does, once per run of the job on the first
node: check the host Python the helpers need, export the site environment (every value quoted:
saul.shell_values), account for a run Slurm ended itself (before_job), compute MASTER_ADDR (the
first node's Slurm NodeAddr), start one power meter per node and the hang watchdog, pick a free
MASTER_PORT just before the ranks' step, `srun` the ranks, then hand the outcome to the one
requeue path (saul.resilience.after_job). Torch is never imported here: the login node stays fast,
and a dry run renders all of it on a laptop without Slurm.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from saul.binding import parse_cpu_list
from saul.config.errors import ConfigError
from saul.config.sites import REPO_ROOT
from saul.config.validate import fits_in_memory
from saul.resilience.node_exclusion import excluded_nodes
from saul.resilience.watchdog import RANKS_STEP_NAME
from saul.rundir import RunDir
from saul.shell_values import NODE_VARIABLE, node_expanded
from saul.slurm_commands import SlurmCommandError, run_slurm, slurm_output

SBATCH_TIMEOUT_S = 120
MIN_HOST_PYTHON = (3, 8)  # the batch-script helpers: subprocess text=/capture_output, dataclasses, f-strings
HOST_PYTHON = '"$SAUL_HOST_PYTHON"'  # how the script's lines call the host Python once it is checked


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
    return NODE_VARIABLE.sub(lambda m: env.get(m.group(0).strip("${}"), m.group(0)), text)


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
    from jobs.container_image import check_image

    check_image(site.name, expanded)  # missing, unreadable, not SIF, other dependency files: refused now
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


def cpu_masks(site, nproc: int) -> List[str]:
    """One hex CPU mask per local rank from the site's per-device core lists (`48-55` -> 0xff000000000000)."""
    masks = []
    for cpus in list(site.gpu_cpu_bind)[:nproc]:
        try:
            masks.append(hex(sum(1 << c for c in set(parse_cpu_list(str(cpus))))))
        except ValueError:
            raise ConfigError(f"site.gpu_cpu_bind entry '{cpus}' is not a CPU list like 48-55 or 0-7,16") from None
    return masks


def cpu_bind_args(site, nproc: int) -> List[str]:
    """Slurm's own binding of each rank to the cores wired to its device (LUMI's documented way).
    Only when the map covers every local rank; otherwise Slurm's default applies."""
    masks = cpu_masks(site, nproc)
    if not masks or len(masks) < nproc:
        return []
    return [f"--cpu-bind=mask_cpu:{','.join(masks)}"]


def rank_python(cfg, image: str, rundir: RunDir) -> str:
    """The interpreter each rank runs: the host's, or the image's through `apptainer exec`."""
    if not image:
        return shlex.quote(sys.executable)
    from jobs.container_image import bind_paths

    c = cfg.site.container
    binds = bind_paths(cfg, rundir.runs_root)
    # The node checks the runtime, the image and every bind source first (containers/exec-in-image.sh: exit 2).
    parts = ["bash", shlex.quote(str(REPO_ROOT / "containers" / "exec-in-image.sh")), shlex.quote(c.runtime),
             shlex.quote(c.gpu_flag)]
    # Binds and image: $VAR / ${VAR} parts expand on the compute node, nothing else (saul.shell_values).
    parts += [node_expanded(",".join(binds)), node_expanded(image), "python"]
    return " ".join(parts)


def meter_srun(cfg, rundir: RunDir, python: str, nodes: str) -> str:
    """The meter step: one meter per node of `nodes` (srun --nodes/--nodelist arguments), in the background."""
    from jobs.meter_command import meter_args

    args = " ".join(shlex.quote(a) for a in meter_args(cfg, str(rundir.power)))
    meter = (f'{python} -m monitoring.meter {args} --node "$SLURMD_NODENAME" --job "$SLURM_JOB_ID" '
             f'--attempt "${{SLURM_RESTART_COUNT:-0}}" --stop-file "$SAUL_METER_STOP"')
    # --overlap: the meter shares the ranks' CPUs instead of holding one back from them.
    return (f'srun --overlap --job-name=saul-meter {nodes} --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 '
            f'--kill-on-bad-exit=0 --output={shlex.quote(str(rundir.logs) + "/meter-%j-%N.out")} '
            f"bash -c {shlex.quote('exec ' + meter)} &")


def meter_lines(cfg, rundir: RunDir, python: str) -> List[str]:
    """One power meter per node for the whole job, in the background, stopped by a file at teardown."""
    if not cfg.energy.enabled:
        return []
    power = shlex.quote(str(rundir.power))
    return [
        f'export SAUL_METER_STOP={power}/".stop-$SLURM_JOB_ID-${{SLURM_RESTART_COUNT:-0}}"',
        f"mkdir -p {power}",
        meter_srun(cfg, rundir, python, '--nodes="$SLURM_JOB_NUM_NODES"'),
        "SAUL_METER_PID=$!",
    ]


def meter_restart_lines(cfg, rundir: RunDir, python: str) -> List[str]:
    """After a swap or a shrink (the ranks moved): the meter step over the old nodes died with the lost node (or
    is stopped now); meter the nodes the ranks use from now on, and only them, so the energy covers the run."""
    if not cfg.energy.enabled or not step_node_counts(cfg):
        return []
    from saul.resilience.spares import step_nodes_path

    power = shlex.quote(str(rundir.power))
    return [
        'if [ "$saul_moved" = 1 ]; then  # the ranks moved to another node set',
        'touch "$SAUL_METER_STOP"',
        # Bounded: a meter step that still counts the lost node must not hold the relaunch.
        'for saul_i in $(seq 100); do kill -0 $SAUL_METER_PID 2>/dev/null || break; sleep 0.1; done',
        "kill $SAUL_METER_PID 2>/dev/null; wait $SAUL_METER_PID 2>/dev/null",
        f'export SAUL_METER_STOP={power}/".stop-$SLURM_JOB_ID-${{SLURM_RESTART_COUNT:-0}}-$saul_step"',
        meter_srun(cfg, rundir, python, f'--nodes="$SLURM_JOB_NUM_NODES" --nodelist={step_nodes_path(rundir.root)}'),
        "SAUL_METER_PID=$!",
        f"{HOST_PYTHON} -m saul.resilience.spares {shlex.quote(str(rundir.root))} --meter-restarted",
        "fi",
    ]


def watchdog_lines(cfg, rundir: RunDir) -> List[str]:
    r = cfg.resilience
    return [
        f"{HOST_PYTHON} -m saul.resilience.watchdog {shlex.quote(str(rundir.root))} --job \"$SLURM_JOB_ID\" "
        f"--timeout {r.hang_timeout_s:g} --start-grace {r.start_grace_s:g}"
        # GPU ranks: the kill waits for NCCL/RCCL's collective timeout, so its flight recorder leaves a dump.
        + (" --gpu" if cfg.site.gpu_vendor != "none" and cfg.site.gpus_per_node else "") + " &",
        "SAUL_WATCHDOG_PID=$!",
    ]


def restart_loop_head() -> List[str]:
    """The ranks' step runs in a loop inside the allocation (saul.resilience.step_restart decides each
    relaunch); SAUL_STEP_RESTART counts the relaunches of this run (watchdog marker, port, ledger)."""
    return [
        "saul_step=0",
        "while :; do  # one pass per launch of the ranks' step in this allocation",
        "export SAUL_STEP_RESTART=$saul_step",
        "saul_step_started=$(date +%s.%N)",
    ]


def step_node_counts(cfg) -> List[int]:
    """How many nodes the ranks' step may run on, best first: `nodes`, then, with resilience.allow_shrink,
    every smaller count whose ranks keep the global batch with a whole grad_accum (saul.train.checkpoint) and,
    with ZeRO-3, still hold the larger shards per rank in memory (saul.config.validate.fits_in_memory).
    Empty: the ranks run on the whole allocation, as Slurm placed them (no spares, no shrink)."""
    r, n = cfg.resilience, int(cfg.nodes)
    if not r.spare_nodes and not r.allow_shrink:
        return []
    if not r.allow_shrink:
        return [n]
    return [c for c in range(n, 0, -1) if (int(cfg.train.grad_accum) * n) % c == 0
            and (c == n or cfg.parallel != "zero3" or fits_in_memory(cfg, c))]


def spare_lines(cfg, rundir: RunDir) -> List[str]:
    """With spare nodes (resilience.spare_nodes=K: the job holds nodes + K) or allow_shrink: pick this launch's
    healthy nodes (saul.resilience.spares writes the file the ranks' srun --nodelist reads, and records a
    swap or a shrink) and tell srun and the ranks how many (srun reads SLURM_JOB_NUM_NODES and SLURM_NTASKS
    as --nodes and --ntasks; submitit's ranks read them too)."""
    counts = step_node_counts(cfg)
    if not counts:
        return []
    return [
        f'saul_pick=$({HOST_PYTHON} -m saul.resilience.spares {shlex.quote(str(rundir.root))} '
        f'--node-counts {",".join(map(str, counts))}) || {{ saul_rc=1; break; }}',
        'read -r MASTER_ADDR SLURM_JOB_NUM_NODES saul_moved <<<"$saul_pick"',
        "export MASTER_ADDR SLURM_JOB_NUM_NODES",
        f"export SLURM_NTASKS=$((SLURM_JOB_NUM_NODES * {int(cfg.nproc)}))",
    ]


def spare_srun_args(cfg, rundir: RunDir) -> List[str]:
    """The ranks' step on the picked nodes: a --nodelist with a '/' is a host file to srun."""
    if not step_node_counts(cfg):
        return []
    from saul.resilience.spares import step_nodes_path

    return [f"--nodelist={step_nodes_path(rundir.root)}"]


def port_lines() -> List[str]:
    """Last before the ranks' srun: a port free on this (the first) node now, outside the ephemeral range,
    different for each restart of the job and each relaunch inside it (saul.resilience.rendezvous_port).
    Ranks read MASTER_PORT."""
    return [
        f'MASTER_PORT=$({HOST_PYTHON} -m saul.resilience.rendezvous_port --job "$SLURM_JOB_ID" '
        '--restart "$(( ${SLURM_RESTART_COUNT:-0} * 1000 + saul_step ))") '
        '|| { echo "error: no free rendezvous port on $(hostname)" >&2; exit 1; }',
        "export MASTER_PORT",
        'echo "rendezvous: $MASTER_ADDR:$MASTER_PORT (restart ${SLURM_RESTART_COUNT:-0} of job $SLURM_JOB_ID, '
        'launch $saul_step in this allocation)"',
    ]


def min_time_left_s(cfg) -> int:
    """A relaunch needs its start-up and a few steps before the stop signal: otherwise requeue instead."""
    return int(cfg.site.signal_delay_s) + 60


def teardown_lines(cfg, rundir: RunDir) -> List[str]:
    """After srun: relaunch in the allocation (step_restart) or leave the loop; then stop the meters and
    let the one requeue path decide (saul.resilience.after_job)."""
    root = shlex.quote(str(rundir.root))
    r = cfg.resilience
    lines = ["saul_rc=$?  # srun's exit code: must stay the first teardown line",
             "kill $SAUL_WATCHDOG_PID 2>/dev/null; wait $SAUL_WATCHDOG_PID 2>/dev/null",
             f"export SAUL_FAILURE_BUDGET={int(r.failure_budget)}",
             # Crash or hang with budget, nodes and time left: relaunch the ranks here, no requeue.
             f"{HOST_PYTHON} -m saul.resilience.step_restart {root} $saul_rc --step $saul_step "
             f"--min-time-left {min_time_left_s(cfg)} --step-started $saul_step_started"
             + ("" if r.in_job_restart else " --off")
             + (f" --node-counts {','.join(map(str, step_node_counts(cfg)))}" if step_node_counts(cfg) else "")
             + f" --blame-after {int(r.blame_after)} || break",
             "saul_step=$((saul_step + 1))",
             "done"]
    if cfg.energy.enabled:
        lines += ['touch "$SAUL_METER_STOP"', "wait $SAUL_METER_PID 2>/dev/null"]
    lines += [
        # Sites purge their accounting database: keep this job's sacct rows (energy too) in the run directory.
        f"{HOST_PYTHON} -m monitoring.accounting capture {root} \"$SLURM_JOB_ID\"",
        f"{HOST_PYTHON} -m saul.resilience.after_job {root} $saul_rc",
        "exit $saul_rc",
    ]
    return lines


def host_python_lines(site) -> List[str]:
    """The helpers run on the node's own Python, outside the container: check it once, fail loudly with the fix."""
    need = "%d.%d" % MIN_HOST_PYTHON
    newer = f"3.[{MIN_HOST_PYTHON[1]}-9]|3.[1-9][0-9]" if MIN_HOST_PYTHON[1] < 10 else "3.[1-9][0-9]"
    return [
        f"SAUL_HOST_PYTHON={shlex.quote(site.host_python)}",
        'saul_py=$("$SAUL_HOST_PYTHON" -c \'import sys; print("%d.%d" % sys.version_info[:2])\' 2>/dev/null)',
        f'case "$saul_py" in {newer}) ;; *) echo "error: the job script helpers (requeue, watchdog, accounting) '
        f'need Python >= {need} on the node, but $SAUL_HOST_PYTHON is ${{saul_py:-missing}}: set '
        f"site.host_python=/path/to/python{need}+ or load one with site.modules=[python]\" >&2; exit 2;; esac",
    ]


def passthrough_lines(site) -> List[str]:
    """Variables forwarded by name from the submitting shell (sbatch --export): checked here, never written."""
    lines = []
    prefix = f"{site.container.runtime.upper()}ENV_" if site.container.image else ""
    for name in site.env_passthrough:
        lines.append(f'[ -n "${{{name}+set}}" ] || {{ echo "error: {name} (site.env_passthrough) is not in the '
                     f'job\'s environment: export it in the shell that submits" >&2; exit 2; }}')
        if prefix:  # the container gets it even when it starts with a clean environment
            lines.append(f'export {prefix}{name}="${name}"')
    return lines


def setup_lines(cfg, rundir: RunDir) -> List[str]:
    site = cfg.site
    lines = [f"module load {shlex.quote(m)}" for m in site.modules]
    lines += host_python_lines(site)
    env = dict(site.env)
    env.update(site.container.env)
    for key, value in env.items():  # names are identifiers (validated); values: only $VAR/${VAR} expand
        lines.append(f"export {key}={node_expanded(str(value))}")
    lines += passthrough_lines(site)
    lines += [
        f'export PYTHONPATH={shlex.quote(str(REPO_ROOT))}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        f"export SAUL_STAGE_DIR={shlex.quote(str(rundir.root))}",
        f"export SAUL_MAX_EXCLUDED_NODES={int(cfg.resilience.max_excluded_nodes)}",
        # A previous run of this job that Slurm ended (node failure) is accounted and its node excluded.
        f"{HOST_PYTHON} -m saul.resilience.before_job {shlex.quote(str(rundir.root))}; [ $? -eq 3 ] && exit 0",
        # The first node's address as Slurm knows it (a hostname need not resolve on every cluster).
        'export MASTER_ADDR=$(timeout 60 scontrol show node "$(timeout 60 scontrol show hostnames '
        '"$SLURM_JOB_NODELIST" | head -n 1)" | sed -n \'s/.*NodeAddr=\\([^ ]*\\).*/\\1/p\')',
    ]
    return lines


def executor_parameters(cfg, rundir: RunDir, image: str, env=os.environ, strict: bool = True) -> Dict[str, object]:
    site = cfg.site
    spares = int(cfg.resilience.spare_nodes)
    if spares < 0:
        raise ConfigError(f"resilience.spare_nodes={spares} is out of range: it must be >= 0 (extra nodes held to "
                          "replace a failed one)")
    additional: Dict[str, object] = {"requeue": True, **sbatch_extra_parameters(site.sbatch_extra)}
    if step_node_counts(cfg):  # a failed node leaves the allocation instead of ending the job: swap or shrink
        additional["no_kill"] = True
    if site.env_passthrough:  # names only: sbatch takes their values from the submitting environment
        additional["export"] = ",".join(["ALL", *site.env_passthrough])
    params: Dict[str, object] = {
        "job_name": f"saul-{cfg.run}-{cfg.stage}",
        "nodes": cfg.nodes + spares,
        "ntasks_per_node": cfg.nproc,
        "time": cfg.time_limit_min,
        "signal_delay_s": site.signal_delay_s,
        "stderr_to_stdout": True,
        "wckey": site.wckey or None,  # submitit would add --wckey=submitit, which wckey-enforcing sites reject
        "setup": (setup_lines(cfg, rundir) + meter_lines(cfg, rundir, rank_python(cfg, image, rundir))
                  + restart_loop_head() + spare_lines(cfg, rundir)
                  + meter_restart_lines(cfg, rundir, rank_python(cfg, image, rundir))
                  + watchdog_lines(cfg, rundir) + port_lines()),
        "teardown": teardown_lines(cfg, rundir),
        "srun_args": ["--kill-on-bad-exit=1", "--overlap", f"--job-name={RANKS_STEP_NAME}",
                      *spare_srun_args(cfg, rundir), *cpu_bind_args(site, cfg.nproc), *site.srun_extra],
        "additional_parameters": additional,
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


# Each rank first says, in its own log, where Slurm placed it (the CPUs it may use, as the kernel
# reports them, and the --cpu-bind Slurm applied), then becomes the Python process (exec: no extra process).
BINDING_LOG = ("bash -c 'echo \"binding: rank $SLURM_PROCID node $SLURMD_NODENAME local_rank $SLURM_LOCALID: "
               "cpus $(sed -n \"s/^Cpus_allowed_list:[[:space:]]*//p\" /proc/self/status) (Slurm --cpu-bind "
               "${SLURM_CPU_BIND_TYPE:-default}${SLURM_CPU_BIND_LIST:+ $SLURM_CPU_BIND_LIST}), gpus "
               "${SLURM_STEP_GPUS:-${GPU_DEVICE_ORDINAL:-none}}\"; exec \"$@\"' saul-rank")


# Each rank runs submitit's entry point through our guard (same process): it records where the rank started,
# an uncaught exception, and starts the witness that notes when the rank died (saul.resilience.blame).
RANK_GUARD = "-u -m saul.resilience.rank_guard"


def rank_launcher(python: str) -> str:
    """The `python` submitit puts after srun: the binding line, then the rank's interpreter and our guard."""
    return f"{BINDING_LOG} {python} {RANK_GUARD}"


def rank_command(python: str, folder: Path) -> str:
    """What every rank runs (the same string submitit's SlurmExecutor builds)."""
    return " ".join([rank_launcher(python), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def make_executor(cfg, rundir: RunDir, env=os.environ):
    """submitit's SlurmExecutor with our parameters; its sbatch call has a timeout (saul.slurm_commands)."""
    import submitit

    class TimedSlurmExecutor(submitit.SlurmExecutor):
        def _make_submission_command(self, submission_file_path):
            # `timeout` ends sbatch (and tells why: exit 124) if the controller does not answer.
            return ["timeout", "--kill-after=5", str(SBATCH_TIMEOUT_S), "sbatch", str(submission_file_path)]

    image = image_path(cfg.site, env)
    try:
        executor = TimedSlurmExecutor(folder=rundir.logs / "slurm", max_num_timeout=10 ** 6,
                                      python=rank_launcher(rank_python(cfg, image, rundir)))
    except RuntimeError as exc:  # no srun on PATH: not a Slurm login node
        raise ConfigError(f"site '{cfg.site.name}' submits to Slurm but {exc}; submit from the cluster's login "
                          f"node, or add --dry-run to see the batch script here") from None
    executor.update_parameters(**executor_parameters(cfg, rundir, image, env))
    return executor


def render_batch_script(cfg, rundir: RunDir, env=os.environ) -> Tuple[str, str]:
    """(sbatch script, per-rank command) exactly as a submit would produce them; nothing is written.

    Works without Slurm installed (a laptop): submitit's template is called directly, without the
    executor that refuses to exist where there is no `srun`. An unset account or a missing image
    is shown as is instead of refused."""
    from submitit.slurm.slurm import _make_sbatch_string

    image = image_path(cfg.site, env, must_exist=False)
    command = rank_command(rank_python(cfg, image, rundir), rundir.logs / "slurm")
    params = executor_parameters(cfg, rundir, image, env, strict=False)
    return _make_sbatch_string(command=command, folder=rundir.logs / "slurm", **params), command


def submit(cfg, rundir: RunDir, task, env=os.environ):
    """Submit `task` (the pickled StageTask); returns the submitit job."""
    import submitit

    executor = make_executor(cfg, rundir, env)
    try:
        return executor.submit(task)
    except submitit.core.utils.FailedJobError as exc:
        text = str(exc)
        if "status 124" in text or "status 137" in text:
            raise SlurmCommandError(f"`sbatch` did not answer within {SBATCH_TIMEOUT_S}s (is slurmctld overloaded "
                                    f"or down? `scontrol ping` tells); nothing was submitted, or check `squeue --me`"
                                    ) from None
        raise SlurmCommandError(f"sbatch refused the job: {text.strip().splitlines()[-1] if text.strip() else text}"
                                ) from None


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
