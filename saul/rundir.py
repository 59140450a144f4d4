"""The run directory: the contract between the login side, the ranks, the meters and the reports.

    runs/<run>/<stage>/
        config.yaml      the resolved config, frozen at first submit
        ledger.jsonl     one record per attempt (append-only)
        checkpoints/     step-N/ + manifest.json, newest valid one wins
        metrics.jsonl    loss, lr, tokens/s, step time (rank 0, append-only)
        power/<node>.jsonl  per-node power and energy samples
        logs/            per-attempt stdout/stderr of every rank
    runs/<run>/data/     packed dataset written by stage=prepare
    runs/<run>/reports/  energy and goodput reports, plots

Torch-free: the login side and the reports use it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    runs_root: Path
    run: str
    stage: str

    @classmethod
    def from_config(cls, cfg) -> "RunDir":
        return cls(Path(cfg.runs_root).absolute(), cfg.run, cfg.stage)

    @classmethod
    def from_stage_dir(cls, stage_dir: os.PathLike) -> "RunDir":
        stage_dir = Path(stage_dir).absolute()
        return cls(stage_dir.parent.parent, stage_dir.parent.name, stage_dir.name)

    @property
    def run_root(self) -> Path:
        return self.runs_root / self.run

    @property
    def root(self) -> Path:
        return self.run_root / self.stage

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def power(self) -> Path:
        return self.root / "power"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def heartbeats(self) -> Path:
        return self.root / "heartbeats"

    @property
    def default_data(self) -> Path:
        return self.run_root / "data"

    @property
    def reports(self) -> Path:
        return self.run_root / "reports"
