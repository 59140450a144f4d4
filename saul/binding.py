"""Pin a rank to its GPU device and to the CPU cores next to it, before torch initialises the GPU runtime.

One Slurm task per device: local rank k sees only device k (so it is device 0 inside the
process) and runs on the cores of the NUMA domain/CCD wired to that device, as listed by the
site file's `gpu_cpu_bind` (one CPU list per local rank).
"""
from __future__ import annotations

import os
from typing import List, Optional

VISIBILITY = {
    "amd": ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"),
    "nvidia": ("CUDA_VISIBLE_DEVICES",),
}


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


def bind_rank(site, local_rank: int, environ=os.environ) -> Optional[str]:
    """Set device visibility and CPU affinity for this rank; returns a one-line description (None: nothing to do)."""
    done = []
    if site.gpu_vendor in VISIBILITY and site.gpus_per_node:
        for var in VISIBILITY[site.gpu_vendor]:
            environ[var] = str(local_rank)
        done.append(f"{'/'.join(VISIBILITY[site.gpu_vendor])}={local_rank}")
    if site.gpu_cpu_bind and local_rank < len(site.gpu_cpu_bind):
        cpus = parse_cpu_list(site.gpu_cpu_bind[local_rank])
        available = os.sched_getaffinity(0)
        usable = [c for c in cpus if c in available]
        if usable:
            os.sched_setaffinity(0, usable)
            done.append(f"cores {site.gpu_cpu_bind[local_rank]}")
    return ", ".join(done) or None
