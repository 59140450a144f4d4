"""Pick the sources a node meter uses: most trusted first, nothing measured twice.

pm_counters meters the whole node, so once it opens nothing else is needed. Otherwise the
node total is assembled from parts: GPUs (amdsmi and/or nvml), CPU (rapl, else the estimate)
and RAM (the estimate). Every source not used gets a reason in the log: rejected (it cannot
measure here, and why) or skipped (what it would measure is already covered).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from monitoring.sources import pm_counters, rapl
from monitoring.sources.amd import AmdGpuSource
from monitoring.sources.base import EnergySource, SourceUnavailable
from monitoring.sources.estimate import EstimateSource
from monitoring.sources.nvml import NvmlSource
from monitoring.sources.pm_counters import PmCountersSource
from monitoring.sources.rapl import RaplSource

SOURCE_NAMES = ("pm_counters", "amdsmi", "nvml", "rapl", "estimate")  # trust order
_SOURCE_CLASSES = {
    "pm_counters": PmCountersSource,
    "amdsmi": AmdGpuSource,
    "nvml": NvmlSource,
    "rapl": RaplSource,
    "estimate": EstimateSource,
}


@dataclass
class SourceOptions:
    pm_counters_root: Path = pm_counters.DEFAULT_ROOT
    rapl_root: Path = rapl.DEFAULT_ROOT
    gcds_per_package: Optional[int] = None  # None: from the GPU model (MI250X = 2)


@dataclass
class Detection:
    selected: List[EnergySource] = field(default_factory=list)
    rejected: Dict[str, str] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)

    @property
    def covers(self) -> set:
        return set().union(*(source.covers for source in self.selected)) if self.selected else set()

    @property
    def label(self) -> str:
        """The `source` field of every record: 'pm_counters', or 'amdsmi+rapl+estimate'."""
        return "+".join(source.name for source in self.selected) or "none"

    @property
    def estimated(self) -> bool:
        return any(isinstance(source, EstimateSource) for source in self.selected)

    def describe(self) -> dict:
        return {
            "sources": [_describe_source(source) for source in self.selected],
            "rejected": dict(self.rejected),
            "skipped": dict(self.skipped),
            "covers": sorted(self.covers),
        }

    def close(self) -> None:
        for source in self.selected:
            source.close()


def parse_source_names(text: Optional[str]) -> List[str]:
    """'rapl,pm_counters' -> ['pm_counters', 'rapl'] (trust order); raise ValueError on unknowns."""
    if not text:
        return list(SOURCE_NAMES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SOURCE_NAMES]
    if unknown:
        raise ValueError(f"unknown energy source {unknown[0]!r}; choose from {', '.join(SOURCE_NAMES)}")
    return [name for name in SOURCE_NAMES if name in names]


def detect_sources(names: Sequence[str], options: Optional[SourceOptions] = None) -> Detection:
    """Open the named sources in trust order; the caller closes the Detection when done."""
    options = options or SourceOptions()
    detection = Detection()
    covered_by: Dict[str, str] = {}  # component -> the source that covers it
    for name in sorted(names, key=SOURCE_NAMES.index):
        if "node" in covered_by:
            detection.skipped[name] = f"the node total is already metered by {covered_by['node']}"
            continue
        wanted = set(_SOURCE_CLASSES[name].covers) - set(covered_by)
        if not wanted:
            owners = sorted({covered_by[c] for c in _SOURCE_CLASSES[name].covers})
            detection.skipped[name] = f"already covered by {', '.join(owners)}"
            continue
        source = _build(name, options, wanted)
        try:
            source.open()
        except SourceUnavailable as exc:
            detection.rejected[name] = str(exc)
            continue
        detection.selected.append(source)
        for component in source.covers if name != "estimate" else wanted:
            covered_by.setdefault(component, name)
    return detection


def _components(name: str) -> set:
    return {"pm_counters": {"node"}, "amdsmi": {"gpu"}, "nvml": {"gpu"}, "rapl": {"cpu"},
            "estimate": {"cpu", "ram"}}[name]


def _build(name: str, options: SourceOptions, wanted: set) -> EnergySource:
    if name == "pm_counters":
        return PmCountersSource(options.pm_counters_root)
    if name == "amdsmi":
        return AmdGpuSource(options.gcds_per_package)
    if name == "nvml":
        return NvmlSource()
    if name == "rapl":
        return RaplSource(options.rapl_root)
    return EstimateSource(sorted(wanted))


def _describe_source(source: EnergySource) -> dict:
    described = {"name": source.name, "trust": source.trust, "backend": source.backend,
                 "devices": source.devices()}
    if isinstance(source, AmdGpuSource):
        described["model"] = source.model
        described["packages"] = source.describe_packages()
    if isinstance(source, NvmlSource):
        described["model"] = source.model
    if isinstance(source, EstimateSource):
        described["components"] = source.components
    return described
