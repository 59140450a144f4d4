"""One rank of the 2-process collective check (tests/unit/test_distributed.py): joins the group the
way every stage does and runs each CPU-tensor collective helper the training path uses."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from saul.stages.base import broadcast_int as _broadcast_int
from saul.train import distributed


def main(rank: int, port: int, out: Path) -> None:
    info = distributed.RankInfo(rank, rank, 2, 2, 0, 1, "t", "127.0.0.1", port, "localhost")
    timeout = distributed.collective_timeout_s(900)
    backend = distributed.init_process_group(info, torch.device("cpu"), timeout, trace_dir=out / "fr")
    stop_vote = torch.tensor([0.5 + rank, 1.0 if rank == 1 else 0.0], dtype=torch.float64)  # as loop.train packs it
    dist.all_reduce(stop_vote, op=dist.ReduceOp.SUM)
    result = {
        "backend": backend, "torch_backend": str(dist.get_backend()),
        "timeout_s": dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu")).options._timeout
        .total_seconds(),
        "broadcast_int": _broadcast_int(41 + rank),
        "max": distributed.all_reduce_max(float(rank * 3)), "mean": distributed.all_reduce_mean(float(rank * 3)),
        "broadcast": distributed.broadcast_object({"from": rank}), "gather": distributed.all_gather_objects(rank * 10),
        "any_rank": [distributed.any_rank(rank == 1), distributed.any_rank(False)],
        "stop_vote": stop_vote.tolist(),
    }
    distributed.barrier()
    # Joining again on a GPU device (a no-op once joined) points the flight recorder's dumps at the run directory.
    distributed.init_process_group(info, torch.device("cuda", 0), timeout, trace_dir=out / "fr")
    result["trace_file"] = os.environ.get("TORCH_FR_DUMP_TEMP_FILE")
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    distributed.destroy()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
