#!/usr/bin/env python
"""Energy and goodput reports of one run or of the whole campaign: markdown, figures, per-job CSV/Parquet.

    python monitoring/report.py [run=NAME] [runs_root=DIR] [kind=all|energy|goodput] [sacct=FILE]
                                [out=DIR] [format=csv|parquet|both] [country=ISO3]

run=NAME     one run (runs_root/NAME); without it, every run under runs_root (the campaign)
runs_root    default ./runs
kind         energy (energy.md, below), goodput (goodput.md: effective training time, lost work,
             recovery, MTBF, Young's checkpoint interval; monitoring/goodput.py), or all (default)
sacct=FILE   a `sacct -P -o ...` export (with header): jobs run outside the toolkit are added
             as rows of their own; jobs we metered only borrow Slurm's figure from it
out=DIR      default runs_root/NAME/reports (one run) or runs_root/reports (campaign)
format       per-job export: energy_jobs.csv (default), .parquet, or both
country      ISO code for CO2eq of sacct-only rows (toolkit rows use their site's
             country_iso_code from config.yaml)

Writes energy.md, fig6_mean_power_per_node.png, energy_per_stage.png, meter_vs_slurm.png
(when Slurm figures exist) and the export; kind=goodput writes goodput.md and one
goodput_<stage>.png per stage (campaign: goodput_<run>_<stage>.png); each prints a short summary.
Exit 0, also when there is no power data or no training attempt (the report says so); bad input:
one line on stderr, exit 2.
"""
from __future__ import annotations

import difflib
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repo importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitoring import accounting, campaign as campaign_mod, co2, export, goodput  # noqa: E402
from monitoring.units import J_PER_KWH, format_co2, format_energy  # noqa: E402

EXIT_BAD_INPUT = 2
KEYS = ("run", "runs_root", "kind", "sacct", "out", "format", "country")
KINDS = ("all", "energy", "goodput")


class BadInput(Exception):
    """One line for stderr, exit code 2."""


@dataclass
class Totals:
    """Sums over a group of attempts (a stage, a run, the campaign)."""

    label: str
    attempts: int = 0
    failures: int = 0
    kwh: float = 0.0
    node_hours: float = 0.0
    gpu_hours: float = 0.0
    co2_kg: Optional[float] = 0.0  # None when no attempt had a known country
    co2_partial: bool = False  # some attempts had no country: their CO2 is not in co2_kg
    tokens_kept: int = 0
    lost_kwh: float = 0.0
    estimated_kwh: float = 0.0

    @property
    def tokens_per_kwh(self) -> Optional[float]:
        return self.tokens_kept / self.kwh if self.kwh > 0 and self.tokens_kept else None

    @property
    def lost_share(self) -> float:
        return self.lost_kwh / self.kwh if self.kwh > 0 else 0.0


def row_co2_kg(row) -> Optional[float]:
    if row.energy_j is None or not row.country:
        return None
    return co2.co2_kg(row.energy_j / J_PER_KWH, row.country)


def totals(label: str, rows: Sequence) -> Totals:
    t = Totals(label)
    with_country = 0
    for row in rows:
        t.attempts += 1
        t.failures += int(row.failed)
        t.node_hours += row.node_hours
        t.gpu_hours += row.gpu_hours
        t.tokens_kept += row.tokens_kept or 0
        t.lost_kwh += row.lost_energy_j / J_PER_KWH
        if row.energy_j is None:
            continue
        kwh = row.energy_j / J_PER_KWH
        t.kwh += kwh
        t.estimated_kwh += kwh if row.estimated else 0.0
        emitted = row_co2_kg(row)
        if emitted is None:
            t.co2_partial = True
        else:
            t.co2_kg += emitted
            with_country += 1
    if rows and not with_country:
        t.co2_kg = None
    return t


def grouped(rows: Sequence, key) -> List[Totals]:
    groups: Dict[str, list] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return [totals(label, members) for label, members in groups.items()]


# --- markdown ------------------------------------------------------------------------------
def _num(value, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:,.{digits}f}{suffix}"


def _energy(kwh: Optional[float]) -> str:
    return format_energy(None if kwh is None else kwh * J_PER_KWH)


