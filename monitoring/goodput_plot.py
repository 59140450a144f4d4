"""The goodput figure: training progress (step) against wall time, across every attempt of a stage.

    progress_vs_wall_time(stage, path)

One line per attempt from its first step to its end: productive steps in blue, steps a later
attempt redid in red (the work a failure threw away). Start-up (attempt_start -> first step) is
shaded light, the gaps between attempts (detection, requeue, queue) grey. Each attempt's end is
marked with its class: a cross for a failure, a circle for a planned stop. Checkpoint saves are
ticks on the line. Drawn with matplotlib's Agg backend (no display on login or batch nodes).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from monitoring.goodput import StageGoodput  # noqa: E402
from monitoring.plots import save_figure  # noqa: E402

PRODUCTIVE, REDONE, FAILURE, PLANNED = "tab:blue", "tab:red", "black", "tab:green"
STARTUP_SHADE, GAP_SHADE = "#fde9c8", "0.85"


def _time_unit(elapsed_s: float) -> Tuple[float, str]:
    """Seconds for a test run, minutes for an hour's run, hours for a campaign's weeks."""
    if elapsed_s <= 900:
        return 1.0, "s"
    if elapsed_s <= 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _split_at(trajectory: List[Tuple[float, int]], redone_after: Optional[int]):
    """(kept, redone) polylines; they share the point where redone work begins so the line is unbroken."""
    if redone_after is None:
        return trajectory, []
    kept = [p for p in trajectory if p[1] <= redone_after]
    redone = [p for p in trajectory if p[1] > redone_after]
    if kept and redone:
        redone = [kept[-1]] + redone
    return kept, redone


def progress_vs_wall_time(stage: StageGoodput, path: Path) -> Optional[Path]:
    """The figure for one stage; None when no attempt logged a step."""
    attempts = [a for a in stage.attempts if a.points or a.startup_s is not None]
    if not attempts:
        return None
    t0 = stage.attempts[0].start
    scale, unit = _time_unit(stage.elapsed_s)

    def x(t: float) -> float:
        return (t - t0) / scale

    fig, ax = plt.subplots(figsize=(10, 4.8))
    for a, nxt in zip(stage.attempts, stage.attempts[1:] + [None]):
        first_step_at = a.start + a.startup_s if a.startup_s is not None else a.end
        ax.axvspan(x(a.start), x(first_step_at), color=STARTUP_SHADE, lw=0, zorder=0)
        if nxt is not None and nxt.start > a.end:
            ax.axvspan(x(a.end), x(nxt.start), color=GAP_SHADE, lw=0, zorder=0)
        trajectory = ([(first_step_at, a.step_start)] if a.startup_s is not None else []) + list(a.points)
        kept, redone = _split_at(trajectory, a.redone_after_step)
        for line, colour, width in ((kept, PRODUCTIVE, 1.6), (redone, REDONE, 2.8)):
            if len(line) > 1:
                ax.plot([x(t) for t, _ in line], [s for _, s in line], color=colour, lw=width, zorder=2)
        if redone and nxt is not None and nxt.startup_s is not None:
            # The rollback: from the last step reached to the step the next attempt resumed from, where
            # it resumed. At a campaign's scale the redone stretch itself can be a few pixels long.
            ax.plot([x(redone[-1][0]), x(nxt.start + nxt.startup_s)], [redone[-1][1], nxt.step_start],
                    color=REDONE, lw=1, ls=":", zorder=2)
        if a.checkpoint_points:
            ax.scatter([x(t) for t, _ in a.checkpoint_points], [s for _, s in a.checkpoint_points],
                       marker="|", s=60, color="0.25", zorder=3)
        if a.end_class == "done":
            continue
        last_step = a.points[-1][1] if a.points else a.step_start
        failed = a.failed
        ax.scatter([x(a.end)], [last_step], marker="X" if failed else "o", s=70 if failed else 45,
                   color=FAILURE if failed else PLANNED, zorder=4)
        ax.annotate(a.end_class, (x(a.end), last_step), textcoords="offset points", xytext=(4, 6),
                    fontsize=8, rotation=30, color=FAILURE if failed else PLANNED)
    if stage.max_steps:
        ax.axhline(stage.max_steps, color="0.6", ls=":", lw=1, zorder=1)
    ax.set_xlabel(f"wall time since the first attempt started ({unit})")
    ax.set_ylabel("step")
    ratio = "–" if stage.ratio is None else f"{stage.ratio:.1%}"
    ax.set_title(f"{stage.run} / {stage.stage}: progress across {len(stage.attempts)} attempt(s), "
                 f"effective training time {ratio}", fontsize=10)
    ax.legend(handles=[
        Line2D([], [], color=PRODUCTIVE, lw=1.6, label="productive steps"),
        Line2D([], [], color=REDONE, lw=2.8, label="redone later (lost work)"),
        Line2D([], [], color=REDONE, lw=1, ls=":", label="rollback to the resumed checkpoint"),
        Line2D([], [], color="0.25", marker="|", ls="", markersize=9, label="checkpoint saved"),
        Line2D([], [], color=FAILURE, marker="X", ls="", label="failure (class)"),
        Line2D([], [], color=PLANNED, marker="o", ls="", label="planned stop"),
        Patch(color=STARTUP_SHADE, label="start-up to first step"),
        Patch(color=GAP_SHADE, label="gap: detection, requeue, queue"),
    ], loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4, fontsize=8, frameon=False)  # below the lines
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    return save_figure(fig, path)
