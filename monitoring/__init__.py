"""Per-node power metering, Slurm accounting capture, and energy and goodput reports.

Runs on login nodes and once per compute node, so nothing here imports torch:
    monitoring/sources/       one module per energy source (pm_counters, amdsmi, nvml, rapl, estimate)
    monitoring/energy.py      pure arithmetic: counter deltas, trapezoids, plausibility check
    monitoring/sampler.py     one node's readings -> JSONL records with integrated energy
    monitoring/meter.py       the meter process (`python -m monitoring.meter`) and its launcher API
    monitoring/power_log.py   reads power/<node>.jsonl back into per-node, per-job summaries
    monitoring/accounting.py  sacct capture at job end (stdlib only) and sacct exports
    monitoring/co2.py         CO2eq from codecarbon's offline carbon intensity per country
    monitoring/campaign.py    one row per job attempt across runs: energy, hours, lost energy
    monitoring/goodput.py     effective training time, lost work, recovery, Young's interval
    monitoring/plots.py, monitoring/goodput_plot.py   the figures
    monitoring/export.py      CSV / Parquet of per-job rows
    monitoring/report.py      `python monitoring/report.py [run=NAME] [kind=all|energy|goodput]`
"""
