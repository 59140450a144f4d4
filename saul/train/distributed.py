"""Who am I in the job, and the process group: the same code under Slurm and on the local site.

submitit's JobEnvironment gives global/local rank, world size and hosts both under Slurm (one
task per GPU device) and under its LocalExecutor (N processes on this machine); plain torchrun
variables are honoured too so a rank can be started by hand for debugging.
"""
from __future__ import annotations

import datetime as _dt
import os
import socket
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

PORT_BASE, PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    job_id: str
    master_addr: str
    master_port: int
    hostname: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def port_from_job_id(job_id: str) -> int:
    """A port every rank derives alone: two jobs sharing a node rarely collide, no rendezvous needed."""
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def rank_info(environ=os.environ) -> RankInfo:
    # Only a submitit task reads Slurm's variables: a local run inside an salloc must not.
    if "SUBMITIT_EXECUTOR" in environ or "SUBMITIT_LOCAL_JOB_ID" in environ:
        import submitit

        env = submitit.JobEnvironment()
        hosts = list(env.hostnames) if env.hostnames else ["127.0.0.1"]
        world = env.num_tasks
        nodes = env.num_nodes
        master = environ.get("MASTER_ADDR") or ("127.0.0.1" if nodes == 1 else hosts[0])
        port = int(environ.get("MASTER_PORT") or port_from_job_id(env.job_id))
        return RankInfo(env.global_rank, env.local_rank, world, world // nodes, env.node, nodes,
                        str(env.job_id), master, port, socket.gethostname())
    world = int(environ.get("WORLD_SIZE", "1"))
    local_world = int(environ.get("LOCAL_WORLD_SIZE", str(world)))
    return RankInfo(
        int(environ.get("RANK", "0")), int(environ.get("LOCAL_RANK", "0")), world, local_world,
        int(environ.get("GROUP_RANK", "0")), max(1, world // local_world), environ.get("SAUL_JOB_ID", str(os.getpid())),
        environ.get("MASTER_ADDR", "127.0.0.1"), int(environ.get("MASTER_PORT", "29500")), socket.gethostname(),
    )


def device_for(info: RankInfo) -> torch.device:
    """One rank per GPU device; the launcher already restricted visibility, so index by local rank."""
    if torch.cuda.is_available():  # ROCm builds answer here too
        count = torch.cuda.device_count()
        device = torch.device("cuda", info.local_rank % count)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_process_group(info: RankInfo, device: torch.device, timeout_s: int = 600) -> None:
    """Export the torch.distributed variables (DeepSpeed reads them too) and join the group."""
    os.environ.update(
        RANK=str(info.rank), LOCAL_RANK=str(info.local_rank), WORLD_SIZE=str(info.world_size),
        LOCAL_WORLD_SIZE=str(info.local_world_size), MASTER_ADDR=info.master_addr, MASTER_PORT=str(info.master_port),
    )
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"  # nccl maps to RCCL on ROCm builds
    dist.init_process_group(
        backend=backend, rank=info.rank, world_size=info.world_size,
        timeout=_dt.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )


def set_cpu_threads(threads_per_rank: int, local_world_size: int) -> int:
    """A fixed thread count per rank: reproducible reductions and no oversubscription of the node."""
    if threads_per_rank <= 0:
        threads_per_rank = max(1, (os.cpu_count() or 1) // max(1, local_world_size))
    torch.set_num_threads(threads_per_rank)
    return threads_per_rank


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_max(value: float, device: Optional[torch.device] = None) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_mean(value: float, device: Optional[torch.device] = None) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
