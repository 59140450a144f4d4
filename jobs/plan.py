"""The launch plan: what will run where, printed by dry runs and before every submit."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

from saul.config.model_size import count_parameters, reference_gb_per_rank, training_state_gb_per_rank
from saul.rundir import RunDir


@dataclass(frozen=True)
class RankPlan:
    rank: int
    node: int
    local_rank: int
    device: str


@dataclass(frozen=True)
class LaunchPlan:
    rundir: RunDir
    nodes: int
    nproc: int
    launcher: str
    rank_command: List[str]
    ranks: List[RankPlan]

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc


def human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def device_label(site, local_rank: int) -> str:
    if site.gpu_vendor == "amd":
        return f"GCD {local_rank} (ROCR_VISIBLE_DEVICES={local_rank})"
    if site.gpu_vendor == "nvidia":
        return f"GPU {local_rank} (CUDA_VISIBLE_DEVICES={local_rank})"
    return "CPU"


def checkpoint_cadence(every_steps) -> str:
    if every_steps == "auto":
        return "at Young's interval (every_steps=auto: re-chosen after each save)"
    return f"every {every_steps} steps"


def make_plan(cfg, rundir: RunDir) -> LaunchPlan:
    if cfg.site.scheduler == "none":
        command = ["python", "-m", "saul.stage_entry", str(rundir.root)]
        launcher = "local processes (jobs/local_launcher.py)"
    else:
        command = ["<python>", "-u", "-m", "saul.resilience.rank_guard", "-u", "-m", "submitit.core._submit",
                   str(rundir.logs / "slurm"),
                   f"-> saul.stage_entry.StageTask({rundir.root})"]
        launcher = "submitit SlurmExecutor: one Slurm task per device (srun), see the sbatch script below"
    ranks = [RankPlan(n * cfg.nproc + r, n, r, device_label(cfg.site, r)) for n in range(cfg.nodes) for r in range(cfg.nproc)]
    return LaunchPlan(rundir, cfg.nodes, cfg.nproc, launcher, command, ranks)


def describe(cfg, plan: LaunchPlan, site_reason: str, max_rank_lines: int = 8) -> str:
    t = cfg.train
    size = count_parameters(cfg.model)
    lines = [
        f"site:        {cfg.site.name} ({site_reason})",
        f"stage:       {cfg.stage}   run: {cfg.run}",
        f"run dir:     {plan.rundir.root}",
    ]
    if cfg.stage != "prepare":
        global_batch = t.micro_batch * t.grad_accum * plan.world_size
        tokens = global_batch * t.seq_len
        epochs = cfg[cfg.stage].epochs if cfg.stage in ("ift", "dpo") else 0
        if t.max_steps:
            steps = f"{t.max_steps} steps = {tokens * t.max_steps:,} tokens"
        else:  # ift, dpo: the ranks count the rows of the data and derive the steps
            steps = f"{epochs} epoch(s) of the data, steps = ceil(epochs x rows / {global_batch}) (found at start)"
        zero3 = cfg.parallel == "zero3"
        memory = training_state_gb_per_rank(cfg.model, plan.world_size, zero3)
        memory_what = "weights, gradients, optimizer state"
        if cfg.stage == "dpo":
            memory += reference_gb_per_rank(cfg.model, plan.world_size, zero3)
            memory_what += " + frozen reference weights"
        lines += [
            f"model:       {cfg.model.name}: {human(size.total)} parameters ({human(size.active)} active), "
            f"{cfg.model.dtype}, {cfg.parallel}",
            f"memory:      ~{memory:,.2f} GB per rank ({memory_what}; activations not counted)",
            f"batch:       {t.micro_batch} x {t.grad_accum} accum x {plan.world_size} ranks = {global_batch} "
            f"{'pairs' if cfg.stage == 'dpo' else 'sequences'} x {t.seq_len} tokens = {tokens:,} tokens/step; {steps}",
            f"optimizer:   AdamW lr {cfg.optim.lr:g} betas {tuple(cfg.optim.betas)} {cfg.optim.schedule} over "
            f"{cfg.optim.schedule_steps or t.max_steps or 'all the'} steps, "
            f"checkpoint {checkpoint_cadence(cfg.checkpoint.every_steps)} (keep {cfg.checkpoint.keep_last})",
        ]
    lines += [
        f"ranks:       {plan.world_size} = {plan.nodes} node(s) x {plan.nproc} process(es) per node",
        f"launcher:    {plan.launcher}",
        f"each rank:   {' '.join(plan.rank_command)}",
    ]
    for r in plan.ranks[:max_rank_lines]:
        lines.append(f"  rank {r.rank:>4}  node {r.node:>3}  local_rank {r.local_rank}  {r.device}")
    if len(plan.ranks) > max_rank_lines:
        lines.append(f"  ... {len(plan.ranks) - max_rank_lines} more ranks, same layout on every node")
    return "\n".join(lines)
