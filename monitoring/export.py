"""Per-job rows of an energy report as CSV and/or Parquet, and back.

One row per job attempt, one column per AttemptRow field (monitoring/campaign.py), in field
order; node lists are comma-joined strings so both formats hold the same table. Reading a
file back gives AttemptRow objects again, so other tools (a notebook, a plotting script, a
second report over several campaigns) start from exactly what the report counted.
"""
from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Dict, List, Sequence

from monitoring.campaign import AttemptRow

FORMATS = ("csv", "parquet", "both")
BASENAME = "energy_jobs"
COLUMNS = [f.name for f in fields(AttemptRow)]
_LIST_COLUMNS = ("node_names", "unmetered_nodes")
_INT_COLUMNS = ("restart", "attempt", "nodes", "tokens", "tokens_kept", "exit_code")
_BOOL_COLUMNS = ("estimated",)
_TEXT_COLUMNS = ("run", "stage", "job_id", "origin", "site", "country", "source", "slurm_scope",
                 "failure_class", "slurm_state", "note") + _LIST_COLUMNS


class ExportError(ValueError):
    """A format name we do not write, or a file that is not one of our exports."""


def to_frame(rows: Sequence[AttemptRow]):
    import pandas as pd

    frame = pd.DataFrame([row.record() for row in rows], columns=COLUMNS)
    # Nullable integer and string dtypes: a missing attempt number or token count stays
    # missing (not 0, not NaN-as-float) in both CSV and Parquet.
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype("Int64")
    for column in _TEXT_COLUMNS:
        frame[column] = frame[column].astype("string")
    frame["estimated"] = frame["estimated"].astype("boolean")
    return frame


def write(rows: Sequence[AttemptRow], out_dir: Path, fmt: str = "csv") -> List[Path]:
    """energy_jobs.csv and/or energy_jobs.parquet in out_dir; returns the paths written."""
    if fmt not in FORMATS:
        raise ExportError(f"format={fmt!r}: choose one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = to_frame(rows)
    written = []
    if fmt in ("csv", "both"):
        path = out_dir / f"{BASENAME}.csv"
        tmp = path.with_name(f".{path.name}.tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(path)
        written.append(path)
    if fmt in ("parquet", "both"):
        path = out_dir / f"{BASENAME}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        frame.to_parquet(tmp, index=False, engine="pyarrow")
        tmp.replace(path)
        written.append(path)
    return written


def read(path: Path) -> List[AttemptRow]:
    """AttemptRow objects from an energy_jobs.csv or .parquet written by `write`."""
    import pandas as pd

    path = Path(path)
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path, engine="pyarrow")
    else:
        frame = pd.read_csv(path, dtype={c: "string" for c in _TEXT_COLUMNS}, keep_default_na=False,
                            na_values={c: [""] for c in COLUMNS if c not in _TEXT_COLUMNS})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ExportError(f"{path}: not an energy_jobs export (missing columns {', '.join(missing)})")
    return [_row(record) for record in frame[COLUMNS].to_dict("records")]


def _row(record: Dict[str, object]) -> AttemptRow:
    values = {}
    for name, value in record.items():
        if _missing(value):
            value = None
        if name in _LIST_COLUMNS:
            value = [part for part in str(value or "").split(",") if part]
        elif name in _TEXT_COLUMNS:
            value = "" if value is None else str(value)
        elif name in _INT_COLUMNS:
            value = None if value is None else int(value)
        elif name in _BOOL_COLUMNS:
            value = bool(value) if value is not None else False
        elif value is not None:
            value = float(value)
        values[name] = value
    for name in ("restart", "nodes"):
        values[name] = values[name] or 0
    for name in ("duration_s", "node_hours", "gpu_hours", "lost_s", "recovery_s", "lost_energy_j"):
        values[name] = values[name] or 0.0
    return AttemptRow(**values)


def _missing(value) -> bool:
    try:
        import pandas as pd

        if value is pd.NA:
            return True
    except ImportError:
        pass
    return value is None or (isinstance(value, float) and math.isnan(value))
