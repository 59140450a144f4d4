"""stage=pipeline: several stages of one run, each starting from the previous one's output.

    python jobs/submit.py stage=pipeline run=R [pipeline.stages=[prepare,cpt,anneal,ift,dpo,eval]]
        [shared key=value ...] [pipeline.<stage>.<key>=value ...] [--dry-run]

Every stage is composed from the shared settings plus the chain's links plus its own
`pipeline.<stage>.*` settings (which win): a training stage after the first starts from the
previous training stage's final/ (`model.init_from_stage`), and eval compares the run's starting
model with every training stage of the chain (`eval.models=[base,cpt,...]`) unless told otherwise.
All stages are validated before anything is written or submitted (one `error:` line, exit 2).

- Local site: the stages run in order through the same path as `stage=<name>`; a stage that does not
  end done stops the chain (its exit code is the pipeline's).
- Slurm: every stage is submitted at once, each with `--dependency=afterok:<previous job>` and its
  own nodes and time limit from its preset; a failed stage leaves the next one pending forever
  (DependencyNeverSatisfied), which `jobs/status.py run=R` shows as blocked.
- Re-submitting skips finished stages (their output and a done attempt_end), keeps a stage that is
  still queued or running as the next one's dependency, replaces jobs that can never start, and
  continues the unfinished stage from its newest checkpoint.
`runs/<run>/pipeline.json` records the chain (the status view lists stages that have not started).
"""
from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from saul import exit_codes
from saul.config.errors import ConfigError, did_you_mean
from saul.config.schema import PIPELINE_ORDER, STAGES
from saul.rundir import RunDir

PIPELINE_FILE = "pipeline.json"
MODEL_STAGES = ("cpt", "anneal", "ift", "dpo")  # stages that leave a final/ model
DATA_STAGES = ("cpt", "anneal")  # stages that read the packed dataset prepare writes
NEVER_STARTS = ("DependencyNeverSatisfied",)  # squeue reasons of a job whose dependency failed


@dataclass
class PlannedStage:
    name: str
    argv: List[str]
    cfg: object = None
    rundir: Optional[RunDir] = None
    finished: bool = False
    note: str = ""
    live_job: Optional[Tuple[str, str]] = None  # (job id, Slurm state) of a job still queued or running
    job_id: Optional[str] = None  # what the next stage depends on


@dataclass
class Pipeline:
    stages: List[PlannedStage] = field(default_factory=list)
    dry_run: bool = False
    warnings: List[str] = field(default_factory=list)  # a dry run's would-be refusals

    @property
    def site(self):
        return self.stages[0].cfg.site

    @property
    def run_root(self) -> Path:
        return self.stages[0].rundir.run_root


