"""Range and cross-field checks that types alone cannot express. Every failure is one ConfigError line."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import List, Optional

import psutil

from saul.config.errors import ConfigError
from saul.config.model_size import reference_gb_per_rank, training_state_gb_per_rank
from saul.config.schema import DPO_LOSS_TYPES, GPU_VENDORS, PARALLEL, SCHEDULERS, STAGES

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
TRAINING_STAGES = ("cpt", "anneal", "ift", "dpo")
POSTTRAIN_STAGES = ("ift", "dpo")  # data from JSONL or the demo generator, not packed shards


def _positive(cfg, key: str, allow_zero: bool = False) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value} is out of range: it must be {bound}")


def dpo_loss_problem(loss_type, loss_weights) -> Optional[str]:
    """What is wrong with dpo.loss_type / dpo.loss_weights (checked at submit and by the loss itself)."""
    unknown = [t for t in loss_type if t not in DPO_LOSS_TYPES]
    if not loss_type or unknown:
        return f"dpo.loss_type={list(loss_type)}: unknown {unknown}; use one or more of {', '.join(DPO_LOSS_TYPES)}"
    if loss_weights and len(loss_weights) != len(loss_type):
        return (f"dpo.loss_weights has {len(loss_weights)} values for {len(loss_type)} loss types: "
                f"give one weight per type, or none")
    return None


def validate(cfg) -> List[str]:
    """Raise ConfigError on the first problem; return warnings (printed, not fatal)."""
    warnings: List[str] = []
    if not RUN_NAME.match(cfg.run):
        raise ConfigError(f"run='{cfg.run}' is not a valid run name: use letters, digits, '.', '_' or '-' (max 100)")
    for key in ("nodes", "nproc", "train.micro_batch", "train.grad_accum", "train.seq_len",
                "train.log_every", "checkpoint.keep_last", "checkpoint.export_shard_gb", "optim.lr",
                "model.vocab_size", "model.hidden_size", "model.num_hidden_layers", "time_limit_min", "resilience.failure_budget",
                "resilience.hang_timeout_s", "resilience.start_grace_s"):
        _positive(cfg, key)
    every = cfg.checkpoint.every_steps
    if every != "auto" and (isinstance(every, bool) or not isinstance(every, int) or every <= 0):
        raise ConfigError(f"checkpoint.every_steps={every} is out of range: it must be a whole number > 0 or auto "
                          "(Young's interval from the measured save cost and the run's failure rate)")
    # ift, dpo: train.max_steps=0 = their epochs in steps (the ranks count the rows)
    _positive(cfg, "train.max_steps", allow_zero=cfg.stage in POSTTRAIN_STAGES)
    for key in ("optim.warmup_steps", "optim.schedule_steps", "optim.weight_decay", "optim.grad_clip", "train.stop_after_steps",
                "train.threads_per_rank", "data.num_workers", "resilience.blame_after"):
        _positive(cfg, key, allow_zero=True)
    if cfg.energy.interval_s <= 0:
        raise ConfigError(f"energy.interval_s={cfg.energy.interval_s} is out of range: it must be > 0")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas={list(cfg.optim.betas)} is out of range: two numbers in [0, 1)")
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio={cfg.optim.min_lr_ratio} is out of range: it must be in [0, 1]")
    if cfg.optim.schedule not in ("cosine", "constant", "linear"):
        raise ConfigError(f"optim.schedule='{cfg.optim.schedule}' is unknown: use cosine, constant or linear")
    if cfg.parallel not in PARALLEL:
        raise ConfigError(f"parallel='{cfg.parallel}' is unknown: use {' or '.join(PARALLEL)}")
    if cfg.model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"model.dtype='{cfg.model.dtype}' is unknown: use float32 or bfloat16")
    if cfg.model.attn_implementation not in ("auto", "flash_attention_2", "sdpa", "eager"):
        raise ConfigError(
            f"model.attn_implementation='{cfg.model.attn_implementation}' is unknown: use auto, flash_attention_2, sdpa or eager"
        )
    m = cfg.model
    if m.hidden_size % m.num_attention_heads or m.num_attention_heads % m.num_key_value_heads:
        raise ConfigError(
            f"model: hidden_size ({m.hidden_size}) must divide by num_attention_heads ({m.num_attention_heads}), "
            f"which must divide by num_key_value_heads ({m.num_key_value_heads})"
        )
    if not 0 < m.num_experts_per_tok <= m.num_local_experts:
        raise ConfigError(
            f"model.num_experts_per_tok={m.num_experts_per_tok} must be in [1, num_local_experts={m.num_local_experts}]"
        )
    if cfg.train.seq_len > m.max_position_embeddings:
        raise ConfigError(
            f"train.seq_len={cfg.train.seq_len} exceeds model.max_position_embeddings={m.max_position_embeddings}"
        )
    if m.path and not (Path(m.path) / "config.json").is_file():
        raise ConfigError(f"model.path={m.path} is not an HF-format model directory (no config.json there)")
    _validate_init_from_stage(cfg)
    _validate_site(cfg)
    _validate_memory(cfg)
    if cfg.stage == "eval":  # ranges, task folders and MMLU files (torch-free)
        from saul.eval.inputs import check_config

        check_config(cfg)
    if cfg.stage == "prepare":
        _validate_prepare(cfg)
    if cfg.stage in POSTTRAIN_STAGES:
        _validate_posttrain(cfg)
    return warnings


def _validate_posttrain(cfg) -> None:
    """ift.* / dpo.*: ranges, loss types, and the data files (empty list = the generated demo data)."""
    section = cfg[cfg.stage]
    _positive(cfg, f"{cfg.stage}.epochs")
    _positive(cfg, f"{cfg.stage}.demo_conversations" if cfg.stage == "ift" else "dpo.demo_pairs")
    if cfg.stage == "ift" and not 0.0 <= cfg.ift.demo_general_fraction <= 1.0:
        raise ConfigError(f"ift.demo_general_fraction={cfg.ift.demo_general_fraction} is out of range: it must be in [0, 1]")
    if cfg.stage == "dpo":
        problem = dpo_loss_problem(list(cfg.dpo.loss_type), list(cfg.dpo.loss_weights))
        if problem:
            raise ConfigError(problem)
        _positive(cfg, "dpo.beta")
    for i, path in enumerate(section.data):
        if not Path(path).is_file():
            raise ConfigError(f"{cfg.stage}.data[{i}]={path}: no such file (JSONL; leave {cfg.stage}.data empty "
                              f"for the generated demo data)")


def _validate_prepare(cfg) -> None:
    """data.* for the prepare pipeline: ranges, then the sources themselves (paths, formats, shares)."""
    d = cfg.data
    if d.max_perplexity <= 0:
        raise ConfigError(f"data.max_perplexity={d.max_perplexity} is out of range: it must be > 0")
    _positive(cfg, "data.min_words", allow_zero=True)
    if not d.piece_mb > 0:  # the pipeline's unit of work; tiny values make one directory per record
        raise ConfigError(f"data.piece_mb={d.piece_mb} is out of range: it must be > 0 (MiB of input per "
                          f"piece of work; default 64)")
    if not d.pdf_timeout_s > 0:  # 0 would skip every PDF as a timeout
        raise ConfigError(f"data.pdf_timeout_s={d.pdf_timeout_s} is out of range: it must be > 0 (seconds one "
                          f"PDF may take before it is skipped; default 120)")
    _positive(cfg, "data.num_documents")  # the synthetic source's size: 0 documents would pack nothing
    if d.minhash_ngram <= 0 or d.minhash_bands <= 0 or d.minhash_rows <= 0 or d.minhash_bands * d.minhash_rows > 256:
        raise ConfigError(f"data.minhash_bands x data.minhash_rows = {d.minhash_bands} x {d.minhash_rows} must be "
                          f"positive and at most the 256 permutations (and minhash_ngram > 0)")
    if not d.sources:
        return
    from saul.data.dataset import DatasetError
    from saul.data.extract import resolve_sources

    try:
        resolve_sources(d)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    if d.kenlm_model and not Path(d.kenlm_model).is_file():
        raise ConfigError(f"data.kenlm_model={d.kenlm_model}: no such file (an ARPA or KenLM binary model)")
    for i, path in enumerate(d.decontaminate):
        if not Path(path).exists():
            raise ConfigError(f"data.decontaminate[{i}]={path}: does not exist")


def _validate_init_from_stage(cfg) -> None:
    """A stage name of this run, nothing else: the ranks join it into runs/<run>/<name>/final."""
    name = cfg.model.init_from_stage
    if not name:
        return
    # Stages that leave a final/ model, other than this one (prepare leaves data, eval leaves scores).
    allowed = [s for s in STAGES if s not in ("prepare", "eval", cfg.stage)]
    if name not in allowed:
        raise ConfigError(
            f"model.init_from_stage={name!r} is not a stage this one can start from: use one of {', '.join(allowed)} "
            f"(a stage of run '{cfg.run}', whose final/ model it loads), or model.path=<HF model directory>"
        )


def _validate_site(cfg) -> None:
    from saul.shell_values import check_site_values

    site = cfg.site
    # Quotable values only, no credential in site.env; a real submit needs its passthrough variables set.
    check_site_values(site, None if cfg.dry_run else os.environ)
    if site.scheduler not in SCHEDULERS:
        raise ConfigError(f"site {site.name}: scheduler='{site.scheduler}' is unknown: use none or slurm")
    if site.gpu_vendor not in GPU_VENDORS:
        raise ConfigError(f"site {site.name}: gpu_vendor='{site.gpu_vendor}' is unknown: use none, amd or nvidia")
    if site.scheduler == "none" and cfg.nodes != 1:
        raise ConfigError(f"nodes={cfg.nodes}: site '{site.name}' has no Slurm, so it runs on 1 node; pick a Slurm site")
    if site.gpus_per_node and cfg.nproc > site.gpus_per_node:
        raise ConfigError(
            f"nproc={cfg.nproc} exceeds the {site.gpus_per_node} GPU devices per node of site '{site.name}'"
        )


def _memory_per_rank(cfg, world: int):
    """(GB needed per rank on `world` ranks, what needs it, GB a rank has, what it has; 0 = unknown)."""
    need = training_state_gb_per_rank(cfg.model, world, zero3=cfg.parallel == "zero3")
    what_needs = "weights, gradients and optimizer state"
    if cfg.stage == "dpo":
        need += reference_gb_per_rank(cfg.model, world, zero3=cfg.parallel == "zero3")
        what_needs += " plus the frozen reference weights"
    if cfg.site.gpus_per_node:
        have, what = cfg.site.device_memory_gb, "GPU memory per device"
    else:
        node_gb = cfg.site.mem_per_node_gb or psutil.virtual_memory().total / 1e9
        have, what = node_gb / cfg.nproc, "host memory per process"
    return need, what_needs, have, what


def fits_in_memory(cfg, nodes: int) -> bool:
    """Whether the training state fits on `nodes` nodes: ZeRO-3 shards grow per rank as nodes are lost, so an
    elastic shrink (saul.resilience.spares) is allowed only down to the node count that still holds them."""
    need, _, have, _ = _memory_per_rank(cfg, nodes * cfg.nproc)
    return not have or need <= have


def _validate_memory(cfg) -> None:
    """Refuse a model whose training state cannot fit, before a job waits hours in the queue to OOM."""
    if cfg.stage not in TRAINING_STAGES:
        return
    world = cfg.nodes * cfg.nproc
    need, what_needs, have, what = _memory_per_rank(cfg, world)
    if have and need > have:
        if not cfg.site.gpus_per_node:
            hint = "use model=tiny-mixtral on this machine"
        else:
            hint = "add nodes" if cfg.parallel == "zero3" else "add nodes or use parallel=zero3"
        raise ConfigError(
            f"model {cfg.model.name} needs ~{need:,.0f} GB of {what_needs} per rank "
            f"({cfg.parallel}, {world} ranks) but site '{cfg.site.name}' has {have:,.0f} GB of {what}: {hint}"
        )


def data_dir(cfg, run_dir) -> Path:
    return Path(cfg.data.path) if cfg.data.path else run_dir.default_data


def check_data(cfg, run_dir) -> None:
    """Training stages need a packed dataset; name the path and the command that makes one."""
    if cfg.stage == "eval":  # the models compared: earlier stages' final/ must exist by now
        from saul.eval.inputs import resolve_models

        resolve_models(cfg, run_dir)
        return
    if cfg.stage in POSTTRAIN_STAGES:
        _check_posttrain_start(cfg, run_dir)
        return
    if cfg.stage not in TRAINING_STAGES:
        return
    path = data_dir(cfg, run_dir)
    if not (path / "manifest.json").is_file():
        how = (
            f"run `python jobs/submit.py stage=prepare run={cfg.run} model={cfg.model.name}` first"
            if not cfg.data.path
            else "point data.path at a directory written by stage=prepare"
        )
        raise ConfigError(f"no packed dataset at {path} (manifest.json missing): {how}")
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("seq_len") != cfg.train.seq_len:
        raise ConfigError(
            f"dataset {path} is packed to seq_len={manifest.get('seq_len')} but train.seq_len={cfg.train.seq_len}: "
            "re-run stage=prepare with the same train.seq_len or set train.seq_len to match"
        )
    real_model = cfg.model.path or cfg.model.name in ("mixtral-8x7b", "mixtral-8x22b")
    if real_model and manifest.get("vocab_size") != cfg.model.vocab_size:
        # A real Mixtral's embeddings are indexed by its own tokenizer's ids: any other vocabulary is noise.
        raise ConfigError(
            f"dataset {path} uses a vocabulary of {manifest.get('vocab_size')} tokens but model {cfg.model.name} "
            f"has {cfg.model.vocab_size}: re-run stage=prepare with model={cfg.model.name} (data.tokenizer=auto "
            f"packs with the model's own tokenizer)"
        )
    if manifest.get("vocab_size", 0) > cfg.model.vocab_size:
        raise ConfigError(
            f"dataset {path} uses a vocabulary of {manifest['vocab_size']} tokens but model.vocab_size="
            f"{cfg.model.vocab_size}: set model.vocab_size={manifest['vocab_size']} or more"
        )


def _check_posttrain_start(cfg, run_dir) -> None:
    """ift / dpo start from a finished stage's final/ (or model.path) and tokenize with its tokenizer."""
    if cfg.model.init_from_stage:
        final = run_dir.run_root / cfg.model.init_from_stage / "final"
        if not (final / "config.json").is_file():
            raise ConfigError(f"model.init_from_stage={cfg.model.init_from_stage}: no final model at {final}; finish "
                              f"that stage first (python jobs/submit.py stage={cfg.model.init_from_stage} run={cfg.run} "
                              f"model={cfg.model.name})")
        return
    if cfg.model.path:
        return
    tokenizer = data_dir(cfg, run_dir) / "tokenizer" / "tokenizer.json"
    if not tokenizer.is_file():
        raise ConfigError(f"stage {cfg.stage} starts from random weights but finds no tokenizer at {tokenizer}: give "
                          f"model.init_from_stage=cpt (or another finished stage), model.path=<HF model directory>, "
                          f"or run stage=prepare first")
