"""What every rank runs: read the frozen config from the run directory and run one stage.

`StageTask` is the callable submitit pickles, on the local site and under Slurm alike. It
carries only the stage directory: everything else (config, newest checkpoint, data position)
is read from disk at start, so a Slurm-side requeue that re-runs the original pickle still
continues from the newest valid checkpoint.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import shutil
import signal
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from saul import exit_codes
from saul.config.errors import ConfigError
from saul.resilience import stop_request
from saul.resilience.attempt import Attempt
from saul.rundir import RunDir


def _sayer(rank: int):
    host = socket.gethostname()

    def say(message: str, all_ranks: bool = False) -> None:
        if rank == 0 or all_ranks:
            sys.stdout.write(f"[{time.strftime('%H:%M:%S')} {host} rank {rank}] {message}\n")
            sys.stdout.flush()

    return say


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

        try:
            if cfg.stage == "prepare":
                return self._prepare_attempt(cfg, rundir)
            if cfg.stage == "eval":
                return self._eval(cfg, rundir)
            return self._train(cfg, rundir)
        except (ConfigError, DatasetError) as exc:
            sys.stderr.write(f"error: {exc}\n")
            return {"exit_code": exit_codes.CONFIG_ERROR, "reason": str(exc)}

    def _prepare_attempt(self, cfg, rundir: RunDir) -> dict:
        """The shared attempt records around the prepare body (no process group: rank 0 writes them)."""
        from saul.train.distributed import rank_info

        info = rank_info()
        attempt = Attempt(rundir.ledger, info, cfg.stage)
        attempt.start()
        with ending_recorded(attempt):
            stop = stop_request.current()
            if stop.requested:
                result = {"exit_code": exit_codes.STOPPED, "step": 0,
                          "reason": f"{stop.describe()} before the data preparation began"}
            else:
                result = self._prepare(cfg, rundir)
        attempt.end(result["exit_code"], result["reason"], result.get("step"))
        leave_together_without_group(stop_request.current(), rundir.heartbeats, info)
        return result

    def _prepare(self, cfg, rundir: RunDir) -> dict:
        from saul.data.prepare import prepare_dataset
        from saul.train.distributed import rank_info

        info = rank_info()
        say = _sayer(info.rank)
        out = Path(cfg.data.path) if cfg.data.path else rundir.default_data
        t0 = time.time()
        if cfg.data.sources:  # the real pipeline (saul.data.pipeline): every rank takes its shards
            from saul.data.pipeline import run_prepare
            from saul.resilience.heartbeat import Heartbeat

            stop = stop_request.current()
            heartbeat = Heartbeat(rundir.heartbeats, enabled=info.rank == 0, job_id=info.job_id)
            outcome = run_prepare(cfg, out, info.rank, info.world_size, should_stop=lambda: stop.requested,
                                  beat=heartbeat.beat, say=say)
            if outcome.status == "stopped":
                return {"exit_code": exit_codes.STOPPED, "step": 0,
                        "reason": f"{stop.describe()}: {outcome.shards_run} shard(s) finished this attempt, "
                                  f"the rest on resume"}
            if outcome.status == "shards_done":
                return {"exit_code": exit_codes.DONE, "step": 0,
                        "reason": f"{outcome.shards_run} of {outcome.shards_total} shards done on this rank"}
            manifest = outcome.manifest
        elif info.rank != 0:
            return {"exit_code": exit_codes.DONE, "reason": "prepare runs on rank 0 only"}
        else:
            manifest = prepare_dataset(cfg.data, cfg.train.seq_len, cfg.seed, out)
        say(f"dataset ready at {out}: {manifest['num_samples']} samples x {manifest['seq_len']} tokens, "
            f"fingerprint {manifest['fingerprint'][:16]} ({time.time() - t0:.1f}s)")
        return {"exit_code": exit_codes.DONE, "reason": "dataset prepared", "step": 0}

    def _eval(self, cfg, rundir: RunDir) -> dict:
        """stage=eval (saul/eval/runner.py) inside the same rank set-up and attempt records as training."""
        import torch

        from saul.eval.runner import EvalRunner
        from saul.train import distributed
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        info = distributed.rank_info()
        device = distributed.device_for(info, cfg.site)
        distributed.set_cpu_threads(cfg.train.threads_per_rank, info.local_world_size)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        distributed.init_process_group(info, device, distributed.collective_timeout_s(cfg.resilience.hang_timeout_s))
        try:
            attempt = Attempt(rundir.ledger, info, cfg.stage, _broadcast_int)
            attempt.start()
            with ending_recorded(attempt):
                result = EvalRunner(cfg, rundir, info, device, _sayer(info.rank), attempt.number).run()
            attempt.end(**result)
            leave_together(stop_request.current())
            return result
        finally:
            distributed.destroy()

    def _train(self, cfg, rundir: RunDir) -> dict:
        import torch

        from saul.train import distributed

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # rank logs are files: no progress bars in them
        info = distributed.rank_info()
        say = _sayer(info.rank)
        device = distributed.device_for(info, cfg.site)  # ConfigError (exit 2) on a GPU site without a GPU
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn about guessing it
        # DeepSpeed 0.19 calls collectives torch 2.13 renamed: one warning per call would flood the logs.
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        threads = distributed.set_cpu_threads(cfg.train.threads_per_rank, info.local_world_size)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        distributed.init_process_group(info, device, distributed.collective_timeout_s(cfg.resilience.hang_timeout_s),
                                       trace_dir=rundir.root / "flight-recorder")
        try:
            attempt = Attempt(rundir.ledger, info, cfg.stage, _broadcast_int)
            attempt.start()
            say(f"{cfg.stage} attempt {attempt.number}: {info.world_size} ranks on {info.num_nodes} node(s), "
                f"{cfg.parallel}, device {device}, {threads} CPU threads per rank")
            with ending_recorded(attempt):
                result = self._train_attempt(cfg, rundir, info, device, attempt.number, say)
            attempt.end(**result)
            leave_together(stop_request.current())
            return result
        finally:
            distributed.destroy()

    def _train_attempt(self, cfg, rundir: RunDir, info, device, attempt: int, say) -> dict:
        from saul.config.validate import data_dir
        from saul.train.checkpoint import CheckpointMismatch
        from saul.train.loop import CausalLMTrainer, agree_to_stop

        stop = stop_request.current()
        if agree_to_stop(stop, device):  # asked during imports or rendezvous: nothing built yet, nothing to save
            reason = (f"{stop.describe()} during start-up" if stop.requested else "another rank was asked to stop")
            say(f"stopping before the model build: {reason}; resume with the same command")
            return {"exit_code": exit_codes.STOPPED, "reason": reason, "step": None}
        init_path = ""
        if cfg.model.init_from_stage:
            init_path = str(rundir.run_root / cfg.model.init_from_stage / "final")
            if not Path(init_path, "config.json").is_file():
                raise ConfigError(f"model.init_from_stage={cfg.model.init_from_stage}: no final model at {init_path}; "
                                  f"finish that stage first")
        try:
            trainer = CausalLMTrainer(cfg, rundir, info, device, attempt, say, data_dir(cfg, rundir), init_path)
            trainer.resume()
        except CheckpointMismatch as exc:
            raise ConfigError(str(exc)) from None
        outcome = trainer.train()
        return {"exit_code": outcome.exit_code, "step": outcome.step, "reason": outcome.reason, **outcome.fields}


def _broadcast_int(value: int) -> int:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(t, src=0)
    return int(t.item())


LEAVE_TIMEOUT_S = 600.0  # ranks without a process group wait this long for each other at the end


@contextmanager
def ending_recorded(attempt: Attempt):
    """An error that ends the attempt is in its attempt_end too (rank 0), then goes on up."""
    from saul.data.dataset import DatasetError

    try:
        yield
    except (ConfigError, DatasetError) as exc:
        attempt.end(exit_codes.CONFIG_ERROR, str(exc))
        raise
    except BaseException as exc:  # a crash, or SystemExit(128+N) from a second stop signal
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
        attempt.end(code, f"{type(exc).__name__}: {exc}"[:500])
        raise


def leave_together(stop: stop_request.StopRequest) -> None:
    """Every rank leaves after every rank has finished its writes (rank 0's attempt_end included).

    Under `srun --kill-on-bad-exit=1` the first rank to exit with 75 makes Slurm SIGTERM the others
    (and SIGKILL them KillWait later): past this barrier they only exit, so that SIGTERM is ignored
    and srun reports 75 for every rank, not a crash."""
    from saul.train.distributed import barrier

    stop.leaving()
    barrier()


def leave_together_without_group(stop: stop_request.StopRequest, folder: Path, info,
                                 timeout_s: float = LEAVE_TIMEOUT_S) -> bool:
    """`leave_together` for ranks that share no process group (prepare's ranks): each rank leaves a
    marker on the shared filesystem and waits for the others'. False when some never came (a crashed
    rank: Slurm ends the step anyway)."""
    stop.leaving()
    if info.world_size <= 1:
        return True
    key = f"leaving-{info.job_id}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    here = folder / key
    here.mkdir(parents=True, exist_ok=True)
    (here / f"rank{info.rank}").touch()
    if info.rank == 0:  # every rank left the earlier attempts' meeting points
        for old in folder.glob("leaving-*"):
            if old.name != key:
                shutil.rmtree(old, ignore_errors=True)
    deadline = time.time() + timeout_s
    while sum(1 for _ in here.iterdir()) < info.world_size:
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


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