# ---------------------------------------------------------------- the command line
def _hydra_value(text: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides([text])[0].value()
    except HydraException as exc:
        raise ConfigError(f"cannot parse '{text}': {str(exc).strip().splitlines()[0]}") from None


def _stages_value(arg: str) -> List[str]:
    """pipeline.stages=[...] typed by the schema (saul.config.schema.PipelineConfig)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from saul.config.schema import PipelineConfig

    parsed = _hydra_value(arg)
    cfg = OmegaConf.structured(PipelineConfig)
    try:
        cfg.stages = parsed if isinstance(parsed, list) else [parsed]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"'{arg}': {str(exc).splitlines()[0]}") from None
    return list(cfg.stages)


def default_stages() -> List[str]:
    return [s for s in PIPELINE_ORDER if s in STAGES]


def check_stages(stages: Sequence[str]) -> List[str]:
    stages = [str(s) for s in stages]
    if not stages:
        raise ConfigError("pipeline.stages is empty: name the stages to run, e.g. pipeline.stages=[prepare,cpt,eval]")
    for s in stages:
        if s not in STAGES:
            raise ConfigError(f"pipeline.stages: unknown stage '{s}'{did_you_mean(s, STAGES)}; "
                              f"available: {', '.join(STAGES)}")
    dup = next((s for s in stages if stages.count(s) > 1), None)
    if dup:
        raise ConfigError(f"pipeline.stages: '{dup}' is listed twice; each stage runs once per run")
    order = [s for s in PIPELINE_ORDER if s in stages]
    if order != stages:
        raise ConfigError(f"pipeline.stages=[{','.join(stages)}] is out of order: stages run as {','.join(order)}")
    return stages


def split_argv(argv: Sequence[str]) -> Tuple[List[str], List[str], Dict[str, List[str]], bool]:
    """(stages, shared overrides, per-stage overrides, dry run) from submit's arguments."""
    stages: Optional[List[str]] = None
    shared: List[str] = []
    own: Dict[str, List[str]] = {}
    dry = False
    for arg in argv:
        if arg in ("--dry-run", "-n"):
            dry = True
            continue
        if arg.startswith("-"):
            raise ConfigError(f"unknown option '{arg}': options are --dry-run and --help; settings are key=value")
        prefix = "+" if arg.startswith("+") else ""
        key, eq, value = arg[len(prefix):].partition("=")
        if key == "stage":
            continue  # stage=pipeline brought us here
        if not key.startswith("pipeline."):
            shared.append(arg)
            continue
        rest = key[len("pipeline."):]
        if rest == "stages":
            stages = check_stages(_stages_value(arg))
            continue
        stage, _, sub = rest.partition(".")
        if stage not in PIPELINE_ORDER or not sub or not eq:
            raise ConfigError(f"'{arg}': pipeline settings are pipeline.stages=[...] and pipeline.<stage>.<key>=value "
                              f"(stages: {', '.join(STAGES)}){did_you_mean(stage, list(STAGES) + ['stages'])}")
        if sub == "stage":
            raise ConfigError(f"'{arg}': a stage's name is fixed by pipeline.stages")
        own.setdefault(stage, []).append(f"{prefix}{sub}={value}")
    stages = stages or default_stages()
    unused = [s for s in own if s not in stages]
    if unused:
        raise ConfigError(f"pipeline.{unused[0]}.* is set but stage {unused[0]} is not in "
                          f"pipeline.stages=[{','.join(stages)}]")
    return stages, shared, own, dry


def _sets(overrides: Sequence[str], key: str) -> bool:
    return any(o.lstrip("+").partition("=")[0] == key for o in overrides)


def chain_links(stage: str, stages: Sequence[str], said: Sequence[str]) -> List[str]:
    """The overrides that tie `stage` to the earlier ones, unless the user's own settings (`said`) choose."""
    trained = [s for s in stages if s in MODEL_STAGES]
    earlier = [s for s in trained if stages.index(s) < stages.index(stage)]
    if stage in MODEL_STAGES and earlier and not (_sets(said, "model.init_from_stage") or _sets(said, "model.path")):
        return [f"model.init_from_stage={earlier[-1]}", "model.path="]
    if stage == "eval" and trained and not _sets(said, "eval.models"):
        return [f"eval.models=[base,{','.join(trained)}]"]
    return []


def stage_argv(stage: str, stages: Sequence[str], shared: Sequence[str], own: Dict[str, List[str]]) -> List[str]:
    mine = own.get(stage, [])
    return [f"stage={stage}", *shared, *chain_links(stage, stages, mine), *mine]


# ---------------------------------------------------------------- what is already done
def stage_output(rundir: RunDir, cfg) -> Path:
    if rundir.stage == "prepare":
        return (Path(cfg.data.path) if cfg.data.path else rundir.default_data) / "manifest.json"
    if rundir.stage == "eval":
        return rundir.root / "results.json"
    return rundir.root / "final" / "config.json"


def stage_finished(rundir: RunDir, cfg) -> bool:
    """Its output is there and its newest attempt ended done."""
    from saul.resilience import ledger

    ends = [r for r in ledger.read(rundir.ledger) if r.get("event") == "attempt_end"]
    return bool(ends) and ends[-1].get("exit_code") == exit_codes.DONE and stage_output(rundir, cfg).is_file()


def _frozen_check(p: PlannedStage) -> None:
    """A stage started before: a setting it may not change is refused now, before any stage runs."""
    from jobs.frozen_config import changeable, differences, load_frozen

    frozen = load_frozen(p.rundir.config)
    if frozen is None:
        return
    diffs = [d for d in differences(frozen, p.cfg) if d[0] not in ("dry_run", "follow")]
    fixed = [d for d in diffs if not changeable(d[0])]
    if fixed:
        key, old, new = fixed[0]
        raise ConfigError(f"stage {p.name} of run '{p.cfg.run}' was started with {key}={old!r}; this pipeline asks "
                          f"{key}={new!r}: resume with the original value, or start a new run with run=<new name>")
    if p.finished and diffs:
        p.note = (f"; changed settings not applied ({', '.join(d[0] for d in diffs)}): submit stage={p.name} "
                  f"alone to run it again")


def inputs_pending(p: PlannedStage, pending: Sequence[str]) -> bool:
    """Whether the stage's inputs come from an earlier stage of the chain that has not finished yet
    (then they are checked where the stage runs, once that stage has made them)."""
    c = p.cfg
    if p.name in MODEL_STAGES:
        source = c.model.init_from_stage
        if source in pending:
            return True
        # cpt/anneal read prepare's dataset; a post-training stage from random init takes its tokenizer
        needs_prepare = p.name in DATA_STAGES or not (source or c.model.path)
        return needs_prepare and not c.data.path and "prepare" in pending
    if p.name == "eval":
        models = list(c.eval.models) or [c.model.init_from_stage]
        trained = [s for s in pending if s in MODEL_STAGES]
        return any(m in pending or (m == "base" and trained) for m in models)
    return False


def _check_start(p: PlannedStage, pending: Sequence[str]) -> None:
    """A training stage starts from an earlier stage of this chain, or from a final/ that exists now."""
    source = p.cfg.model.init_from_stage
    if p.name not in MODEL_STAGES or not source or source in pending:
        return
    final = p.rundir.run_root / source / "final"
    if not (final / "config.json").is_file():
        raise ConfigError(f"model.init_from_stage={source}: no final model at {final}, and {source} is not an "
                          f"earlier stage of this pipeline: add it to pipeline.stages or finish it first")


def plan(argv: Sequence[str]) -> Pipeline:
    """Compose and check every stage; nothing is written. ConfigError names the stage at fault."""
    from jobs.frozen_config import check_layout, load_frozen, resolve_schedule_steps
    from saul.config.compose import compose
    from saul.config.validate import check_data, validate

    stages, shared, own, dry = split_argv(argv)
    pipeline = Pipeline(dry_run=dry)
    pending: List[str] = []
    for name in stages:
        p = PlannedStage(name, stage_argv(name, stages, shared, own))
        try:
            p.cfg = compose(p.argv).cfg
            if dry:
                p.cfg.dry_run = True
            validate(p.cfg)
            p.rundir = RunDir.from_config(p.cfg)
            resolve_schedule_steps(p.cfg, load_frozen(p.rundir.config))
            p.finished = stage_finished(p.rundir, p.cfg)
            _frozen_check(p)
            try:
                check_layout(p.cfg, p.rundir)
                _check_start(p, pending)
                if not p.finished and not inputs_pending(p, pending):
                    check_data(p.cfg, p.rundir)  # inputs from outside the chain, or from finished stages: there now
            except ConfigError as exc:
                if not dry:
                    raise
                pipeline.warnings.append(f"pipeline stage {name}: when run for real: {exc}")  # as submit's dry run
        except ConfigError as exc:
            raise ConfigError(f"pipeline stage {name}: {exc}") from None
        if pipeline.stages and p.cfg.run != pipeline.stages[0].cfg.run:
            raise ConfigError(f"pipeline stage {name}: run '{p.cfg.run}' differs from the chain's run "
                              f"'{pipeline.stages[0].cfg.run}'; give run= once for the whole pipeline")
        if not p.finished:
            pending.append(name)
        pipeline.stages.append(p)
    _check_packing(pipeline)
    return pipeline


def _check_packing(pipeline: Pipeline) -> None:
    """A prepare in the chain must pack to the sequence length its training stages train with."""
    prepare = next((p for p in pipeline.stages if p.name == "prepare" and not p.finished), None)
    if prepare is None:
        return
    for p in pipeline.stages:
        if p.name in DATA_STAGES and not p.cfg.data.path and p.cfg.train.seq_len != prepare.cfg.train.seq_len:
            raise ConfigError(f"pipeline stage {p.name}: train.seq_len={p.cfg.train.seq_len} but prepare packs to "
                              f"{prepare.cfg.train.seq_len}: set train.seq_len once for both")


# ---------------------------------------------------------------- running it
def write_pipeline_file(pipeline: Pipeline) -> Path:
    from saul.data.atomic import write_json_atomic

    path = pipeline.run_root / PIPELINE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, {"run": pipeline.stages[0].cfg.run, "stages": [p.name for p in pipeline.stages],
                                    "site": pipeline.site.name, "submitted_at": time.time()})


