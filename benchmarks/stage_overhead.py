"""Overhead of our stage code versus a bare PyTorch loop on the same model and the same batches.

    python benchmarks/stage_overhead.py [--steps 200] [--repeats 3]

Both run in this process, one after the other, repeated and interleaved: the tiny Mixtral, one
rank, AdamW, micro-batch x grad-accum from the tiny preset. "Ours" is StepLoop.train()
(sampler, heartbeat, stop vote, metrics.jsonl, LR schedule, grad clipping; no checkpoint inside
the timed window); "bare" is forward/backward/step on the same sample ids. Prints seconds per
step for each and the ratio ours/bare (best of the repeats).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from saul.config.compose import compose  # noqa: E402
from saul.data.dataset import PackedDataset, global_batch_ids, rank_slice  # noqa: E402
from saul.data.prepare import prepare_dataset  # noqa: E402
from saul.rundir import RunDir  # noqa: E402
from saul.train.distributed import RankInfo  # noqa: E402
from saul.train.engine import lr_lambda  # noqa: E402
from saul.train.engine import make_engine  # noqa: E402
from saul.train.loop import StepLoop, StepWork  # noqa: E402
from saul.train.model import build_model  # noqa: E402


def config(root: Path, steps: int):
    cfg = compose(["stage=cpt", "model=tiny-mixtral", "site=local", f"runs_root={root}", "run=bench",
                   f"train.max_steps={steps}", f"checkpoint.every_steps={10 * steps}"], env={}).cfg
    return cfg


def run_ours(cfg, data: Path, root: Path) -> float:
    rundir = RunDir(root, f"bench-{time.time_ns()}", "cpt")
    info = RankInfo(0, 0, 1, 1, 0, 1, "bench", "127.0.0.1", 0, "localhost")
    dataset = PackedDataset(data)
    work = StepWork(dataset, cfg.train.seq_len, dataset.path / "tokenizer")
    device = torch.device("cpu")
    trainer = StepLoop(cfg, rundir, info, device, 1, lambda *a, **k: None, work, make_engine(cfg, device))
    trainer.export_final = lambda: None  # not part of a training step
    trainer.save = lambda: 0.0  # only the max_steps checkpoint would fall in the window
    t0 = time.perf_counter()
    trainer.train()
    return (time.perf_counter() - t0) / cfg.train.max_steps


def run_bare(cfg, data: Path) -> float:
    dataset = PackedDataset(data)
    model, _ = build_model(cfg.model, torch.device("cpu"), cfg.seed)
    o, t = cfg.optim, cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o, t.max_steps))
    global_batch = t.micro_batch * t.grad_accum
    batches = [rank_slice(global_batch_ids(s * global_batch, global_batch, len(dataset), cfg.seed), 0, 1,
                          t.micro_batch, t.grad_accum) for s in range(t.max_steps)]
    t0 = time.perf_counter()
    for micro_batches in batches:
        for ids in micro_batches:
            x = torch.from_numpy(dataset.get_batch(ids))
            (model(input_ids=x, labels=x).loss / t.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / t.max_steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = config(root, args.steps)
        data = root / "data"
        prepare_dataset(cfg.data, cfg.train.seq_len, cfg.seed, data)
        ours, bare = [], []
        for _ in range(args.repeats):
            bare.append(run_bare(cfg, data))
            ours.append(run_ours(cfg, data, root))
    b, o = min(bare), min(ours)
    print(f"tiny-mixtral, 1 rank, {cfg.train.micro_batch}x{cfg.train.grad_accum} x {cfg.train.seq_len} tokens, "
          f"{args.steps} steps, best of {args.repeats}")
    print(f"bare PyTorch loop : {b * 1000:.2f} ms/step")
    print(f"saul stage loop   : {o * 1000:.2f} ms/step")
    print(f"overhead ratio    : {o / b:.3f} (ours / bare)")


if __name__ == "__main__":
    main()
