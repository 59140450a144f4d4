"""The command line of the per-node power meter, shared by the local launcher and the Slurm batch script."""
from __future__ import annotations

from typing import List


def meter_args(cfg, power_dir: str) -> List[str]:
    """Arguments after `python -m monitoring.meter`, without node/job/attempt (known only where it runs)."""
    args = ["--out", power_dir, "--interval", str(cfg.energy.interval_s)]
    if cfg.site.energy_sources:
        args += ["--sources", ",".join(cfg.site.energy_sources)]
    if cfg.energy.pm_counters_root:
        args += ["--pm-counters-root", cfg.energy.pm_counters_root]
    if cfg.energy.rapl_root:
        args += ["--rapl-root", cfg.energy.rapl_root]
    return args
