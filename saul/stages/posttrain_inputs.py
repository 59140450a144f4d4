"""Inputs shared by the post-training stages (ift, dpo): the tokenizer, the records (the user's
JSONL files or our generated demo data) and the number of steps one epoch takes."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

from saul.config.errors import ConfigError
from saul.rundir import RunDir


def find_tokenizer(cfg, rundir: RunDir, init_path: str) -> Tuple[object, Path]:
    """(tokenizer, its directory): the one beside the starting weights (a stage's final/ carries it),
    else model.path's, else the run's packed data's (a random-init tiny model)."""
    from saul.config.validate import data_dir
    from saul.data.tokenizer import TOKENIZER_FILE, load_tokenizer

    candidates = [Path(p) for p in (init_path, cfg.model.path) if p] + [data_dir(cfg, rundir) / "tokenizer"]
    for directory in candidates:
        if (directory / TOKENIZER_FILE).is_file():
            return load_tokenizer(directory), directory
    raise ConfigError(f"stage {cfg.stage}: no tokenizer ({TOKENIZER_FILE}) in {', '.join(map(str, candidates))}; "
                      f"start from a stage's final model (model.init_from_stage=cpt) or run stage=prepare first")


def file_records(paths: Sequence[str], read) -> Tuple[list, str]:
    """(records, source) of the user's files; `source` names their contents (sha256) for the fingerprint."""
    records = read(list(paths))
    digests = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digests.append(f"{path}:{digest.hexdigest()}")
    return records, "files\n" + "\n".join(digests)


def demo_records(generate: Callable[[], List[dict]], what: str, rundir: RunDir, is_main: bool) -> Tuple[list, str]:
    """(records, source) of our generated demo data; rank 0 leaves a copy in the stage directory
    (demo-<what>.jsonl) so that a person can read what the model was trained on."""
    from saul.posttrain.demo_data import DEMO_VERSION, write_jsonl

    records = generate()
    if is_main:
        write_jsonl(rundir.root / f"demo-{what}.jsonl", records)
    tag = hashlib.sha256(repr(records).encode()).hexdigest()
    return [(f"demo-{what}.jsonl:{i + 1}", r) for i, r in enumerate(records)], f"demo v{DEMO_VERSION} {what} {tag}"


def epoch_steps(cfg, rows: int, world_size: int, epochs: int, say) -> int:
    """train.max_steps=0 means `epochs` passes over the data: ceil(epochs x rows / global batch),
    written into the in-memory config before the engine sizes its LR schedule on it."""
    t = cfg.train
    global_batch = t.micro_batch * t.grad_accum * world_size
    steps = max(1, math.ceil(epochs * rows / global_batch))
    if t.max_steps:
        say(f"{rows} rows, global batch {global_batch}: {epochs} epoch(s) would be {steps} steps; "
            f"train.max_steps={t.max_steps} is used instead")
        return int(t.max_steps)
    say(f"{rows} rows, global batch {global_batch}: {epochs} epoch(s) = {steps} steps")
    t.max_steps = steps
    return steps
