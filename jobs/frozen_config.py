"""config.yaml: the resolved config frozen at a stage's first submit, and what a later submit may change.

Re-running the same command resumes the stage. A later submit may change how the stage runs
(more steps, another time limit, checkpoint cadence, other nodes while no checkpoint pins the
layout) but not what it computes (model, optimizer, data, batch): those would silently make a
different model under the same name, so they are refused with the key, both values and the way out.

Two values are settled here rather than in the schema:
- `optim.schedule_steps=0` (the LR schedule's horizon) becomes train.max_steps of the first submit
  and stays so: raising train.max_steps later extends training at the schedule's final LR instead of
  stretching the curve under a running job (which would make the LR jump at the resume).
- the world size (nodes x nproc) is checked against the newest checkpoint, so a layout the ranks
  would refuse (ZeRO-3 shards of another world size, another global batch) is refused now, not after
  hours in the queue.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from omegaconf import OmegaConf

from saul.config.errors import ConfigError
from saul.config.schema import RunConfig
from saul.config.validate import data_dir
from saul.data.atomic import write_text_atomic
from saul.resilience import ledger
from saul.train.checkpoint import newest_state, shrunk_grad_accum

# Keys (or prefixes ending in '.') that may differ between submits of one stage.
CHANGEABLE = (
    "dry_run", "follow", "resilience.", "nodes", "nproc", "time_limit_min", "site.", "checkpoint.", "energy.", "train.max_steps",
    "train.stop_after_steps", "train.log_every", "train.log_sample_ids", "train.threads_per_rank", "data.num_workers",
    "data.piece_mb",  # how prepare cuts its work, not what it produces (same dataset for any value)
)


def _flat(cfg) -> Dict[str, object]:
    out: Dict[str, object] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg, "")
    return out


def changeable(key: str) -> bool:
    return any(key == c or (c.endswith(".") and key.startswith(c)) for c in CHANGEABLE)


def differences(old, new) -> List[Tuple[str, object, object]]:
    """(key, old, new) for every key that differs. A key the frozen file lacks (added to the schema
    since) is no difference while the new value is its default: old runs resume under new code."""
    a, b = _flat(old), _flat(new)
    defaults = _flat(OmegaConf.structured(RunConfig))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not (k not in a and k in defaults and b.get(k) == defaults[k])]


def load_frozen(path: Path):
    return OmegaConf.load(path) if path.is_file() else None


def frozen_schedule_steps(frozen) -> int:
    """The horizon the stage's LR schedule was built with. A config.yaml from before the key existed
    scheduled over its train.max_steps."""
    steps = OmegaConf.select(frozen, "optim.schedule_steps", default=None)
    return int(steps) if steps else int(frozen.train.max_steps)


def resolve_schedule_steps(cfg, frozen) -> None:
    """optim.schedule_steps=0 -> train.max_steps at the first submit, the frozen horizon afterwards."""
    if cfg.optim.schedule_steps:
        return
    cfg.optim.schedule_steps = int(cfg.train.max_steps) if frozen is None else frozen_schedule_steps(frozen)


def _layout_of(ledger_path: Path, world: int) -> str:
    """'nodes=N nproc=P' of the newest attempt that ran with `world` ranks, for the way out."""
    for record in reversed(ledger.read(ledger_path)):
        if record.get("event") == "attempt_start" and record.get("world_size") == world and record.get("nodes"):
            return f"nodes={record['nodes']} nproc={world // record['nodes']}"
    return f"{world} ranks"


def check_layout(cfg, rundir) -> None:
    """Refuse a world size (nodes x nproc) the newest checkpoint cannot resume with.

    Checkpoints load on any world size (DDP: whole files; ZeRO-3: shards resliced through DeepSpeed's
    universal checkpoint, saul.train.universal_checkpoint), but the global batch (micro_batch x grad_accum x
    ranks) must stay: it fixes the data order (saul.train.checkpoint.check_resumable), and micro_batch and
    grad_accum are fixed keys, so a checkpoint pins the world size too, unless resilience.allow_shrink=true:
    then another number of ranks resumes it with the grad_accum that keeps its global batch (saul.train.
    checkpoint.shrunk_grad_accum, which the ranks apply), where the global batch divides by micro_batch x ranks."""
    found = newest_state(rundir.checkpoints)
    if found is None:
        return
    name, state = found
    t = cfg.train
    world = cfg.nodes * cfg.nproc
    old_world = state.get("world_size")
    if old_world is None or old_world == world:
        return  # same layout; a changed micro_batch or grad_accum is freeze_or_check's to refuse, by key
    asked = f"this submit asks nodes={cfg.nodes} x nproc={cfg.nproc} = {world} ranks"
    final = rundir.root / "final"
    way_out = f"submit with the original layout ({_layout_of(rundir.ledger, old_world)})"
    if (final / "config.json").is_file():
        way_out += (f", or train on from its final model under a new name (run=<new name> model.path={final} "
                    f"data.path={data_dir(cfg, rundir)})")
    else:
        way_out += ", or start over under a new name (run=<new name>)"
    if cfg.resilience.allow_shrink:
        accum, why = shrunk_grad_accum(state, t.micro_batch, t.grad_accum, world)
        if accum is None:
            raise ConfigError(f"run '{cfg.run}' stage {cfg.stage}: checkpoint {name} cannot resume elastically: {why}; "
                              f"{asked}; {way_out}")
        return
    global_batch = t.micro_batch * t.grad_accum * world
    if state.get("global_batch") is not None and state["global_batch"] != global_batch:
        raise ConfigError(
            f"run '{cfg.run}' stage {cfg.stage}: checkpoint {name} was made with a global batch of "
            f"{state['global_batch']} sequences and {asked}, a global batch of {t.micro_batch} x {t.grad_accum} x "
            f"{world} = {global_batch}: the data order would change; {way_out}"
            + "; or keep the global batch on this layout with resilience.allow_shrink=true"
        )


def write_atomic(path: Path, cfg) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, OmegaConf.to_yaml(cfg))


def freeze_or_check(path: Path, cfg, ledger_path: Path) -> str:
    """First submit: write config.yaml. Later: refuse fixed-key changes, record allowed ones. Returns a summary."""
    frozen = load_frozen(path)
    resolve_schedule_steps(cfg, frozen)
    if frozen is None:
        write_atomic(path, cfg)
        return "new stage: config frozen"
    if OmegaConf.select(frozen, "optim.schedule_steps", default=None) is None:
        frozen.optim.schedule_steps = frozen_schedule_steps(frozen)  # what the old file's ranks ran with
    diffs = differences(frozen, cfg)
    fixed = [d for d in diffs if not changeable(d[0])]
    if fixed:
        key, old, new = fixed[0]
        more = f" (and {len(fixed) - 1} more)" if len(fixed) > 1 else ""
        raise ConfigError(
            f"run '{cfg.run}' stage {cfg.stage} was started with {key}={old!r}; this submit asks {key}={new!r}{more}: "
            f"resume with the original value, or start a new run with run=<new name>"
        )
    allowed = [d for d in diffs if d[0] not in ("dry_run", "follow")]
    if allowed:
        ledger.append(ledger_path, {"event": "config_change", "changes": [[k, o, n] for k, o, n in allowed]})
        write_atomic(path, cfg)
        return "resuming with changes: " + ", ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in allowed)
    return "resuming: same config"
