"""Energy sources, one module each, behind the small interface in base.py.

Trust order (most trusted first): pm_counters (HPE Cray node meter), amdsmi (AMD GPUs, pyrsmi
fallback), nvml (NVIDIA GPUs), rapl (CPU packages), estimate (codecarbon's models).
"""
from monitoring.sources.base import EnergySource, Reading, SourceUnavailable
from monitoring.sources.detect import (
    SOURCE_NAMES,
    Detection,
    SourceOptions,
    detect_sources,
    parse_source_names,
)

__all__ = [
    "EnergySource",
    "Reading",
    "SourceUnavailable",
    "SOURCE_NAMES",
    "Detection",
    "SourceOptions",
    "detect_sources",
    "parse_source_names",
]
