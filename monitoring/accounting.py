"""Slurm's own accounting of a job, captured into the run directory before the site purges it.

    python3 -m monitoring.accounting capture <stage_dir> <job_id> [--settle-s 5] [--max-s 20]

runs `sacct -j <job_id> -P -n --duplicates -o FIELDS` and writes the rows as JSON to
<stage_dir>/accounting/<job_id>.json (temp file + rename: a reader never sees half a file).
The batch script calls it at teardown, so a failure here must never fail the job: any
runtime error is one line on stderr and exit 0. Only a malformed command line (a bug in the
batch script, caught by its tests) exits 2.

With --duplicates every run of a requeued job appears: its allocation row followed by that
run's step rows (`<job>.batch`, `<job>.0`, ...), in run order. At teardown the current
allocation row still says RUNNING with no energy, but the steps that ended (the meter step, the
ranks' step) already carry their ConsumedEnergyRaw, and every earlier run (including a
NODE_FAIL one, whose own teardown never ran) is complete: that is why each capture re-reads
the whole job and replaces the file.

Also parses a sacct export (`sacct -P -o ...` output with its header line) for jobs that did
not run through the toolkit. STANDARD LIBRARY ONLY: this runs on the batch node's host
python3, outside the container.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from saul.data.atomic import write_json_atomic  # standard library only, like this module

FIELDS = ("JobIDRaw", "JobName", "State", "ExitCode", "NNodes", "NodeList", "Start", "End",
          "ElapsedRaw", "ConsumedEnergyRaw", "AllocTRES")
# The capture runs before the requeue decision, inside the time the pre-timeout signal leaves:
# it must never eat that time, whatever the accounting database does.
MAX_CAPTURE_S = 20.0
DEFAULT_SETTLE_S = 5.0  # how long to wait for ended steps to reach the database
EXIT_BAD_INPUT = 2
# The meter step's name: `srun --job-name=saul-meter` in jobs/slurm_launcher.py; jobs launched
# before that name existed show the command, `bash -c 'exec python -m monitoring.meter ...'`.
METER_STEP_NAMES = ("saul-meter", "bash")
_JOB_ID = re.compile(r"^[0-9]+$")
_UNSET_TIMES = ("", "Unknown", "None", "N/A")


class AccountingError(Exception):
    """sacct could not be run or said something we cannot use."""


@dataclass
class SlurmRun:
    """One run of a job (a requeued job has several): its allocation row and that run's steps."""

    allocation: Dict[str, str]
    steps: List[Dict[str, str]] = field(default_factory=list)

    @property
    def state(self) -> str:
        return self.allocation.get("State", "").split(" ")[0]  # "CANCELLED by 0" -> CANCELLED

    @property
    def ended(self) -> bool:
        return parse_time(self.allocation.get("End")) is not None

    def meter_step(self) -> Optional[Dict[str, str]]:
        """The step that ran our per-node meters: found by name over all nodes, because its
        number is not fixed (the backgrounded meter srun races the ranks' srun for step 0)."""
        nodes = self.allocation.get("NNodes")
        for step in self.steps:
            if step.get("JobName") in METER_STEP_NAMES and step.get("NNodes") == nodes \
                    and step_number(step) is not None:
                return step
        return None


# --- parsing -------------------------------------------------------------------------------
def parse_rows(text: str, fields: Sequence[str] = FIELDS) -> List[Dict[str, str]]:
    """`sacct -P -n` output (no header) -> one dict per row, in sacct's order."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        values = line.split("|")
        if values and values[-1] == "" and len(values) == len(fields) + 1:
            values = values[:-1]  # `--parsable` (not -P) ends every line with a '|'
        if len(values) != len(fields):
            raise AccountingError(f"sacct row has {len(values)} fields, expected {len(fields)}: {line!r}")
        rows.append(dict(zip(fields, values)))
    return rows


def parse_export(text: str) -> List[Dict[str, str]]:
    """A sacct export with its header line (what `sacct -P -o A,B,...` prints)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise AccountingError("empty sacct export")
    header = lines[0].rstrip("|").split("|")
    if "JobIDRaw" not in header and "JobID" not in header:
        raise AccountingError(f"the first line is not a sacct header with JobIDRaw or JobID: {lines[0]!r}")
    rows = parse_rows("\n".join(lines[1:]), header)
    for row in rows:
        row.setdefault("JobIDRaw", row.get("JobID", ""))
    return rows


