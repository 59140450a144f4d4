"""Two ways to hold a model across ranks behind one interface: plain DDP and DeepSpeed ZeRO-3.

The step loop only calls `micro_step`, `optimizer_step`, `save_files`, `load_files`, and hands
`module` (the HF model, ZeRO-3-partitioned or whole) to saul.train.export; everything
backend-specific (no_sync, ZeRO partitions, DeepSpeed's own checkpoint layout) stays here.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.distributed as dist

from saul.train.model import build_model


def lr_lambda(optim_cfg, max_steps: int):
    """LR factor per optimizer step. The horizon is optim.schedule_steps (frozen at the first submit, so a
    later train.max_steps change never bends the curve under a resume); 0 (old configs) = max_steps."""
    warmup, floor = optim_cfg.warmup_steps, optim_cfg.min_lr_ratio
    max_steps = getattr(optim_cfg, "schedule_steps", 0) or max_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if optim_cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        if optim_cfg.schedule == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_rng_state(directory: Path, rank: int, elastic: bool) -> None:
    """This rank's RNG state from the checkpoint. With elastic resume (resilience.allow_shrink) onto more ranks
    than the checkpoint had (back to the configured size after a shrink), a rank it has no state for keeps
    the RNG seeded at model build: the data order does not depend on it."""
    rng = directory / f"rng-rank{rank:05d}.pt"
    if rng.is_file() or not elastic:
        set_rng_state(torch.load(rng, weights_only=False))


def _loss(outputs) -> torch.Tensor:
    # HF adds router_aux_loss_coef * load-balancing loss to `loss` when output_router_logits=True.
    return outputs.loss


class DDPEngine:
    """Full replica per rank; gradients all-reduced once per optimizer step (no_sync in between)."""

    name = "ddp"

    def __init__(self, cfg, device: torch.device, init_path: str = "", prepare_module=None):
        self.cfg, self.device = cfg, device
        model, self.describe = build_model(cfg.model, device, cfg.seed, init_path=init_path)
        if prepare_module is not None:  # a stage's patch of the HF model, before DDP wraps it (DPO's fused head)
            prepare_module(model)
        self.module = model
        distributed = dist.is_initialized() and dist.get_world_size() > 1
        self.model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(o, cfg.train.max_steps))

    def micro_step(self, input_ids, last: bool, loss_of=None) -> float:
        """`loss_of(model) -> loss`: a stage's own loss on its batch; None = causal LM on input_ids."""
        sync = last or not isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        context = self.model.no_sync() if not sync else _null()
        with context:
            loss = loss_of(self.model) if loss_of else _loss(self.model(input_ids=input_ids, labels=input_ids))
            (loss / self.cfg.train.grad_accum).backward()
        return float(loss.detach())

    def optimizer_step(self) -> Tuple[float, float]:
        clip = self.cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip if clip > 0 else float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm), lr

    def snapshot(self, rank: int, copy: bool = True) -> dict:
        """This rank's checkpoint files as host objects (file name -> object): rank 0 the model, optimizer and
        scheduler state, every rank its RNG state. With copy, nothing shares memory with training, so an
        asynchronous save writes them in the background (saul/train/async_checkpoint.py)."""
        from saul.train.async_checkpoint import host_copy

        files = {}
        if rank == 0:
            files["model.safetensors"] = host_copy(self.module.state_dict(), copy)
            files["optimizer.pt"] = host_copy(self.optimizer.state_dict(), copy)
            files["scheduler.pt"] = host_copy(self.scheduler.state_dict(), copy)
        files[f"rng-rank{rank:05d}.pt"] = rng_state()
        return files

    def save_files(self, directory: Path, rank: int) -> None:
        from saul.train.async_checkpoint import write_files

        write_files(directory, self.snapshot(rank, copy=False))

    def load_files(self, directory: Path, rank: int) -> None:
        from safetensors.torch import load_file

        self.module.load_state_dict(load_file(str(directory / "model.safetensors"), device=str(self.device)))
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=self.device, weights_only=False))
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=False))
        load_rng_state(directory, rank, self.cfg.resilience.allow_shrink)


