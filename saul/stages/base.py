"""The stage interface, and what every stage gets from it without copying: rank set-up, the attempt
records, ending recorded on an error, leaving together.

A stage is a subclass of `Stage` (one module per stage, see saul/stages/__init__.py). The runner
`run_stage` does, for every stage and every rank:

    stop handling (installed by the entry point) -> rank info, device, CPU threads, process group
    -> attempt_start (rank 0) -> stage.run(ctx) -> attempt_end (rank 0; also on an error)
    -> every rank leaves together -> process group destroyed

Training stages (`TrainingStage`, saul/stages/training.py) add the step loop's machinery on top:
heartbeat, stop vote, checkpoint cadence, exact data position, metrics, export. The node power
meter is started by the launcher for every stage's job, so energy needs nothing here.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import warnings
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from saul import exit_codes
from saul.config.errors import ConfigError
from saul.resilience import stop_request
from saul.resilience.attempt import Attempt
from saul.rundir import RunDir

LEAVE_TIMEOUT_S = 600.0  # ranks without a process group wait this long for each other at the end


@dataclass
class StageContext:
    """What a stage's code is handed: the frozen config, its directory and this rank."""

    cfg: object
    rundir: RunDir
    info: object  # saul.train.distributed.RankInfo
    device: object  # torch.device, or None for stages without a process group
    say: Callable[..., None]
    attempt: int  # the attempt number (the ledger's)


class Stage(ABC):
    """One stage of a run. Subclasses set `name` and implement `run` (one attempt's work, returning
    {"exit_code", "reason", "step", ...}: the attempt_end fields)."""

    name = ""
    # False: ranks share no torch.distributed group (prepare: each rank runs its own shards, and
    # imports no torch); they meet at the end on the shared filesystem instead.
    process_group = True

    @abstractmethod
    def run(self, ctx: StageContext) -> dict:
        """One attempt's work; returns the attempt_end fields."""


def sayer(rank: int):
    host = socket.gethostname()

    def say(message: str, all_ranks: bool = False) -> None:
        if rank == 0 or all_ranks:
            sys.stdout.write(f"[{time.strftime('%H:%M:%S')} {host} rank {rank}] {message}\n")
            sys.stdout.flush()

    return say


def broadcast_int(value: int) -> int:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(t, src=0)
    return int(t.item())


def run_stage(stage: Stage, cfg, rundir: RunDir) -> dict:
    """One attempt of `stage` on this rank, inside the shared attempt records."""
    from saul.train.distributed import rank_info

    info = rank_info()
    say = sayer(info.rank)
    if not stage.process_group:
        attempt = Attempt(rundir.ledger, info, cfg.stage)
        attempt.start()
        with ending_recorded(attempt):
            result = stage.run(StageContext(cfg, rundir, info, None, say, attempt.number))
        attempt.end(**result)
        leave_together_without_group(stop_request.current(), rundir.heartbeats, info)
        return result

    import torch
    from transformers.utils import logging as hf_logging

    from saul.train import distributed

    hf_logging.disable_progress_bar()  # rank logs are files: no progress bars in them
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
        attempt = Attempt(rundir.ledger, info, cfg.stage, broadcast_int)
        attempt.start()
        say(f"{cfg.stage} attempt {attempt.number}: {info.world_size} ranks on {info.num_nodes} node(s), "
            f"{cfg.parallel}, device {device}, {threads} CPU threads per rank")
        with ending_recorded(attempt):
            result = stage.run(StageContext(cfg, rundir, info, device, say, attempt.number))
        attempt.end(**result)
        leave_together(stop_request.current())
        return result
    finally:
        distributed.destroy()


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


def init_model_path(cfg, rundir: RunDir) -> str:
    """The HF directory a stage starts from: <run>/<init_from_stage>/final, or model.path, or ''."""
    if cfg.model.init_from_stage:
        path = rundir.run_root / cfg.model.init_from_stage / "final"
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.init_from_stage={cfg.model.init_from_stage}: no final model at {path}; "
                              f"finish that stage first")
        return str(path)
    return ""


def stopped_before_start(ctx: StageContext, what: str) -> Optional[dict]:
    """The stop vote before anything is built (a collective): the attempt result when asked to stop."""
    from saul.train.loop import agree_to_stop

    stop = stop_request.current()
    if not agree_to_stop(stop, ctx.device):
        return None
    reason = f"{stop.describe()} during start-up" if stop.requested else "another rank was asked to stop"
    ctx.say(f"stopping before {what}: {reason}; resume with the same command")
    return {"exit_code": exit_codes.STOPPED, "reason": reason, "step": None}