def read_export(path: os.PathLike) -> List[Dict[str, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AccountingError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return parse_export(text)
    except AccountingError as exc:
        raise AccountingError(f"{path}: {exc}") from None


def parse_time(text: Optional[str]) -> Optional[float]:
    """sacct's local-time ISO stamp ('2024-03-01T10:00:00') -> Unix seconds; None when unset."""
    if text is None or text.strip() in _UNSET_TIMES:
        return None
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def parse_int(text: Optional[str]) -> Optional[int]:
    """'123' -> 123; '' / 'Unknown' / '0' for energy is left to the caller."""
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def parse_tres(text: Optional[str]) -> Dict[str, str]:
    """'billing=2,cpu=2,gres/gpu=8,node=2' -> {'billing': '2', 'cpu': '2', 'gres/gpu': '8', ...}."""
    out = {}
    for part in (text or "").split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def step_number(row: Dict[str, str]) -> Optional[int]:
    """'123.4' -> 4; the batch/extern steps and the allocation row -> None."""
    _, sep, step = row.get("JobIDRaw", "").partition(".")
    return int(step) if sep and step.isdigit() else None


def expand_hostlist(text: str) -> List[str]:
    """Slurm's compressed node list -> names: 'nid[001-003,007],login1' -> nid001 ... login1."""
    text = (text or "").strip()
    if not text or text in ("None assigned", "(null)"):
        return []
    names: List[str] = []
    for item in _split_top_level(text):
        names.extend(_expand_item(item))
    return names


def _split_top_level(text: str) -> List[str]:
    items, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item for item in items if item]


def _expand_item(item: str) -> List[str]:
    opening = item.find("[")
    if opening < 0:
        return [item]
    closing = item.find("]", opening)
    if closing < 0:
        raise ValueError(f"unbalanced '[' in node list {item!r}")
    prefix, ranges, rest = item[:opening], item[opening + 1:closing], item[closing + 1:]
    heads = []
    for part in ranges.split(","):
        low, sep, high = part.partition("-")
        if not sep:
            heads.append(low)
            continue
        width = len(low)  # nid[0001-0003] keeps its zero padding
        heads.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return [prefix + head + tail for head in heads for tail in _expand_item(rest)]


def runs_of(rows: Sequence[Dict[str, str]], job_id: str) -> List[SlurmRun]:
    """The job's runs in order: each allocation row opens a run, the step rows after it are its steps."""
    runs: List[SlurmRun] = []
    for row in rows:
        raw = row.get("JobIDRaw", "")
        if raw == str(job_id):
            runs.append(SlurmRun(dict(row)))
        elif raw.split(".")[0] == str(job_id) and runs:
            runs[-1].steps.append(dict(row))
    return runs


def job_ids(rows: Sequence[Dict[str, str]]) -> List[str]:
    """Every job (allocation) id in rows, first-seen order."""
    return list(dict.fromkeys(row["JobIDRaw"] for row in rows if "." not in row.get("JobIDRaw", ".")))


# --- capture -------------------------------------------------------------------------------
def sacct_command(job_id: str, fields: Sequence[str] = FIELDS) -> List[str]:
    return ["sacct", "-j", str(job_id), "-P", "-n", "--duplicates", "-o", ",".join(fields)]


def query(job_id: str, timeout_s: float = MAX_CAPTURE_S) -> List[Dict[str, str]]:
    command = sacct_command(job_id)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise AccountingError("sacct not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise AccountingError(f"sacct did not answer in {timeout_s:.0f} s") from None
    except OSError as exc:
        raise AccountingError(f"cannot run sacct: {exc.strerror}") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise AccountingError(f"sacct exited {result.returncode}: {detail[-1] if detail else 'no message'}")
    rows = parse_rows(result.stdout)
    if not runs_of(rows, job_id):
        raise AccountingError(f"sacct has no record of job {job_id} (accounting disabled, or another cluster?)")
    return rows


def _settled(rows: Sequence[Dict[str, str]], job_id: str) -> bool:
    """Every numbered step of the newest run has ended (its energy is final); the batch step and
    the allocation of a running job cannot have, so they are not waited for."""
    runs = runs_of(rows, job_id)
    return all(parse_time(step.get("End")) is not None
               for step in runs[-1].steps if step_number(step) is not None)


def capture(stage_dir: os.PathLike, job_id: str, settle_s: float = DEFAULT_SETTLE_S,
            poll_s: float = 1.0, max_s: float = MAX_CAPTURE_S) -> Path:
    """Query sacct (re-asking for up to settle_s while ended steps reach the DB) and write the
    JSON; everything, a hanging sacct included, within max_s."""
    started = time.monotonic()
    settle_until = started + min(settle_s, max_s)
    rows = query(job_id, timeout_s=max_s)
    while not _settled(rows, job_id) and time.monotonic() + poll_s <= settle_until:
        time.sleep(poll_s)
        try:
            rows = query(job_id, timeout_s=max(1.0, started + max_s - time.monotonic()))
        except AccountingError:
            break  # keep the rows we have: a late answer must not lose an earlier good one
    document = {
        "schema": 1,
        "job_id": str(job_id),
        "captured_at": time.time(),
        "command": " ".join(sacct_command(job_id)),
        "fields": list(FIELDS),
        "rows": rows,
    }
    return write_atomic(Path(stage_dir) / "accounting" / f"{job_id}.json", document)


def write_atomic(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, document)


def load_capture(path: os.PathLike) -> dict:
    """One accounting/<job>.json; raises AccountingError when it is not a capture."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AccountingError(f"{path}: not a readable capture ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
        raise AccountingError(f"{path}: no 'rows' list")
    return document


def load_captures(stage_dir: os.PathLike) -> Dict[str, dict]:
    """{job_id: capture} for <stage_dir>/accounting/*.json; unreadable files are skipped with a warning."""
    captures = {}
    for path in sorted(Path(stage_dir, "accounting").glob("*.json")):
        try:
            document = load_capture(path)
        except AccountingError as exc:
            print(f"monitoring.accounting: skipping {exc}", file=sys.stderr)
            continue
        captures[str(document.get("job_id", path.stem))] = document
    return captures


# --- command line --------------------------------------------------------------------------
USAGE = ("usage: python3 -m monitoring.accounting capture <stage_dir> <job_id> "
         "[--settle-s SECONDS] [--max-s SECONDS]")
_OPTIONS = {"--settle-s": DEFAULT_SETTLE_S, "--max-s": MAX_CAPTURE_S}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options = dict(_OPTIONS)
    for name in _OPTIONS:
        if name in args:
            at = args.index(name)
            try:
                options[name] = float(args[at + 1])
            except (IndexError, ValueError):
                print(f"monitoring.accounting: {name} needs a number of seconds; {USAGE}", file=sys.stderr)
                return EXIT_BAD_INPUT
            del args[at:at + 2]
    if len(args) != 3 or args[0] != "capture":
        print(f"monitoring.accounting: {USAGE}", file=sys.stderr)
        return EXIT_BAD_INPUT
    stage_dir, job_id = args[1], args[2]
    if not _JOB_ID.match(job_id):
        print(f"monitoring.accounting: job id must be a number, got {job_id!r}; {USAGE}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        path = capture(stage_dir, job_id, options["--settle-s"], max_s=options["--max-s"])
    except Exception as exc:  # noqa: BLE001 - whatever goes wrong, the job must not fail here
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"monitoring.accounting: job {job_id}: accounting not captured: {reason}", file=sys.stderr)
        return 0
    print(f"monitoring.accounting: job {job_id}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
