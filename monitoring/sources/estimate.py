"""Last resort: codecarbon's CPU and RAM power models, every value flagged estimated.

CPU: codecarbon's "cpu_load" model for the whole machine, TDP x (0.1 + 0.9 x load^3), with
the TDP from its CPU database (or 4 W per thread for an unknown model). RAM: codecarbon's
DIMM-count model of the machine's memory size, a constant, so it is computed once (codecarbon
would ask `scontrol` for the job's memory at every read under Slurm). Only the components no
better source covers are reported (`components`), so RAPL + estimate never count the CPU twice.
"""
from __future__ import annotations

import logging
from typing import List, Sequence

from monitoring.sources.base import EnergySource, Reading, SourceUnavailable

_B_PER_GB = 1024**3


class EstimateSource(EnergySource):
    name = "estimate"
    trust = 5
    covers = frozenset({"cpu", "ram"})

    def __init__(self, components: Sequence[str] = ("cpu", "ram")):
        unknown = set(components) - self.covers
        if unknown:
            raise ValueError(f"estimate covers cpu and ram, not {sorted(unknown)}")
        self.components = [c for c in ("cpu", "ram") if c in components]
        self.covers = frozenset(self.components)  # narrower than the class's when RAPL has the CPU
        self._cpu = None
        self._ram_w = 0.0
        self.cpu_model = ""
        self.cpu_tdp_w = 0.0

    @property
    def backend(self) -> str:
        try:
            from codecarbon import __version__  # noqa: PLC0415
        except ImportError:
            return "codecarbon (absent)"
        return f"codecarbon {__version__} ({self.cpu_model or 'unknown CPU'}, TDP {self.cpu_tdp_w:g} W)"

    def open(self) -> None:
        try:
            import psutil  # noqa: PLC0415
            from codecarbon.core import util as codecarbon_util  # noqa: PLC0415
            from codecarbon.core.cpu import TDP  # noqa: PLC0415
            from codecarbon.external.hardware import CPU, MODE_CPU_LOAD, POWER_CONSTANT  # noqa: PLC0415
            from codecarbon.external.ram import RAM  # noqa: PLC0415
        except ImportError as exc:
            raise SourceUnavailable(f"ImportError: {exc}") from None
        # codecarbon warns loudly about unknown CPU models; the log records what it chose.
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        # Under Slurm codecarbon asks `scontrol` for the job's CPU count, and fails uncaught where scontrol is
        # absent (inside an image). This source models the whole machine, never the job's share: hide the job.
        job, codecarbon_util.SLURM_JOB_ID = codecarbon_util.SLURM_JOB_ID, None
        try:
            if "cpu" in self.components:
                tdp = TDP()
                self.cpu_model = tdp.model or ""
                self.cpu_tdp_w = float(tdp.tdp or POWER_CONSTANT)
                self._cpu = CPU.from_utils(
                    output_dir=".",
                    mode=MODE_CPU_LOAD,
                    model=self.cpu_model,
                    tdp=self.cpu_tdp_w,
                    tracking_mode="machine",
                )
                self._cpu.start()
            if "ram" in self.components:
                memory_gb = psutil.virtual_memory().total / _B_PER_GB
                self._ram_w = float(RAM(tracking_mode="machine")._calculate_ram_power(memory_gb))
        except Exception as exc:  # noqa: BLE001 - a codecarbon API change must not kill the meter
            raise SourceUnavailable(f"codecarbon model failed: {type(exc).__name__}: {exc}") from None
        finally:
            codecarbon_util.SLURM_JOB_ID = job

    def devices(self) -> List[str]:
        return [f"{component}-estimate" for component in self.components]

    def read(self) -> List[Reading]:
        readings = []
        if "cpu" in self.components:
            try:
                cpu_w = float(self._cpu.total_power().W)
            except Exception:  # noqa: BLE001
                cpu_w = None
            readings.append(Reading("cpu-estimate", cpu_w, None, estimated=True))
        if "ram" in self.components:
            readings.append(Reading("ram-estimate", self._ram_w, None, estimated=True))
        return readings
