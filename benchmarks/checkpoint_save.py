"""Training speed with synchronous versus asynchronous checkpoint saves at the same interval.

    python benchmarks/checkpoint_save.py [--steps 60] [--every-steps 10] [--hidden 256] [--layers 4] [--repeats 5]

One process, one DDP-engine rank on CPU (torch on 1 thread, so the background writer has the other
core), the CPT step loop (StepLoop.train(): the real save path, metrics, heartbeat; final/ export left
out) on a Mixtral scaled up from tiny-mixtral so that a save is worth hiding. Three variants run
interleaved in this process, the order rotating every repeat: no checkpoint inside the run (the
reference), checkpoint.async_save=false and =true, each saving every --every-steps steps; steps/s
is timed from train() until the last step is done (the final save, waited for in both, is left out:
a long run has many saves and one end). Each round runs all three back to back, and the ratios
are taken within a round (a busy machine slows a whole round, not one variant), then the median over
rounds. Prints, for each: steps/s of the whole train() (median), the slowdown against the reference
(median of the per-round ratios), the stall per save (metrics.jsonl `seconds`: what the training
thread waited; for async the snapshot plus any wait for the previous save) and, for async, the background time per save (write + fsync + sha256 + commit,
overlapped with training, at nice 19).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from saul.config.compose import compose  # noqa: E402
from saul.data.prepare import prepare_dataset  # noqa: E402
from saul.resilience import ledger  # noqa: E402
from saul.rundir import RunDir  # noqa: E402
from saul.stages import load_stage  # noqa: E402
from saul.stages.base import StageContext  # noqa: E402
from saul.train.distributed import RankInfo  # noqa: E402
from saul.train.engine import make_engine  # noqa: E402
from saul.train.loop import StepLoop  # noqa: E402

INFO = RankInfo(0, 0, 1, 1, 0, 1, "bench", "127.0.0.1", 0, "localhost")
DEVICE = torch.device("cpu")
VARIANTS = ("no saves", "sync", "async")


def quiet(*args, **kwargs) -> None:
    pass


def config(root: Path, data: Path, args, variant: str):
    every = 10 * args.steps if variant == "no saves" else args.every_steps
    return compose(["stage=cpt", "model=tiny-mixtral", "site=local", f"runs_root={root}", "run=bench",
                    f"data.path={data}", f"train.max_steps={args.steps}", f"checkpoint.every_steps={every}",
                    f"checkpoint.async_save={str(variant == 'async').lower()}", "checkpoint.keep_last=2",
                    f"model.hidden_size={args.hidden}", f"model.intermediate_size={2 * args.hidden}",
                    f"model.num_hidden_layers={args.layers}", "train.log_every=1000", "energy.enabled=false"],
                   env={}).cfg


def run(root: Path, data: Path, args, variant: str) -> dict:
    cfg = config(root, data, args, variant)
    stage = load_stage("cpt")
    rundir = RunDir(root, f"bench-{time.time_ns()}", "cpt")
    rundir.root.mkdir(parents=True)
    work = stage.build_work(StageContext(cfg, rundir, INFO, DEVICE, quiet, 1), "")
    loop = StepLoop(cfg, rundir, INFO, DEVICE, 1, quiet, work, make_engine(cfg, DEVICE, "", stage.prepare_module))
    loop.export_final = lambda: None  # final/ is not part of this comparison
    save, last_step_done = loop.save, []

    def timed_save() -> float:
        last_step_done.append(time.perf_counter())
        return save() if variant != "no saves" else 0.0  # the reference is training alone

    loop.save = timed_save
    gc.collect()
    t0 = time.perf_counter()
    loop.train()
    seconds = last_step_done[-1] - t0  # up to the end of the last step: the final save (waited for) is left out
    saves = [r for r in ledger.read(rundir.metrics) if r.get("event") == "checkpoint"]
    size = sum(p.stat().st_size for p in rundir.checkpoints.rglob("*") if p.is_file()) / max(1, len(
        list(rundir.checkpoints.glob("step-*"))))
    return {"steps_per_s": args.steps / seconds, "saves": len(saves), "size_mb": size / 1e6,
            "stall_s": statistics.mean(r["seconds"] for r in saves) if saves else 0.0,
            "background_s": statistics.mean(r.get("background_s", 0.0) for r in saves) if saves else 0.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every-steps", type=int, default=10, help="checkpoint.every_steps of sync and async")
    parser.add_argument("--hidden", type=int, default=256, help="model.hidden_size (intermediate: 2x)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the three variants")
    args = parser.parse_args(argv)
    if min(args.steps, args.every_steps, args.hidden, args.layers, args.repeats) < 1:
        print("error: --steps, --every-steps, --hidden, --layers and --repeats must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    results = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        prepare_dataset(compose(["stage=prepare", "model=tiny-mixtral", "site=local", f"runs_root={root}"],
                                env={}).cfg.data, 64, 1234, data)
        for k in range(args.repeats):
            order = VARIANTS[k % 3:] + VARIANTS[:k % 3]  # each variant goes first, second and third in turn
            for variant in order:
                results[variant].append(run(root, data, args, variant))
    med = statistics.median
    rounds = range(args.repeats)
    slowdown = {v: med(results["no saves"][k]["steps_per_s"] / results[v][k]["steps_per_s"] for k in rounds)
                for v in VARIANTS}
    print(f"checkpoint saves: Mixtral hidden {args.hidden} x {args.layers} layers, 1 rank (CPU, 1 torch thread), "
          f"{args.steps} steps, a save every {args.every_steps} steps "
          f"(~{results['sync'][0]['size_mb']:.0f} MB each), median of {args.repeats} rounds")
    print(f"  {'variant':<9} {'steps/s':>8} {'slowdown':>9} {'stall/save':>11} {'background/save':>16}")
    for v in VARIANTS:
        rs = results[v]
        stall = f"{med(r['stall_s'] for r in rs) * 1000:.0f} ms" if rs[0]["saves"] else "-"
        background = f"{med(r['background_s'] for r in rs) * 1000:.0f} ms" if v == "async" else "-"
        print(f"  {v:<9} {med(r['steps_per_s'] for r in rs):8.2f} {slowdown[v]:8.3f}x {stall:>11} {background:>16}")
    pair = med(results["async"][k]["steps_per_s"] / results["sync"][k]["steps_per_s"] for k in rounds)
    stall_ratio = med(results["sync"][k]["stall_s"] / max(results["async"][k]["stall_s"], 1e-9) for k in rounds)
    print(f"  async / sync: {pair:.2f}x the steps/s; stall per save {stall_ratio:.0f}x shorter", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
