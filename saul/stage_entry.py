"""What every rank runs: read the frozen config from the run directory and run one stage.

`StageTask` is the callable submitit pickles, on the local site and under Slurm alike. It
carries only the stage directory: everything else (config, newest checkpoint, data position)
is read from disk at start, so a Slurm-side requeue that re-runs the original pickle still
continues from the newest valid checkpoint. The stage itself is one module of saul/stages/,
run inside the shared attempt machinery (saul/stages/base.py).
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys

from omegaconf import OmegaConf

from saul import exit_codes
from saul.config.errors import ConfigError
from saul.resilience import stop_request
from saul.rundir import RunDir


class StageTask:
    def __init__(self, stage_dir: str):
        self.stage_dir = str(stage_dir)

    def __call__(self) -> dict:
        # First: our stop handling replaces submitit's USR2 handler (which would requeue the job by
        # itself, past after_job and the ledger); a stop received during start-up waits for a safe point.
        stop_request.install()
        rundir = RunDir.from_stage_dir(self.stage_dir)
        cfg = OmegaConf.load(rundir.config)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        # SIGUSR1 = "show me where you are": the hang watchdog's request, answered without stopping.
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
        if "SLURM_LOCALID" in os.environ:  # before torch starts the GPU runtime
            from saul.binding import bind_rank

            binding = bind_rank(cfg.site, int(os.environ["SLURM_LOCALID"]))
            if binding.described:
                print(f"rank {os.environ.get('SLURM_PROCID')} bound to {binding.described}", flush=True)
            if binding.cpu_problem and os.environ.get("SLURM_PROCID", "0") == "0":
                print(f"warning: {binding.cpu_problem}", flush=True)  # said once, by rank 0
        result = self._run(cfg, rundir)
        from saul.lineage import record_stage

        record_stage(cfg, rundir, result)  # rank 0 of a stage that ended done: lineage.json + model card
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            # The requeue path after srun reads the exit code (submitit would turn a return into 0);
            # everything the next attempt needs is already on disk.
            exit_now(int(result["exit_code"]))
        return result

    def _run(self, cfg, rundir: RunDir) -> dict:
        from saul.data.dataset import DatasetError
        from saul.stages import load_stage
        from saul.stages.base import run_stage

        try:
            return run_stage(load_stage(cfg.stage), cfg, rundir)
        except (ConfigError, DatasetError) as exc:
            sys.stderr.write(f"error: {exc}\n")
            return {"exit_code": exit_codes.CONFIG_ERROR, "reason": str(exc)}


def exit_now(code: int) -> None:
    """Leave without interpreter teardown: DeepSpeed's CPU comm threads can abort in C++ static
    destructors ("terminate called without an active exception"), turning a clean stop into a crash.
    Every file the next attempt needs was flushed and fsynced before this point."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv=None) -> int:
    """`python -m saul.stage_entry <stage_dir>`: one rank, exit code per saul.exit_codes."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m saul.stage_entry <runs/RUN/STAGE>\n")
        return exit_codes.CONFIG_ERROR
    exit_now(int(StageTask(argv[0])()["exit_code"]))


if __name__ == "__main__":
    sys.exit(main())
