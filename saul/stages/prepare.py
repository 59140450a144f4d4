"""stage=prepare: raw documents -> cleaned, deduplicated, tokenized, packed shards (saul/data).

Ranks share no process group (no torch needed): with `data.sources` every rank runs its share of
the input pieces of the real pipeline (saul.data.pipeline), otherwise rank 0 generates the
synthetic demo corpus (saul.data.prepare). A stop request is checked between pieces."""
from __future__ import annotations

import time
from pathlib import Path

from saul import exit_codes
from saul.resilience import stop_request
from saul.stages.base import Stage, StageContext


class PrepareStage(Stage):
    name = "prepare"
    process_group = False

    def run(self, ctx: StageContext) -> dict:
        stop = stop_request.current()
        if stop.requested:
            return {"exit_code": exit_codes.STOPPED, "step": 0,
                    "reason": f"{stop.describe()} before the data preparation began"}
        from saul.data.prepare import prepare_dataset

        cfg, rundir, info, say = ctx.cfg, ctx.rundir, ctx.info, ctx.say
        out = Path(cfg.data.path) if cfg.data.path else rundir.default_data
        t0 = time.time()
        if cfg.data.sources:  # the real pipeline (saul.data.pipeline): every rank takes its pieces
            from saul.data.pipeline import run_prepare
            from saul.resilience.heartbeat import Heartbeat

            heartbeat = Heartbeat(rundir.heartbeats, enabled=info.rank == 0, job_id=info.job_id)
            outcome = run_prepare(cfg, out, info.rank, info.world_size, should_stop=lambda: stop.requested,
                                  beat=heartbeat.beat, say=say)
            if outcome.status == "stopped":
                return {"exit_code": exit_codes.STOPPED, "step": 0,
                        "reason": f"{stop.describe()}: {outcome.shards_run} piece(s) finished this attempt, "
                                  f"the rest on resume"}
            if outcome.status == "shards_done":
                return {"exit_code": exit_codes.DONE, "step": 0,
                        "reason": f"{outcome.shards_run} of {outcome.shards_total} pieces done on this rank"}
            manifest = outcome.manifest
        elif info.rank != 0:
            return {"exit_code": exit_codes.DONE, "reason": "prepare runs on rank 0 only"}
        else:
            manifest = prepare_dataset(cfg.data, cfg.train.seq_len, cfg.seed, out)
        say(f"dataset ready at {out}: {manifest['num_samples']} samples x {manifest['seq_len']} tokens, "
            f"fingerprint {manifest['fingerprint'][:16]} ({time.time() - t0:.1f}s)")
        return {"exit_code": exit_codes.DONE, "reason": "dataset prepared", "step": 0}


STAGE = PrepareStage