def read_pipeline_file(run_root: Path) -> Optional[dict]:
    try:
        record = json.loads((Path(run_root) / PIPELINE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("stages"), list) else None


def describe(pipeline: Pipeline) -> str:
    lines = [f"pipeline of run {pipeline.stages[0].cfg.run} on site {pipeline.site.name}: "
             + " -> ".join(p.name for p in pipeline.stages)]
    for p in pipeline.stages:
        c = p.cfg
        start = f"from {c.model.init_from_stage}/final" if c.model.init_from_stage else \
            f"from {c.model.path}" if c.model.path else ""
        what = "done: skipped" + p.note if p.finished else f"to run: {c.nodes} node(s) x {c.nproc} rank(s), " \
            f"time limit {c.time_limit_min} min" + (f", {start}" if start and p.name in MODEL_STAGES else "")
        lines.append(f"  {p.name:8s} {what}")
    return "\n".join(lines)


def run_local(pipeline: Pipeline) -> int:
    from jobs import submit

    to_run = [p for p in pipeline.stages if not p.finished]
    seconds: Dict[str, float] = {}
    for i, p in enumerate(to_run):
        t0 = time.time()
        print(f"\n=== pipeline: stage {p.name} ({i + 1}/{len(to_run)}) ===", flush=True)
        code = submit.main(p.argv + (["--dry-run"] if pipeline.dry_run else []))
        for sig in (signal.SIGINT, signal.SIGTERM):  # the finished stage's Ctrl-C handler must not outlive it
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        seconds[p.name] = time.time() - t0
        print(f"=== pipeline: stage {p.name} ended with exit code {code} after {seconds[p.name]:.1f}s ===", flush=True)
        if code != exit_codes.DONE:
            later = [q.name for q in to_run[i + 1:]]
            what = "stopped after a checkpoint" if code == exit_codes.STOPPED else f"failed (exit code {code})"
            print(f"pipeline: stage {p.name} {what}; " + (f"not run: {', '.join(later)}; " if later else "")
                  + "re-submit the same command to continue (finished stages are skipped)", file=sys.stderr)
            return code
    if not pipeline.dry_run:
        print(summary(pipeline, seconds), end="", flush=True)
    return exit_codes.DONE


def summary(pipeline: Pipeline, seconds: Dict[str, float]) -> str:
    """The end of a local pipeline: wall time per stage, the evaluation table, where everything is."""
    run_root, run = pipeline.run_root, pipeline.stages[0].cfg.run
    times = ", ".join(f"{name} {s:.1f}s" for name, s in seconds.items())
    lines = [f"\npipeline of run {run} finished: " + (f"wall time per stage: {times} (total {sum(seconds.values()):.1f}s)"
                                                     if seconds else "every stage was already done")]
    report = run_root / "eval" / "report.md"
    if "eval" in [p.name for p in pipeline.stages] and report.is_file():
        lines += ["", report.read_text().rstrip(), "",
                  "reports: " + ", ".join(str(run_root / "eval" / f) for f in ("report.md", "results.json", "comparison.png")
                                          if (run_root / "eval" / f).is_file())]
    cards = [str(run_root / p.name / "final" / "README.md") for p in pipeline.stages
             if (run_root / p.name / "final" / "README.md").is_file()]
    if cards:
        lines.append("model cards: " + ", ".join(cards))
    lines.append(f"lineage: python jobs/status.py run={run} runs_root={pipeline.stages[0].cfg.runs_root} --lineage")
    return "\n".join(lines) + "\n"


def _pending_reason(job_id: str) -> str:
    from saul.slurm_commands import slurm_output

    line = slurm_output(["squeue", "-h", "-o", "%r", "-j", job_id]).strip()
    return line.splitlines()[0] if line else ""


def _replace_never_starting(p: PlannedStage) -> None:
    """A job that waits on a failed stage can never start: cancel it (recorded first, like jobs/cancel.py)."""
    from saul.resilience import ledger
    from saul.slurm_commands import run_slurm

    job, state = p.live_job
    ledger.append(p.rundir.ledger, {"event": "cancelled", "job_id": job, "state": state,
                                    "by": "pipeline", "why": "its dependency can never be satisfied"})
    run_slurm(["scancel", job])
    print(f"  {p.name}: cancelled job {job} (its dependency failed: it could never start); submitting it again")
    p.live_job = None


def submit_slurm_stage(p: PlannedStage, dependency: Optional[str]) -> str:
    import submitit

    from jobs import slurm_launcher
    from saul.resilience import ledger
    from saul.slurm_commands import SlurmCommandError
    from saul.stage_entry import StageTask

    executor = slurm_launcher.make_executor(p.cfg, p.rundir)
    if dependency:
        executor.update_parameters(dependency=f"afterok:{dependency}")
    try:
        job = executor.submit(StageTask(str(p.rundir.root)))
    except submitit.core.utils.FailedJobError as exc:
        text = str(exc).strip()
        raise SlurmCommandError(f"sbatch refused stage {p.name}: {text.splitlines()[-1] if text else exc}") from None
    ledger.append(p.rundir.ledger, {"event": "submitted", "job_id": str(job.job_id), "site": p.cfg.site.name,
                                    "nodes": p.cfg.nodes, "nproc": p.cfg.nproc, "time_limit_min": p.cfg.time_limit_min,
                                    "dependency": dependency, "pipeline": True})
    return str(job.job_id)


def run_slurm(pipeline: Pipeline) -> int:
    from jobs import slurm_launcher
    from jobs.frozen_config import freeze_or_check
    from jobs.submit import submitted_job_ids

    to_run = [p for p in pipeline.stages if not p.finished]
    for p in to_run:  # everything that can be refused, before the first sbatch
        slurm_launcher.account_for(p.cfg.site)
        slurm_launcher.image_path(p.cfg.site)
        p.live_job = slurm_launcher.live_job(submitted_job_ids(p.rundir))
    write_pipeline_file(pipeline)
    previous: Optional[str] = None
    for p in to_run:
        if p.live_job and _pending_reason(p.live_job[0]) in NEVER_STARTS:
            _replace_never_starting(p)
        if p.live_job:
            p.job_id = p.live_job[0]
            print(f"  {p.name}: job {p.job_id} is still {p.live_job[1]}: kept")
        else:
            freeze_or_check(p.rundir.config, p.cfg, p.rundir.ledger)
            p.job_id = submit_slurm_stage(p, previous)
            after = f" after job {previous} succeeds (afterok)" if previous else ""
            print(f"  {p.name}: submitted Slurm job {p.job_id} ({p.cfg.nodes} node(s) x {p.cfg.nproc} ranks, "
                  f"{p.cfg.time_limit_min} min){after}")
        previous = p.job_id
    run = pipeline.stages[0].cfg.run
    print(f"watch: python jobs/status.py run={run} --watch    cancel: python jobs/cancel.py run={run}")
    return exit_codes.DONE


def main(argv: Sequence[str]) -> int:
    """`jobs/submit.py stage=pipeline ...` lands here."""
    from saul.slurm_commands import SlurmCommandError

    try:
        pipeline = plan(argv)
        for warning in pipeline.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(describe(pipeline), flush=True)
        if all(p.finished for p in pipeline.stages):
            print(f"pipeline: every stage of run {pipeline.stages[0].cfg.run} is finished; nothing to do")
            if pipeline.site.scheduler != "slurm":
                print(summary(pipeline, {}), end="")
            return exit_codes.DONE
        if pipeline.site.scheduler == "slurm":
            if pipeline.dry_run:
                return run_local(pipeline)  # each stage's plan and batch script, nothing submitted
            return run_slurm(pipeline)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.CONFIG_ERROR
    except SlurmCommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not pipeline.dry_run:
        write_pipeline_file(pipeline)
    return run_local(pipeline)
