"""stage=cpt: continued pretraining, causal-LM cross-entropy (+ the router's load-balancing loss)
on the packed token rows that stage=prepare wrote (saul/data/dataset.py)."""
from __future__ import annotations

from saul.stages.base import StageContext
from saul.stages.training import TrainingStage


class CptStage(TrainingStage):
    name = "cpt"

    def build_work(self, ctx: StageContext, init_path: str):
        from saul.config.validate import data_dir
        from saul.data.dataset import PackedDataset
        from saul.train.loop import StepWork

        dataset = PackedDataset(data_dir(ctx.cfg, ctx.rundir))
        return StepWork(dataset, ctx.cfg.train.seq_len, dataset.path / "tokenizer")


STAGE = CptStage
