"""Overhead of our stage code versus a bare PyTorch loop on the same model and the same batches.

    python benchmarks/stage_overhead.py [--stages cpt,ift,dpo] [--steps 40] [--repeats 3]

For each stage, both run in this process, repeated and interleaved (who goes first alternates, and
garbage is collected before each timed window, so one run's model is not freed in the other's): the tiny
Mixtral, one rank, AdamW, the tiny preset's sizes for that stage. "Ours" is StepLoop.train() with
the stage's own StepWork (sampler, heartbeat, stop vote, the figures' all-reduce, metrics.jsonl,
LR schedule, grad clipping; no checkpoint inside the timed window); "bare" is forward, loss,
backward and step on the same sample ids with the same batch builder and loss (causal LM, IFT's
assistant-token loss, trl's DPO loss on the same stored reference log-probabilities). Data
building (tokenizing, packing) and DPO's reference pass happen before the timed window in both.
Prints milliseconds per step for each and the ratio ours/bare (best of the repeats).
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from saul.config.compose import compose  # noqa: E402
from saul.data.dataset import global_batch_ids, rank_slice  # noqa: E402
from saul.data.prepare import prepare_dataset  # noqa: E402
from saul.rundir import RunDir  # noqa: E402
from saul.stages import load_stage  # noqa: E402
from saul.stages.base import StageContext  # noqa: E402
from saul.train.distributed import RankInfo  # noqa: E402
from saul.train.engine import lr_lambda, make_engine  # noqa: E402
from saul.train.loop import StepLoop  # noqa: E402
from saul.train.model import build_model  # noqa: E402

INFO = RankInfo(0, 0, 1, 1, 0, 1, "bench", "127.0.0.1", 0, "localhost")
DEVICE = torch.device("cpu")


def quiet(*args, **kwargs) -> None:
    pass


def config(stage: str, root: Path, data: Path, steps: int):
    return compose([f"stage={stage}", "model=tiny-mixtral", "site=local", f"runs_root={root}", "run=bench",
                    f"data.path={data}", f"train.max_steps={steps}", f"checkpoint.every_steps={10 * steps}",
                    "ift.demo_conversations=128", "dpo.demo_pairs=64"], env={}).cfg


def build_loop(stage_name: str, cfg, root: Path):
    """The stage's work and engine in a StepLoop, as saul/stages/training.py builds them."""
    stage = load_stage(stage_name)
    rundir = RunDir(root, f"bench-{time.time_ns()}", stage_name)
    rundir.root.mkdir(parents=True)
    ctx = StageContext(cfg, rundir, INFO, DEVICE, quiet, 1)
    work = stage.build_work(ctx, "")
    loop = StepLoop(cfg, rundir, INFO, DEVICE, 1, quiet, work, make_engine(cfg, DEVICE, "", stage.prepare_module))
    stage.before_resume(ctx, loop)  # DPO: the reference log-probabilities (outside the timed window)
    return loop


def run_ours(stage: str, cfg, root: Path):
    loop = build_loop(stage, cfg, root)
    loop.export_final = lambda: None  # not part of a training step
    loop.save = lambda: 0.0  # only the max_steps checkpoint would fall in the window
    gc.collect()  # the previous run's model is garbage: not collected inside this window
    t0 = time.perf_counter()
    loop.train()
    return (time.perf_counter() - t0) / cfg.train.max_steps, loop.work


def run_bare(stage: str, cfg, work) -> float:
    """The same batches through a plain loop: the stage's batch builder and loss, nothing else."""
    from saul.posttrain.dpo_loss import DpoLoss, DpoLossSettings, prepare_policy

    model, _ = build_model(cfg.model, DEVICE, cfg.seed)
    if stage == "dpo":
        prepare_policy(model)
        dpo_loss = DpoLoss(DpoLossSettings.from_config(cfg.dpo), model, DEVICE)
    o, t = cfg.optim, cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o, t.max_steps))
    global_batch = t.micro_batch * t.grad_accum
    plan = [global_batch_ids(s * global_batch, global_batch, len(work.dataset), cfg.seed) for s in range(t.max_steps)]
    gc.collect()
    t0 = time.perf_counter()
    for ids in plan:
        for micro in rank_slice(ids, 0, 1, t.micro_batch, t.grad_accum):
            if stage == "cpt":
                x = torch.from_numpy(work.dataset.get_batch(micro))
                loss = model(input_ids=x, labels=x).loss
            elif stage == "ift":
                batch = work.dataset.get_batch(micro)
                loss = model(**batch, num_items_in_batch=max(1, work.dataset.loss_tokens(ids)) / t.grad_accum).loss
            else:
                loss = dpo_loss(model, work.dataset.get_batch(micro, work.ref_chosen, work.ref_rejected))[0]
            (loss / t.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / t.max_steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", default="cpt,ift,dpo")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        prepare_dataset(config("prepare", root, data, 1).data, 64, 1234, data)
        for stage in args.stages.split(","):
            cfg = config(stage, root, data, args.steps)
            ours, bare = [], []
            for k in range(args.repeats):  # alternate who goes first: no order advantage
                if k % 2:
                    bare.append(run_bare(stage, cfg, work))
                seconds, work = run_ours(stage, cfg, root)
                ours.append(seconds)
                if k % 2 == 0:
                    bare.append(run_bare(stage, cfg, work))
            b, o = min(bare), min(ours)
            t = cfg.train
            print(f"{stage}: tiny-mixtral, 1 rank, {t.micro_batch}x{t.grad_accum} x {t.seq_len} tokens, "
                  f"{args.steps} steps, best of {args.repeats}")
            print(f"  bare PyTorch loop : {b * 1000:.2f} ms/step")
            print(f"  saul stage loop   : {o * 1000:.2f} ms/step")
            print(f"  overhead ratio    : {o / b:.3f} (ours / bare)", flush=True)


if __name__ == "__main__":
    main()
