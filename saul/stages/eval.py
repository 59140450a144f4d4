"""stage=eval: LegalBench-format tasks and MMLU legal subsets (saul/eval/runner.py); one unit of
work is one (model, task), finished units leave done/ markers and are skipped on resume."""
from __future__ import annotations

from saul.stages.base import Stage, StageContext


class EvalStage(Stage):
    name = "eval"

    def run(self, ctx: StageContext) -> dict:
        from saul.eval.runner import EvalRunner

        return EvalRunner(ctx.cfg, ctx.rundir, ctx.info, ctx.device, ctx.say, ctx.attempt).run()


STAGE = EvalStage
