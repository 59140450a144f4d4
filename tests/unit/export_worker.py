"""One rank of the sharded-export check (tests/unit/test_export.py): tiny Mixtral under ZeRO-3 on
CPU, one training step, then final/ written shard by shard. Rank 0 also saves DeepSpeed's own
consolidated copy of the trained weights, the independent reference the test compares with."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from saul.config.compose import compose  # noqa: E402
from saul.train import distributed  # noqa: E402
from saul.train.engine import Zero3Engine  # noqa: E402
from saul.train.export import export_final  # noqa: E402


def main(rank: int, port: int, root: Path, shard_gb: float) -> None:
    torch.set_num_threads(1)
    info = distributed.RankInfo(rank, rank, 2, 2, 0, 1, "t", "127.0.0.1", port, "localhost")
    distributed.init_process_group(info, torch.device("cpu"), 120)
    cfg = compose(["stage=cpt", "model=tiny-mixtral", "site=local", "parallel=zero3", "train.micro_batch=1",
                   "train.grad_accum=1", "train.seq_len=16", "optim.lr=1e-2", "optim.warmup_steps=0"], env={}).cfg
    engine = Zero3Engine(cfg, torch.device("cpu"))
    ids = torch.randint(0, cfg.model.vocab_size, (1, cfg.train.seq_len), generator=torch.Generator().manual_seed(rank))
    engine.micro_step(ids, last=True)
    engine.optimizer_step()
    reference = engine.engine._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0 only
    if rank == 0:
        torch.save({k: v.clone() for k, v in reference.items()}, root / "reference.pt")
    export_final(engine.module, root, shard_gb, rank, 2, None, distributed.barrier, distributed.all_gather_objects)
    distributed.destroy()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]))