class Zero3Engine:
    """DeepSpeed ZeRO stage 3: parameters, gradients and optimizer state sharded over all ranks."""

    name = "zero3"

    def __init__(self, cfg, device: torch.device, init_path: str = "", prepare_module=None):
        import deepspeed

        self.cfg, self.device = cfg, device
        # DeepSpeed's comm layer wraps the process group we already joined (it must know the world size).
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        t, o = cfg.train, cfg.optim
        world = dist.get_world_size() if dist.is_initialized() else 1
        self.ds_config = {
            "train_micro_batch_size_per_gpu": t.micro_batch,
            "gradient_accumulation_steps": t.grad_accum,
            "train_batch_size": t.micro_batch * t.grad_accum * world,
            "gradient_clipping": o.grad_clip,
            "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
            "zero_optimization": {
                "stage": 3,
                "overlap_comm": device.type == "cuda",
                "contiguous_gradients": True,
                # 0: shard every parameter, even a tiny model's (the default keeps small ones whole)
                "stage3_param_persistence_threshold": 0,
            },
            # torch_adam: no JIT-compiled fused Adam (needs a compiler and ~65 s on first use on CPU)
            "optimizer": {"type": "AdamW", "params": {"lr": o.lr, "betas": list(o.betas), "eps": o.eps,
                                                      "weight_decay": o.weight_decay, "torch_adam": True}},
            "steps_per_print": 10 ** 9,
            "wall_clock_breakdown": False,
        }
        # With this object alive, transformers builds the model under zero.Init (each rank holds only
        # its shards from the start) and initialises weights correctly inside it: needed for 8x22B.
        from transformers.integrations import HfDeepSpeedConfig

        self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)
        model, self.describe = build_model(cfg.model, device, cfg.seed, zero3=True, init_path=init_path)
        if prepare_module is not None:
            prepare_module(model)
        self.module = model
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, config=self.ds_config, model_parameters=model.parameters(),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o, t.max_steps)),
        )
        self.scheduler = self.engine.lr_scheduler

    def micro_step(self, input_ids, last: bool, loss_of=None) -> float:
        loss = loss_of(self.engine) if loss_of else _loss(self.engine(input_ids=input_ids, labels=input_ids))
        self.engine.backward(loss)  # DeepSpeed scales by 1/grad_accum itself
        if not last:
            self.engine.step()  # only advances DeepSpeed's micro-step counter off the boundary
        return float(loss.detach())

    def optimizer_step(self) -> Tuple[float, float]:
        lr = self.scheduler.get_last_lr()[0]
        self.engine.step()  # at the accumulation boundary: clip, optimizer step, scheduler step
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan"), lr

    def save_files(self, directory: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(directory), tag="zero3", save_latest=False)
        torch.save(rng_state(), directory / f"rng-rank{rank:05d}.pt")

    def load_files(self, directory: Path, rank: int) -> None:
        """The shards as saved on the same world size; on another one (elastic resume, which
        saul.train.checkpoint allows only where the global batch is kept), DeepSpeed's universal form of
        them, made once by rank 0 (saul.train.universal_checkpoint): weights, Adam moments and step carry over."""
        from saul.train import universal_checkpoint
        from saul.train.distributed import broadcast_object

        world = dist.get_world_size() if dist.is_initialized() else 1
        load_dir, tag = directory, "zero3"
        if universal_checkpoint.saved_world_size(directory / tag) != world:
            load_dir = universal_checkpoint.ensure(directory, tag, rank, broadcast_object)
            tag = universal_checkpoint.DONE
        # DeepSpeed reads "checkpoint": {"load_universal"} only inside load_checkpoint: set for this load
        # alone, so a later same-size resume in this process reads shards again.
        self.engine._config.load_universal_checkpoint = tag == universal_checkpoint.DONE
        try:
            path, _ = self.engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        finally:
            self.engine._config.load_universal_checkpoint = False
        if path is None:
            raise RuntimeError(f"DeepSpeed found no ZeRO-3 checkpoint under {load_dir}/{tag}")
        load_rng_state(directory, rank, self.cfg.resilience.allow_shrink)


def _null():
    import contextlib

    return contextlib.nullcontext()


def make_engine(cfg, device: torch.device, init_path: str = "", prepare_module=None):
    return (Zero3Engine if cfg.parallel == "zero3" else DDPEngine)(cfg, device, init_path, prepare_module)
