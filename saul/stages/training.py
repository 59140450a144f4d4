"""What every training stage (cpt, anneal, ift, dpo) shares: the model it starts from, its engine
and the step loop (saul/train/loop.py); a stage only says what its data is and how a micro-batch
becomes a loss (`build_work`), and may patch the model before it is wrapped (`prepare_module`) or
do work before the resume (`before_resume`, e.g. DPO's reference log-probabilities)."""
from __future__ import annotations

from abc import abstractmethod

from saul.config.errors import ConfigError
from saul.stages.base import Stage, StageContext, init_model_path, stopped_before_start


class TrainingStage(Stage):
    @abstractmethod
    def build_work(self, ctx: StageContext, init_path: str):
        """The stage's StepWork (saul.train.loop): its data and its loss. May set train.max_steps."""

    def prepare_module(self, module) -> None:
        """Patch the HF model before DDP / DeepSpeed wrap it (nothing by default)."""

    def before_resume(self, ctx: StageContext, loop) -> None:
        """Runs on the starting weights, before the newest checkpoint is loaded (nothing by default)."""

    def run(self, ctx: StageContext) -> dict:
        from saul.train.checkpoint import CheckpointMismatch, apply_elastic_resume
        from saul.train.engine import make_engine
        from saul.train.loop import StepLoop

        stopped = stopped_before_start(ctx, "the model build")  # nothing built yet, nothing to save
        if stopped:
            return stopped
        init_path = init_model_path(ctx.cfg, ctx.rundir)
        # resilience.allow_shrink: a checkpoint of more ranks resumes here with more grad accumulation
        apply_elastic_resume(ctx.cfg, ctx.rundir.checkpoints, ctx.info.world_size, ctx.say)
        work = self.build_work(ctx, init_path)
        try:
            engine = make_engine(ctx.cfg, ctx.device, init_path, self.prepare_module)
            loop = StepLoop(ctx.cfg, ctx.rundir, ctx.info, ctx.device, ctx.attempt, ctx.say, work, engine)
            self.before_resume(ctx, loop)
            loop.resume()
        except CheckpointMismatch as exc:
            raise ConfigError(str(exc)) from None
        outcome = loop.train()
        return {"exit_code": outcome.exit_code, "step": outcome.step, "reason": outcome.reason, **outcome.fields}
