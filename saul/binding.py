"""Pin a rank to its GPU device and to the CPU cores next to it, before torch initialises the GPU runtime.

One Slurm task per device: local rank k sees only device k (so it is device 0 inside the
process) and runs on the cores of the NUMA domain/CCD wired to that device, as listed by the
site file's `gpu_cpu_bind` (one CPU list per local rank).

Device visibility uses ONE variable per vendor, the way the sites document it:
  - AMD (LUMI, ADASTRA): ROCR_VISIBLE_DEVICES=$SLURM_LOCALID. ROCr filters the devices first and
    HIP then indexes into what is left, so a HIP_VISIBLE_DEVICES=k (or CUDA_VISIBLE_DEVICES=k,
    which HIP also reads) on top of it would point past the one remaining device for every k >= 1.
    Slurm's gres plugin may export those with the node's full list: they are removed.
  - NVIDIA: CUDA_VISIBLE_DEVICES=k.

CPU binding: Slurm's `--cpu-bind=mask_cpu:...` (rendered from the same map) is the first choice;
this in-process fallback applies the site's list when the task's cpuset allows it, and otherwise
returns why not, for rank 0 to say once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

# The one variable each vendor's runtime filters devices by.
VISIBILITY = {"amd": "ROCR_VISIBLE_DEVICES", "nvidia": "CUDA_VISIBLE_DEVICES"}
# Variables that would index into the already-filtered set (HIP honours CUDA_VISIBLE_DEVICES too;
# GPU_DEVICE_ORDINAL is Slurm's gres variable for AMD/OpenCL).
STALE = {"amd": ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"), "nvidia": ()}


@dataclass(frozen=True)
class Binding:
    """What `bind_rank` did: a one-line description per rank, and a problem rank 0 should say once."""

    described: Optional[str]
    cpu_problem: Optional[str] = None


def parse_cpu_list(text: str) -> List[int]:
    """'0-7,16' -> [0, 1, ..., 7, 16]."""
    cpus: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def is_gpu_site(site) -> bool:
    return site.gpu_vendor in VISIBILITY and int(site.gpus_per_node or 0) > 0


def set_visibility(site, local_rank: int, environ=os.environ) -> Optional[str]:
    """Local rank k sees only device k; returns 'VAR=k' (None on a site without GPUs)."""
    if not is_gpu_site(site):
        return None
    for var in STALE[site.gpu_vendor]:
        environ.pop(var, None)
    var = VISIBILITY[site.gpu_vendor]
    environ[var] = str(local_rank)
    return f"{var}={local_rank}"


def bind_cpus(cpu_list: str) -> tuple:
    """(description, problem): pin this process to `cpu_list` unless the kernel refuses it."""
    want = set(parse_cpu_list(cpu_list))
    have = os.sched_getaffinity(0)
    if have == want:
        return f"cores {cpu_list} (already set by Slurm)", None
    try:
        os.sched_setaffinity(0, want)
    except OSError as exc:  # EINVAL: none of the cores is in this task's cpuset (or they do not exist)
        return (f"cores {_compact(have)} (as Slurm left them)",
                f"CPU binding of site.gpu_cpu_bind ({cpu_list}) could not be applied: {exc.strerror}; "
                f"this task may use cores {_compact(have)} only. Bind with Slurm instead "
                f"(srun --cpu-bind=mask_cpu:..., rendered from site.gpu_cpu_bind) or request whole nodes (--exclusive)")
    return f"cores {cpu_list}", None


def bind_rank(site, local_rank: int, environ=os.environ) -> Binding:
    """Set device visibility and CPU affinity for this rank (call before torch touches the GPU)."""
    done, problem = [], None
    visible = set_visibility(site, local_rank, environ)
    if visible:
        done.append(visible)
    if site.gpu_cpu_bind:
        if local_rank < len(site.gpu_cpu_bind):
            described, problem = bind_cpus(site.gpu_cpu_bind[local_rank])
            done.append(described)
        else:
            problem = (f"site.gpu_cpu_bind lists {len(site.gpu_cpu_bind)} core sets but local rank {local_rank} "
                       f"runs on this node: ranks {len(site.gpu_cpu_bind)} and up are not bound")
    return Binding(", ".join(done) or None, problem)


def _compact(cpus) -> str:
    """{0, 1, 2, 5} -> '0-2,5' (the kernel's own list format)."""
    ordered, runs = sorted(cpus), []
    for cpu in ordered:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)
