"""The step loop every training stage runs (cpt, anneal, ift, dpo): resume, train, checkpoint, stop
on request, export.

A stage hands the loop its `StepWork` (its data, how a micro-batch becomes a loss, its figures)
and its engine (saul/train/engine.py); everything else is here, once: the heartbeat, the stop vote
(carried in the step's one all-reduce with the loss and the stage's figures), the checkpoint
cadence, metrics.jsonl and the attempt_end fields.

Data position is counted in samples consumed: the global batch at position p is a pure
function of (p, global batch, dataset, seed), so resuming at the checkpoint's position replays
exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import psutil
import torch
import torch.distributed as dist

from saul import exit_codes
from saul.config.model_size import count_parameters
from saul.data.dataset import global_batch_ids, rank_slice
from saul.resilience import ledger, stop_request
from saul.resilience.checkpoint_interval import Cadence
from saul.resilience.heartbeat import Heartbeat
from saul.resilience.stop_request import StopRequest
from saul.rundir import RunDir
from saul.train import checkpoint as ckpt
from saul.train.async_checkpoint import AsyncSaver
from saul.train.distributed import RankInfo, all_gather_objects, barrier, broadcast_object
from saul.train.metrics import MetricsWriter

log = logging.getLogger("saul.train")


@dataclass
class Position:
    step: int = 0
    samples: int = 0
    tokens: int = 0


@dataclass
class Outcome:
    exit_code: int
    step: int
    reason: str
    fields: dict = field(default_factory=dict)  # what the attempt_end adds for a training stage


def batch_digest(ids: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def _plain(section):
    """A config section as plain attributes for the step loop: OmegaConf's attribute access costs
    ~20 us, and the loop reads a dozen per step (~2 % of a tiny model's step)."""
    from types import SimpleNamespace

    from omegaconf import DictConfig, OmegaConf

    return SimpleNamespace(**OmegaConf.to_container(section)) if isinstance(section, DictConfig) else section


def agree_to_stop(stop: StopRequest, device: Optional[torch.device] = None) -> bool:
    """The stop vote on its own (a collective: every rank calls it at the same point)."""
    return _all_reduce_sum([0.0, 1.0 if stop.requested else 0.0], device)[1] > 0


def _all_reduce_sum(values, device: Optional[torch.device] = None) -> list:
    t = torch.tensor(values, dtype=torch.float64, device=device if device is not None else "cpu")
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def find_resume_point(root: Path, info: RankInfo, warn) -> Optional[tuple]:
    """Newest checkpoint whose manifest and files verify; every rank checks a share of the files."""
    candidates = broadcast_object([(s, str(p)) for s, p in ckpt.list_step_dirs(root)])
    for step, path_str in candidates:
        path = Path(path_str)
        try:
            manifest = ckpt.read_manifest(path)
            problem = ckpt.verify_share(path, manifest, info.rank, info.world_size)
        except (ValueError, OSError) as exc:
            manifest, problem = None, str(exc)
        problems = sorted({p for p in all_gather_objects(problem) if p})
        if not problems:
            return path, manifest
        warn(f"skipping checkpoint {path.name}: {'; '.join(problems)}")
    return None


class StepWork:
    """What a training stage gives the step loop. The defaults are causal-LM pretraining on packed
    token rows (cpt, anneal); ift and dpo override `batch`, `loss_of`, `figures` and `tokens`."""

    def __init__(self, dataset, seq_len: int, tokenizer_dir: Optional[Path] = None):
        self.dataset = dataset  # len() rows, .fingerprint, .get_batch(ids)
        self.seq_len = seq_len
        self.tokenizer_dir = tokenizer_dir  # copied into final/
        self.data_report: dict = {}  # what became of the stage's input (kept/truncated/dropped...): metrics + ledger

    def batch(self, ids: np.ndarray, device: torch.device):
        """The micro-batch of rows `ids`, on `device`."""
        return torch.from_numpy(self.dataset.get_batch(ids)).to(device)

    def loss_of(self, batch, global_ids: np.ndarray) -> Optional[Callable]:
        """None: the engine's causal-LM loss on the batch; otherwise `f(model) -> loss tensor`."""
        return None

    def figures(self) -> Dict[str, float]:
        """This rank's stage figures since the last call (averaged over ranks into metrics.jsonl)."""
        return {}

    def tokens(self, global_ids: np.ndarray) -> int:
        """Tokens in the global batch, for tokens/s."""
        return len(global_ids) * self.seq_len

    def state(self) -> dict:
        """Extra checkpoint-state fields a resume must match."""
        return {}


class StepLoop:
    def __init__(self, cfg, rundir: RunDir, info: RankInfo, device: torch.device, attempt: int, say,
                 work: StepWork, engine):
        self.cfg, self.rundir, self.info, self.device, self.attempt, self.say = cfg, rundir, info, device, attempt, say
        self.work = work
        self.dataset = work.dataset
        t = cfg.train
        self.global_batch = t.micro_batch * t.grad_accum * info.world_size
        self.engine = engine
        say(self.engine.describe)
        self.metrics = MetricsWriter(rundir.metrics, enabled=info.is_main)
        # checkpoint.every_steps: N, or auto (Young's interval, re-chosen by rank 0 after each save)
        self.cadence = Cadence(cfg.checkpoint.every_steps, info.is_main, info.world_size,
                               broadcast_object, self.metrics.write,
                               lambda: ledger.read(rundir.ledger), lambda: ledger.read(rundir.metrics))
        self.stop = stop_request.current()  # installed at task start: a start-up signal is already in it
        self.heartbeat = Heartbeat(rundir.heartbeats, enabled=info.is_main, job_id=info.job_id, attempt=attempt)
        self.pos = Position()
        self.resumed_from: Optional[str] = None
        self.last_saved_step = -1
        # checkpoint.async_save: engines that can snapshot their state (DDP) write it in the background;
        # ZeRO-3's save goes through DeepSpeed's collectives and stays synchronous.
        self.saver = None
        if cfg.checkpoint.async_save and hasattr(engine, "snapshot"):
            self.saver = AsyncSaver(info.rank, info.world_size, float(cfg.resilience.hang_timeout_s))
        elif cfg.checkpoint.async_save:
            say(f"checkpoint.async_save: {engine.name} saves synchronously (DeepSpeed writes from the live shards)")
        self.save_totals = {"checkpoint_saves": 0, "checkpoint_blocking_s": 0.0, "checkpoint_background_s": 0.0}
        m = cfg.model
        self.flops_per_token = count_parameters(m).flops_per_token(t.seq_len, m.hidden_size, m.num_hidden_layers)
        self.peak_flops = cfg.site.peak_tflops_bf16_per_device * 1e12 * info.world_size
        self.fields: dict = {"data": work.data_report} if work.data_report else {}  # added to the attempt_end
        if work.data_report:
            self.metrics.write({"event": "data", "attempt": attempt, **work.data_report})

    # --- state -------------------------------------------------------------------------------
    def expected_state(self) -> dict:
        return {"dataset_fingerprint": self.dataset.fingerprint, "global_batch": self.global_batch,
                "seq_len": self.cfg.train.seq_len, "parallel": self.cfg.parallel,
                "world_size": self.info.world_size, **self.work.state()}

    def resume(self) -> None:
        self.heartbeat.beat(0, "load")
        found = find_resume_point(self.rundir.checkpoints, self.info, self.say)
        if found is None:
            self.say("no valid checkpoint: starting from step 0")
            return
        path, manifest = found
        state = manifest["state"]
        ckpt.check_resumable(state, self.expected_state())
        t0 = time.time()
        self.engine.load_files(path, self.info.rank)
        self.pos = Position(state["step"], state["samples_consumed"], state["tokens_consumed"])
        self.resumed_from = path.name
        self.last_saved_step = self.pos.step
        self.say(f"resumed from {path.name} (step {self.pos.step}, {self.pos.samples} samples) in {time.time() - t0:.2f}s")

    def save(self) -> float:
        """Checkpoint the state after this step; the seconds training stalled for it (the whole save, or for an
        asynchronous one the snapshot: Young's interval uses this). At most one save in flight: a previous
        one is finished first (waiting for it counts as this save's stall)."""
        t0 = time.time()
        self.settle_save()
        self.heartbeat.beat(self.pos.step, "save")
        root, step = self.rundir.checkpoints, self.pos.step
        tmp = Path(broadcast_object(str(ckpt.begin_save(root, step)) if self.info.is_main else None))
        state = dict(self.expected_state(), step=step, samples_consumed=self.pos.samples,
                     tokens_consumed=self.pos.tokens, attempt=self.attempt) if self.info.is_main else None
        self.last_saved_step = step
        if self.saver is not None:
            files = self.engine.snapshot(self.info.rank)
            self.metrics.sync()  # metrics never lag the checkpoint
            blocking = time.time() - t0
            self.saver.start(root, tmp, step, files, state, self.cfg.checkpoint.keep_last, blocking)
            return blocking
        self.engine.save_files(tmp, self.info.rank)
        barrier()
        files = ckpt.relative_files(tmp)
        share = ckpt.hash_share(tmp, files, self.info.rank, self.info.world_size)
        shares = all_gather_objects(share)
        if self.info.is_main:
            merged = {k: v for s in shares for k, v in s.items()}
            ckpt.commit_save(root, tmp, step, merged, state, self.cfg.checkpoint.keep_last)
            self.metrics.sync()
        barrier()
        seconds = time.time() - t0
        self._record_save({"step": step, "blocking_s": seconds, "background_s": 0.0}, "sync")
        return seconds

    def poll_save(self) -> None:
        """After every step: record a background save that finished (raises its error on the rank it failed on)."""
        if self.saver is not None and self.saver.in_flight:
            done = self.saver.poll()
            if done is not None:
                self._record_save(done, "async")

    def settle_save(self) -> None:
        """Wait for the save in flight (before the next one, the final export and a stop)."""
        if self.saver is not None and self.saver.in_flight:
            self.heartbeat.beat(self.pos.step, "save")  # the watchdog does not count checkpoint I/O as a hang
            self._record_save(self.saver.wait(), "async")

    def _record_save(self, done: dict, mode: str) -> None:
        """metrics.jsonl `checkpoint` record (written once the checkpoint is complete): `seconds` is the stall of
        training, `background_s` the write + fsync + hash + commit that overlapped it; totals go to attempt_end."""
        t = self.save_totals
        t["checkpoint_saves"] += 1
        t["checkpoint_blocking_s"] = round(t["checkpoint_blocking_s"] + done["blocking_s"], 4)
        t["checkpoint_background_s"] = round(t["checkpoint_background_s"] + done["background_s"], 4)
        self.cadence.written(done["background_s"])
        self.metrics.write({"event": "checkpoint", "step": done["step"], "seconds": round(done["blocking_s"], 4),
                            "background_s": round(done["background_s"], 4), "mode": mode, "attempt": self.attempt})

    # --- the loop ----------------------------------------------------------------------------
    def train(self) -> Outcome:
        cfg, t, info = self.cfg, _plain(self.cfg.train), self.info
        seed = int(cfg.seed)
        ledger_start = self.pos.step
        steps_this_attempt = 0
        first_step_at: Optional[float] = None
        # Recovery time counts from the process start: imports, model build and checkpoint load included.
        t_attempt = psutil.Process().create_time()
        # The first safe point: a stop asked during start-up (imports, rendezvous, model build, resume)
        # ends the attempt here, at the checkpoint it resumed from.
        if self.pos.step < t.max_steps and agree_to_stop(self.stop, self.device):
            reason = f"{self.stop.describe()} during start-up" if self.stop.requested else "another rank was asked to stop"
            self.say(f"stopping before step {self.pos.step + 1}: {reason}; resume with the same command")
            return self._finish(exit_codes.STOPPED, reason, ledger_start, first_step_at, t_attempt)
        while self.pos.step < t.max_steps:
            self.heartbeat.beat(self.pos.step, "train")
            t0 = time.time()
            ids = global_batch_ids(self.pos.samples, self.global_batch, len(self.dataset), seed)
            micro_batches = rank_slice(ids, info.rank, info.world_size, t.micro_batch, t.grad_accum)
            losses = []
            for k, micro_ids in enumerate(micro_batches):
                batch = self.work.batch(micro_ids, self.device)
                losses.append(self.engine.micro_step(batch, last=k == t.grad_accum - 1,
                                                     loss_of=self.work.loss_of(batch, ids)))
            grad_norm, lr = self.engine.optimizer_step()
            figures = self.work.figures()
            names = sorted(figures)  # the same names on every rank: one fixed layout in the all-reduce
            self.pos = Position(self.pos.step + 1, self.pos.samples + self.global_batch,
                                self.pos.tokens + self.work.tokens(ids))
            steps_this_attempt += 1
            if steps_this_attempt == t.stop_after_steps:
                self.stop.request(f"train.stop_after_steps={t.stop_after_steps} reached")
            # One all-reduce carries the loss, the stop vote and the stage's figures: every rank stops
            # at the same step.
            loss_sum, votes, *sums = _all_reduce_sum(
                [float(np.mean(losses)), 1.0 if self.stop.requested else 0.0] + [figures[n] for n in names],
                self.device)
            loss = loss_sum / info.world_size
            figures = {n: v / info.world_size for n, v in zip(names, sums)}
            stop_now = votes > 0
            step_time = time.time() - t0
            if first_step_at is None:
                first_step_at = time.time()
            if self.pos.step % t.log_every == 0 or self.pos.step == t.max_steps or stop_now:
                self._log_step(ids, loss, lr, grad_norm, step_time, figures)
            self.poll_save()
            if self.cadence.due(self.pos.step, step_time) or self.pos.step == t.max_steps:
                self.cadence.saved(self.pos.step, self.save())
            if stop_now and self.pos.step < t.max_steps:
                reason = self.stop.describe() if self.stop.requested else "another rank was asked to stop"
                if cfg.checkpoint.save_on_stop and self.last_saved_step != self.pos.step:
                    self.save()
                self.settle_save()  # the stop leaves a complete checkpoint
                self.say(f"stopping at step {self.pos.step}: {reason}; resume with the same command")
                return self._finish(exit_codes.STOPPED, reason, ledger_start, first_step_at, t_attempt)
        self.settle_save()
        self.export_final()
        return self._finish(exit_codes.DONE, "max_steps reached", ledger_start, first_step_at, t_attempt)

    def _log_step(self, ids, loss, lr, grad_norm, step_time, figures: Dict[str, float]) -> None:
        t = self.cfg.train
        tokens = self.work.tokens(ids)
        record = {**figures, "step": self.pos.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "step_time_s": round(step_time, 6), "tokens_per_s": round(tokens / max(step_time, 1e-9), 2),
                  "tokens": self.pos.tokens, "samples": self.pos.samples, "max_steps": t.max_steps,
                  "batch_digest": batch_digest(ids), "attempt": self.attempt}
        if self.peak_flops:  # model FLOPs utilisation against the site's bf16 peak
            record["mfu"] = round(self.flops_per_token * tokens / max(step_time, 1e-9) / self.peak_flops, 5)
        if t.log_sample_ids:
            record["sample_ids"] = [int(i) for i in ids]
        self.metrics.write(record)
        if self.info.is_main:
            self.say(f"step {self.pos.step}/{t.max_steps} loss {loss:.4f} lr {lr:.2e} "
                     f"{record['tokens_per_s']:.0f} tok/s {step_time * 1000:.0f} ms/step")

    def _finish(self, code, reason, start_step, first_step_at, t_attempt) -> Outcome:
        """The stage runner writes the attempt_end from the outcome, then all ranks leave together."""
        self.settle_save()
        self.heartbeat.beat(self.pos.step, "done")
        self.metrics.close()
        return Outcome(code, self.pos.step, reason, {**self.fields, **self.save_totals,
            "step_start": start_step, "step_end": self.pos.step, "tokens_end": self.pos.tokens,
            "resumed_from": self.resumed_from,
            "time_to_first_step_s": round(first_step_at - t_attempt, 3) if first_step_at else None,
        })

    def export_final(self) -> None:
        """`final/`: an HF-format model directory (config, sharded safetensors, tokenizer) for the next
        stage, one module at a time (no rank holds the whole model), swapped in atomically."""
        from saul.train.export import export_final

        out = export_final(self.engine.module, self.rundir.root, self.cfg.checkpoint.export_shard_gb, self.info.rank,
                           self.info.world_size, self.work.tokenizer_dir, barrier, all_gather_objects)
        self.say(f"final model written to {out}")
