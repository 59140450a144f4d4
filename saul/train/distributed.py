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
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from saul.binding import VISIBILITY, is_gpu_site
from saul.config.errors import ConfigError
from saul.resilience.watchdog import collective_timeout_s  # noqa: F401  (one formula, shared with the watchdog)

# Outside Linux's default ephemeral range (32768-60999), where srun/slurmstepd sockets would collide.
PORT_BASE, PORT_SPAN = 20000, 12000


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
    """The fallback outside Slurm's batch script, which exports a MASTER_PORT it found free
    (saul.resilience.rendezvous_port): a port every rank derives alone, below the ephemeral range."""
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


def device_for(info: RankInfo, site=None) -> torch.device:
    """One rank per GPU device; the binding already restricted visibility, so index by local rank.

    On a GPU site a rank that sees no device stops (exit 2): training 8x22B on a CPU would
    only burn the allocation."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:  # ROCm builds answer here too
        count = torch.cuda.device_count()
        device = torch.device("cuda", info.local_rank % count)
        torch.cuda.set_device(device)
        return device
    if site is not None and is_gpu_site(site):
        var = VISIBILITY[site.gpu_vendor]
        runtime = "ROCm" if site.gpu_vendor == "amd" else "CUDA"
        build = torch.version.hip or torch.version.cuda
        raise ConfigError(
            f"rank {info.rank} (local rank {info.local_rank} on {info.hostname}) sees no GPU on site '{site.name}' "
            f"({site.gpus_per_node} {site.gpu_vendor} devices per node; {var}={os.environ.get(var, '<unset>')}, "
            f"torch {torch.__version__} built {'for ' + runtime + ' ' + build if build else 'without GPU support'}): "
            f"request the node's GPUs (--gpus-per-node / --gres), run the container with "
            f"site.container.gpu_flag={'--rocm' if site.gpu_vendor == 'amd' else '--nv'} and an image with a {runtime} "
            f"build of torch, or use a CPU site (site=local)")
    return torch.device("cpu")


def backend_for(device: torch.device) -> str:
    """One backend per device type: CPU tensors (stop vote, broadcasts, object collectives) go over
    gloo even on GPUs, device tensors over NCCL (RCCL on ROCm builds: torch calls it nccl too)."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "cpu:gloo"


# The flight recorder's dump file prefix: the current name and the older one torch still reads.
TRACE_FILE_VARS = ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE")


def init_process_group(info: RankInfo, device: torch.device, timeout_s: float = 1020.0,
                       trace_dir: Optional[Path] = None) -> str:
    """Export the torch.distributed variables (DeepSpeed reads them too) and join the group.

    `trace_dir`: where NCCL/RCCL's flight recorder dumps on a timeout or error (the site file
    turns the recorder on); a value the site sets wins. Returns the backend string."""
    os.environ.update(
        RANK=str(info.rank), LOCAL_RANK=str(info.local_rank), WORLD_SIZE=str(info.world_size),
        LOCAL_WORLD_SIZE=str(info.local_world_size), MASTER_ADDR=info.master_addr, MASTER_PORT=str(info.master_port),
    )
    backend = backend_for(device)
    if trace_dir is not None and device.type == "cuda":
        trace_dir.mkdir(parents=True, exist_ok=True)
        prefix = str(trace_dir / "rank_")  # torch appends the rank
        for var in TRACE_FILE_VARS:
            os.environ.setdefault(var, prefix)
    if dist.is_initialized():
        return backend
    dist.init_process_group(
        backend=backend, rank=info.rank, world_size=info.world_size,
        timeout=_dt.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    return backend


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


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (pickled: small objects only); itself outside a process group."""
    if not dist.is_initialized():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (pickled: small objects only)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on one of them."""
    return all_reduce_max(1.0 if flag else 0.0) > 0.0


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
