"""stage=anneal: the CPT step loop from a previous stage's final/ (model.init_from_stage=cpt) on
high-quality data, the learning rate decayed linearly to zero (presets/stage/anneal.yaml)."""
from __future__ import annotations

from saul.stages.cpt import CptStage


class AnnealStage(CptStage):
    name = "anneal"


STAGE = AnnealStage
