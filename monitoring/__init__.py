"""Per-node power metering and (later) energy reports.

Runs on login nodes and once per compute node, so nothing here imports torch:
    monitoring/sources/   one module per energy source (pm_counters, amdsmi, nvml, rapl, estimate)
    monitoring/energy.py  pure arithmetic: counter deltas, trapezoids, plausibility check
    monitoring/sampler.py one node's readings -> JSONL records with integrated energy
    monitoring/meter.py   the meter process (`python -m monitoring.meter`) and its launcher API
    monitoring/power_log.py  reads power/<node>.jsonl back into per-node, per-job summaries
"""
