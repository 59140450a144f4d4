"""The report's figures, drawn with matplotlib's Agg backend (no display on login or batch nodes).

    figure6_mean_power(rows, path)   mean power per node of every job attempt of the campaign,
                                     attempts in start order on x, W on y, one colour per stage,
                                     failed attempts marked: the SaulLM paper's Figure 6, for ours
    energy_per_stage(totals, path)   kWh per stage, the part lost to failures stacked on top
    meter_vs_slurm(rows, path)       our meter minus Slurm's ConsumedEnergy, in %, per attempt

Each returns the path written, or None when there is nothing to draw (no attempt with power).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display
import matplotlib.pyplot as plt  # noqa: E402

from monitoring.units import J_PER_KWH, energy_unit, format_energy  # noqa: E402

# The range the paper's Figure 6 shows for its 1,800 jobs on ADASTRA (MI250X nodes): a
# reference band, so a reader sees at once whether our nodes draw comparable power.
PAPER_RANGE_W = (600.0, 2500.0)
DPI = 100


def _stage_colours(stages: Sequence[str]) -> dict:
    palette = plt.get_cmap("tab10").colors
    return {stage: palette[i % len(palette)] for i, stage in enumerate(dict.fromkeys(stages))}


def save_figure(fig, path: Path) -> Path:
    """Write a PNG atomically (temp + rename): a report never links a half-written plot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def figure6_mean_power(rows, path: Path, paper_range: bool = True) -> Optional[Path]:
    points = [r for r in rows if r.mean_power_per_node_w is not None]
    if not points:
        return None
    colours = _stage_colours([r.stage for r in points])
    fig, ax = plt.subplots(figsize=(9, 4.2))
    if paper_range:
        ax.axhspan(*PAPER_RANGE_W, color="0.92", zorder=0,
                   label=f"SaulLM paper Fig. 6 range ({PAPER_RANGE_W[0]:.0f}-{PAPER_RANGE_W[1]:.0f} W)")
    for stage, colour in colours.items():
        xs = [i for i, r in enumerate(points) if r.stage == stage]
        ys = [points[i].mean_power_per_node_w for i in xs]
        ax.scatter(xs, ys, s=18, color=colour, label=stage, zorder=2)
    failed = [i for i, r in enumerate(points) if r.failed]
    if failed:
        ax.scatter(failed, [points[i].mean_power_per_node_w for i in failed], s=70, marker="x",
                   color="black", linewidths=1.4, label="failed attempt", zorder=3)
    estimated = [i for i, r in enumerate(points) if r.estimated]
    if estimated:
        ax.scatter(estimated, [points[i].mean_power_per_node_w for i in estimated], s=60,
                   facecolors="none", edgecolors="0.4", linestyle=":", label="estimated", zorder=3)
    ax.set_xlabel("job attempt (in start order)")
    ax.set_ylabel("mean power per node (W)")
    ax.set_title(f"Mean power per node per job ({len(points)} attempts)")
    top = max(r.mean_power_per_node_w for r in points)
    ax.set_ylim(0, max(top, PAPER_RANGE_W[1] if paper_range else 0.0) * 1.08)
    ax.grid(axis="y", alpha=0.3)
    # Below the axes: a campaign of 1,800 attempts leaves no empty corner for a legend.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=5, frameon=False)
    return save_figure(fig, path)


def energy_per_stage(totals, path: Path) -> Optional[Path]:
    """totals: objects with .label, .kwh and .lost_kwh (report.Totals)."""
    bars = [t for t in totals if t.kwh > 0]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(bars) + 2), 3.8))
    # One unit for the axis, the one that shows the largest bar without an exponent (kWh, Wh or J).
    unit, j_per_unit = energy_unit(max(t.kwh for t in bars) * J_PER_KWH)
    scale = J_PER_KWH / j_per_unit
    labels = [t.label for t in bars]
    kept = [(t.kwh - t.lost_kwh) * scale for t in bars]
    lost = [t.lost_kwh * scale for t in bars]
    ax.bar(labels, kept, color="#4c72b0", label="useful")
    ax.bar(labels, lost, bottom=kept, color="#dd8452", hatch="//", label="lost to failures")
    for i, t in enumerate(bars):
        ax.text(i, t.kwh * scale, format_energy(t.kwh * J_PER_KWH, unit), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(t.kwh for t in bars) * scale * 1.12)  # room for the value labels
    ax.set_ylabel(f"energy ({unit})")
    ax.set_title("Energy per stage")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def meter_vs_slurm(rows, path: Path) -> Optional[Path]:
    """(ours - Slurm) / Slurm per compared attempt: agreement is a fraction of a percent, which a
    kWh-vs-kWh scatter would hide on its diagonal."""
    pairs = [r for r in rows if r.slurm_rel_diff is not None]
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4))
    colours = _stage_colours([r.stage for r in pairs])
    for stage, colour in colours.items():
        xs = [i for i, r in enumerate(pairs) if r.stage == stage]
        ax.scatter(xs, [100.0 * pairs[i].slurm_rel_diff for i in xs], s=18, color=colour, label=stage)
    ax.axhline(0.0, color="0.5", linewidth=1)
    ax.set_xlabel("compared attempt (in start order)")
    ax.set_ylabel("ours - Slurm (% of Slurm)")
    ax.set_title("Our meter vs Slurm ConsumedEnergy (same step)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=6, frameon=False)
    return save_figure(fig, path)
