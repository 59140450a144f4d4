"""config.yaml: the resolved config frozen at a stage's first submit, and what a later submit may change.

Re-running the same command resumes the stage. A later submit may change how the stage runs
(more steps, another time limit, other nodes, checkpoint cadence) but not what it computes
(model, optimizer, data, batch): those would silently make a different model under the same
name, so they are refused with the key, both values and the way out.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple

from omegaconf import OmegaConf

from saul.config.errors import ConfigError
from saul.resilience import ledger

# Keys (or prefixes ending in '.') that may differ between submits of one stage.
CHANGEABLE = (
    "dry_run", "follow", "resilience.", "nodes", "nproc", "time_limit_min", "site.", "checkpoint.", "energy.", "train.max_steps",
    "train.stop_after_steps", "train.log_every", "train.log_sample_ids", "train.threads_per_rank", "data.num_workers",
)


def _flat(cfg) -> Dict[str, object]:
    out: Dict[str, object] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def changeable(key: str) -> bool:
    return any(key == c or (c.endswith(".") and key.startswith(c)) for c in CHANGEABLE)


def differences(old, new) -> List[Tuple[str, object, object]]:
    a, b = _flat(old), _flat(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def write_atomic(path: Path, cfg) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(OmegaConf.to_yaml(cfg))
    os.replace(tmp, path)


def freeze_or_check(path: Path, cfg, ledger_path: Path) -> str:
    """First submit: write config.yaml. Later: refuse fixed-key changes, record allowed ones. Returns a summary."""
    if not path.is_file():
        write_atomic(path, cfg)
        return "new stage: config frozen"
    frozen = OmegaConf.load(path)
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