def _when(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _table(header: Sequence[str], lines: Sequence[Sequence[object]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(cell).replace("|", "/") for cell in line) + " |" for line in lines]
    return out


def _totals_table(groups: Sequence[Totals], name: str) -> List[str]:
    lines = [[t.label, t.attempts, t.failures, _energy(t.kwh), _num(t.node_hours, 1), _num(t.gpu_hours, 1),
              format_co2(t.co2_kg) + (" (partial)" if t.co2_partial and t.co2_kg is not None else ""),
              _num(t.tokens_per_kwh, 0), f"{_energy(t.lost_kwh)} ({t.lost_share:.1%})"] for t in groups]
    return _table([name, "attempts", "failed", "energy", "node-h", "GPU-h", "CO2eq", "tokens/kWh",
                   "lost to failures (share)"], lines)


def render(result, total: Totals, by_stage: Sequence[Totals], by_run: Sequence[Totals],
           files: Dict[str, str]) -> str:
    rows = result.rows
    metered = [r for r in rows if r.energy_j is not None]
    md = [f"# Energy report: {result.scope}", "",
          f"Generated {_when(time.time())} UTC by `monitoring/report.py` from the run directories "
          "(power logs, ledger, metrics, captured Slurm accounting). Times are UTC.", ""]
    if not metered:
        md += ["**No power data**: no attempt has a meter file (power/<node>.jsonl) or a Slurm energy "
               f"figure. {len(rows)} attempt(s) found.", ""]
    countries = sorted({r.country for r in rows if r.country})
    intensity = "; ".join(f"{c} {co2.carbon_intensity(c).g_per_kwh:.1f} g/kWh" for c in countries)
    md += ["## Summary", "",
           f"- attempts: {total.attempts} ({total.failures} failed), jobs: {len({(r.run, r.job_id) for r in rows})}",
           f"- energy: **{_energy(total.kwh)}** ({_energy(total.estimated_kwh)} of it estimated)",
           f"- node-hours: {_num(total.node_hours, 1)}, GPU-hours: {_num(total.gpu_hours, 1)}",
           f"- CO2eq: {format_co2(total.co2_kg)}" + (f" (codecarbon offline intensity: {intensity})" if intensity else ""),
           f"- tokens kept per kWh: {_num(total.tokens_per_kwh, 0)}",
           f"- energy lost to failures: {_energy(total.lost_kwh)} ({total.lost_share:.1%} of the total)"]
    compared = [r.slurm_rel_diff for r in rows if r.slurm_rel_diff is not None]
    if compared:
        md.append(f"- our meter vs Slurm's meter step: {len(compared)} attempt(s), mean difference "
                  f"{sum(compared) / len(compared):+.2%}, largest {max(compared, key=abs):+.2%}")
    md.append("")
    figures = [("fig6", "Mean power per node per job (the paper's Figure 6, for this campaign)"),
               ("per_stage", "Energy per stage"), ("vs_slurm", "Our meter vs Slurm")]
    for key, title in figures:
        if key in files:
            md += [f"![{title}]({files[key]})", ""]
    md += ["## Per stage", ""] + _totals_table(by_stage, "stage") + ["", "## Per run", ""]
    md += _totals_table(by_run, "run") + [""]
    md += _lost_section(rows, total) + _slurm_section(rows) + _jobs_section(rows)
    notes = list(result.notes) + sorted({f"{r.job_id}: {r.note}" for r in rows if r.note})
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    exports = [files[k] for k in ("csv", "parquet") if k in files]
    if exports:
        md += [f"Per-job rows: {', '.join(f'`{e}`' for e in exports)}.", ""]
    return "\n".join(md)


def _lost_section(rows, total: Totals) -> List[str]:
    lossy = [r for r in rows if r.failed and r.lost_energy_j > 0]
    md = ["## Energy lost to failures", "",
          "An attempt that did not end in checkpoint-then-stop has its work after the last checkpoint "
          "redone, and the next attempt spends its start-up recovering: lost = redone wall time x the "
          "failed attempt's mean power (all nodes) + the next attempt's time to first step x its mean power.", ""]
    external = [r for r in rows if r.failed and r.origin != "toolkit"]
    if external:
        md += [f"{len(external)} failed job(s) known only from the sacct export have no checkpoint record: "
               "their losses are not estimated here.", ""]
    if not lossy:
        return md + ["No energy was lost to failures.", ""]
    lines = [[r.run, r.stage, r.job_id, r.restart, r.failure_class, _num(r.lost_s, 0), _num(r.recovery_s, 0),
              format_energy(r.lost_energy_j)] for r in lossy]
    lines.append(["**total**", "", "", "", f"{len(lossy)} failures", "", "",
                  f"**{_energy(total.lost_kwh)}** ({total.lost_share:.1%})"])
    return md + _table(["run", "stage", "job", "restart", "class", "redone s", "recovery s", "lost"],
                       lines) + [""]


def _slurm_section(rows) -> List[str]:
    pairs = [r for r in rows if r.slurm_energy_j is not None and r.origin == "toolkit"]
    md = ["## Our meter vs Slurm", ""]
    if not pairs:
        return md + ["No captured Slurm energy figure for the metered attempts.", ""]
    compared = [r.slurm_rel_diff for r in pairs if r.slurm_rel_diff is not None]
    if compared:
        worst = max(compared, key=abs)
        mean = sum(compared) / len(compared)
        md += [f"{len(compared)} attempt(s) compared: mean difference {mean:+.2%}, largest {worst:+.2%}. "
               "Compared with Slurm's ConsumedEnergy of the meter step: the same processes on the same nodes, "
               "but the step starts earlier (srun launch and Python start-up before our first sample), so Slurm "
               "reads slightly more. The allocation's figure is not compared: Slurm sums every step into it, "
               "and the meter step overlaps the ranks' step.", ""]
    lines = [[r.job_id, r.restart, r.slurm_scope, format_energy(r.metered_energy_j), format_energy(r.slurm_energy_j),
              "–" if r.slurm_rel_diff is None else f"{r.slurm_rel_diff:+.2%}"] for r in pairs]
    return md + _table(["job", "restart", "Slurm row", "ours", "Slurm", "difference"], lines) + [""]


def _jobs_section(rows) -> List[str]:
    lines = []
    for r in rows:
        nodes = f"{r.nodes}" + (f" ({','.join(r.node_names)})" if r.node_names and len(r.node_names) <= 4 else "")
        lines.append([r.run, r.stage, r.job_id, r.restart, nodes, _when(r.start), _num(r.duration_s, 0),
                      _num(r.mean_power_per_node_w, 0), format_energy(r.energy_j),
                      _num(r.gpu_hours, 2), r.source + (" (estimated)" if r.estimated else ""),
                      r.failure_class])
    return ["## Per job attempt", ""] + _table(
        ["run", "stage", "job", "restart", "nodes", "start", "s", "W/node", "energy", "GPU-h", "source", "end"],
        lines) + [""]


# --- command line --------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> Dict[str, str]:
    args: Dict[str, str] = {}
    for item in argv:
        if item in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        key, sep, value = item.partition("=")
        if not sep:
            raise BadInput(f"'{item}' is not key=value; keys: {', '.join(KEYS)}")
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise BadInput(f"unknown key '{key}'{hint}; keys: {', '.join(KEYS)}")
        args[key] = value
    kind = args.setdefault("kind", "all")
    if kind not in KINDS:
        raise BadInput(f"kind={kind}: choose one of {', '.join(KINDS)}")
    fmt = args.setdefault("format", "csv")
    if fmt not in export.FORMATS:
        raise BadInput(f"format={fmt}: choose one of {', '.join(export.FORMATS)}")
    if args.get("country"):
        try:
            co2.carbon_intensity(args["country"])
        except co2.UnknownCountry as exc:
            raise BadInput(f"country={args['country']}: {exc}") from None
    return args


def collect(args: Dict[str, str]):
    """(campaign, default output directory) for the arguments; BadInput when they name nothing."""
    runs_root = Path(args.get("runs_root", "runs"))
    sacct_rows = None
    if args.get("sacct"):
        try:
            sacct_rows = accounting.read_export(args["sacct"])
        except accounting.AccountingError as exc:
            raise BadInput(f"sacct={args['sacct']}: {exc}") from None
    if args.get("run"):
        run = args["run"]
        known = campaign_mod.list_runs(runs_root)
        if run not in known:
            listed = ", ".join(known) if known else "none"
            raise BadInput(f"unknown run '{run}' under {runs_root} (runs there: {listed})")
        result = campaign_mod.collect_run(runs_root / run)
        out = runs_root / run / "reports"
    else:
        if not runs_root.is_dir() and sacct_rows is None:
            raise BadInput(f"runs_root={runs_root}: no such directory (give runs_root=DIR or sacct=FILE)")
        result = (campaign_mod.collect_campaign(runs_root) if runs_root.is_dir()
                  else campaign_mod.Campaign([], [], "sacct export"))
        out = runs_root / "reports"
    if sacct_rows is not None:
        added = campaign_mod.rows_from_sacct(sacct_rows, result, args.get("country", ""))
        result.notes.append(f"{added} attempt(s) from the sacct export {args['sacct']} (origin 'sacct')")
    unknown = sorted({r.country for r in result.rows if r.country} - set(co2.known_countries()))
    for code in unknown:
        result.notes.append(f"country_iso_code {code!r} is unknown to codecarbon: no CO2eq for its attempts")
        for row in result.rows:
            if row.country == code:
                row.country = ""
    return result, Path(args["out"]) if args.get("out") else out


def collect_goodput(args: Dict[str, str]):
    """(scope, stages, output directory, one run?) for kind=goodput; BadInput when the arguments name nothing."""
    runs_root = Path(args.get("runs_root", "runs"))
    if args.get("run"):
        run = args["run"]
        known = campaign_mod.list_runs(runs_root)
        if run not in known:
            raise BadInput(f"unknown run '{run}' under {runs_root} (runs there: {', '.join(known) or 'none'})")
        scope, stages, out = f"run {run}", goodput.collect_run(runs_root / run), runs_root / run / "reports"
    else:
        if not runs_root.is_dir():
            raise BadInput(f"runs_root={runs_root}: no such directory (give runs_root=DIR)")
        scope, stages, out = f"campaign {runs_root}", goodput.collect_campaign(runs_root), runs_root / "reports"
    return scope, stages, Path(args["out"]) if args.get("out") else out, bool(args.get("run"))


def write_report(result, out: Path, fmt: str = "csv") -> Dict[str, Path]:
    """Figures, export and energy.md in out; returns what was written, by name."""
    from monitoring import plots

    out.mkdir(parents=True, exist_ok=True)
    rows = result.rows
    by_stage = grouped(rows, lambda r: r.stage)
    written: Dict[str, Path] = {}
    for name, path in (
        ("fig6", plots.figure6_mean_power(rows, out / "fig6_mean_power_per_node.png")),
        ("per_stage", plots.energy_per_stage(by_stage, out / "energy_per_stage.png")),
        ("vs_slurm", plots.meter_vs_slurm(rows, out / "meter_vs_slurm.png")),
    ):
        if path is not None:
            written[name] = path
    for path in export.write(rows, out, fmt):
        written[path.suffix.lstrip(".")] = path
    text = render(result, totals("all", rows), by_stage, grouped(rows, lambda r: r.run),
                  {k: p.name for k, p in written.items()})
    md = out / "energy.md"
    tmp = md.with_name(".energy.md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(md)
    written["md"] = md
    return written


def print_summary(result, written: Dict[str, Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=110)
    table = Table(title=f"Energy: {result.scope}", title_justify="left")
    for column in ("stage", "attempts", "failed", "energy", "node-h", "GPU-h", "CO2eq", "lost to failures"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    groups = grouped(result.rows, lambda r: r.stage)
    all_rows = totals("total", result.rows)
    for i, t in enumerate(groups + [all_rows]):
        table.add_row(t.label, str(t.attempts), str(t.failures), _energy(t.kwh), f"{t.node_hours:,.1f}",
                      f"{t.gpu_hours:,.1f}", "n/a" if t.co2_kg is None else format_co2(t.co2_kg),
                      f"{_energy(t.lost_kwh)} ({t.lost_share:.1%})", end_section=i == len(groups) - 1)
    console.print(table)
    if not any(r.energy_j is not None for r in result.rows):
        console.print("no power data: no attempt had a meter file or a Slurm energy figure")
    print(f"report: {written['md']}")  # plain: a long path must stay one greppable line


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    energy = good = None
    try:
        args = parse_args(argv)
        kind = args["kind"]
        if kind in ("energy", "all"):
            energy = collect(args)
        # kind=all on a sacct export alone has no run directory to read goodput from: energy only.
        if kind == "goodput" or (kind == "all" and (args.get("run") or Path(args.get("runs_root", "runs")).is_dir())):
            good = collect_goodput(args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = None
    try:
        if energy is not None:
            result, out = energy
            written = write_report(result, out, args["format"])
        if good is not None:
            scope, stages, out, one_run = good
            good_written = goodput.write_report(scope, stages, out, one_run)
    except OSError as exc:
        print(f"error: cannot write the report to {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if energy is not None:
        print_summary(energy[0], written)
    if good is not None:
        goodput.print_summary(good[0], good[1], good_written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
