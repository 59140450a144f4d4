"""One module per stage, behind one interface (base.py). The entry point (saul/stage_entry.py) only
looks the stage up here and hands it to `base.run_stage`.

    base.py       Stage, StageContext, run_stage: rank set-up, attempt records, leaving together
    training.py   TrainingStage: engine + step loop (saul/train/loop.py) for the training stages
    prepare.py    raw documents -> packed shards (no process group)
    cpt.py        continued pretraining on packed rows
    anneal.py     the same loop from a previous stage's final/, LR decayed to zero
    eval.py       LegalBench / MMLU, one (model, task) per unit of work

Adding a stage `foo`:
1. `saul/stages/foo.py` with a `Stage` subclass (or a `TrainingStage` one: implement `build_work`,
   returning a `saul.train.loop.StepWork` that says what a micro-batch is and how it becomes a
   loss) and `STAGE = FooStage` at the bottom.
2. `saul/config/presets/stage/foo.yaml` with `stage: foo` and the stage's defaults (its own
   settings, if any, in a dataclass of saul/config/schema.py).
The stage then gets the ledger's attempt records, the heartbeat, the stop vote, the checkpoint
cadence, exact resume and the node power meter without a line of its own; add its tests
(tests/integration/test_resume_exact.py shows the exact-resume one).
"""
from __future__ import annotations

import importlib


def load_stage(name: str):
    """The Stage instance of stage `name` (its module's STAGE class)."""
    module = importlib.import_module(f"saul.stages.{name}")
    return module.STAGE()
