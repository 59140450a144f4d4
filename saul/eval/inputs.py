"""What an eval compares and on what: the models (stage finals, the run's starting model, paths),
the LegalBench task folders and the MMLU files, each checked before anything is written.

Models, in `eval.models` order (or the one `model.init_from_stage` / `model.path` names):
    <stage>   that stage's final/ in this run (cpt, anneal, ift, dpo, ...)
    base      the model the run started from: the first training stage's `model.path`, or, when
              it started from random init, the same init rebuilt from its preset and seed
    a path    an HF-format directory (anything with a '/' in it); labelled by its folder name
Torch-free: `jobs/submit.py` calls these on the login node.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

from saul.config.errors import ConfigError
from saul.eval import legalbench, mmlu

TRAINING_ORDER = ("cpt", "anneal", "ift", "dpo")  # the stages a run's model passes through, in order
BASE = "base"


@dataclass(frozen=True)
class ModelSource:
    label: str
    path: Path  # the HF-format directory evaluated (for a random-init base: where it is written first)
    random_init_config: Optional[Path] = None  # config.yaml of the stage whose random init `base` is
    tokenizer_dir: Optional[Path] = None


def _final(run_root: Path, stage: str) -> ModelSource:
    path = run_root / stage / "final"
    if not (path / "config.json").is_file():
        raise ConfigError(f"eval.models: stage '{stage}' has no final model at {path}; finish that stage first "
                          f"(stages with one: {', '.join(finished_stages(run_root)) or 'none'})")
    return ModelSource(stage, path)


def finished_stages(run_root: Path) -> List[str]:
    return sorted(p.parent.name for p in run_root.glob("*/final/config.json")) if run_root.is_dir() else []


def _base(run_root: Path, eval_root: Path) -> ModelSource:
    first = next((s for s in TRAINING_ORDER if (run_root / s / "config.yaml").is_file()), None)
    if first is None:
        raise ConfigError(f"eval.models=base: run {run_root.name} has no training stage ({', '.join(TRAINING_ORDER)}) "
                          f"to take its starting model from")
    stage_cfg = OmegaConf.load(run_root / first / "config.yaml")
    if stage_cfg.model.init_from_stage:
        return _with_label(_final(run_root, stage_cfg.model.init_from_stage), BASE)
    if stage_cfg.model.path:
        return ModelSource(BASE, Path(stage_cfg.model.path))
    data = Path(stage_cfg.data.path) if stage_cfg.data.path else run_root / "data"
    tokenizer = data / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        raise ConfigError(f"eval.models=base: stage {first} started from random init but its tokenizer "
                          f"{tokenizer} is gone; the base model cannot be rebuilt")
    return ModelSource(BASE, eval_root / "models" / BASE, run_root / first / "config.yaml", tokenizer)


def _with_label(source: ModelSource, label: str) -> ModelSource:
    return ModelSource(label, source.path, source.random_init_config, source.tokenizer_dir)


def resolve_models(cfg, rundir) -> List[ModelSource]:
    run_root, eval_root = rundir.run_root, rundir.root
    entries = list(cfg.eval.models)
    if not entries:
        if cfg.model.init_from_stage:
            entries = [cfg.model.init_from_stage]
        elif cfg.model.path:
            entries = [cfg.model.path if "/" in cfg.model.path else f"./{cfg.model.path}"]
        else:
            raise ConfigError("stage=eval needs a model: model.init_from_stage=STAGE, model.path=DIR or "
                              "eval.models=[base,cpt,ift,dpo]")
    sources = []
    for entry in entries:
        if entry == BASE:
            sources.append(_base(run_root, eval_root))
        elif "/" in entry:
            path = Path(entry)
            if not (path / "config.json").is_file():
                raise ConfigError(f"eval.models: {path} is not an HF-format model directory (no config.json there)")
            sources.append(ModelSource(path.resolve().name, path))
        else:
            sources.append(_final(run_root, entry))
    labels = [s.label for s in sources]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup:
        raise ConfigError(f"eval.models: '{dup}' is evaluated twice; list each model once")
    return sources


def check_config(cfg) -> None:
    """Ranges and the task/MMLU files: everything that does not depend on earlier stages."""
    e = cfg.eval
    for key in ("max_new_tokens", "batch_size"):
        if e[key] <= 0:
            raise ConfigError(f"eval.{key}={e[key]} is out of range: it must be > 0")
    for key in ("few_shot", "max_examples", "mmlu_shots", "stop_after_tasks"):
        if e[key] < 0:
            raise ConfigError(f"eval.{key}={e[key]} is out of range: it must be >= 0")
    if not e.tasks and not e.mmlu_dir:
        raise ConfigError("stage=eval has nothing to evaluate: set eval.tasks=[TASK_DIR,...] (LegalBench format) "
                          "and/or eval.mmlu_dir=DIR (MMLU files)")
    for task in load_tasks(cfg):
        if e.few_shot > len(task.train):
            raise ConfigError(f"eval.few_shot={e.few_shot} but task {task.name} has {len(task.train)} train.tsv examples")
    load_subjects(cfg)


def load_tasks(cfg) -> List[legalbench.Task]:
    return [legalbench.load_task(p) for p in legalbench.task_folders(list(cfg.eval.tasks))]


def load_subjects(cfg) -> List[mmlu.Subject]:
    if not cfg.eval.mmlu_dir:
        return []
    return [mmlu.load_subject(Path(cfg.eval.mmlu_dir), s, cfg.eval.mmlu_shots) for s in cfg.eval.mmlu_subjects]
