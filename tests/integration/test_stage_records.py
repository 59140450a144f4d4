"""Every stage writes the same attempt records, prepare included: the energy report then counts a
data preparation as a finished attempt (not as energy lost to failures), in units a person reads."""
import re
import subprocess
import sys

from saul.resilience import ledger
from tests.conftest import REPO


def test_prepare_writes_attempt_start_and_end_like_every_stage(packed_data):
    records = ledger.read(packed_data.parent / "prepare" / "ledger.jsonl")
    assert [r["event"] for r in records] == ["attempt_start", "attempt_end"]
    start, end = records
    assert start["stage"] == end["stage"] == "prepare" and start["attempt"] == end["attempt"] == 1
    assert start["world_size"] == 1 and start["code"]["source"] in ("git", "image-stamp", "unknown")
    assert "image" in start and start["process_start"] <= start["time"]
    assert end["exit_code"] == 0 and end["step"] == 0 and end["reason"]


def test_the_energy_report_counts_prepare_as_done_and_prints_small_energies_without_exponents(packed_data,
                                                                                                tmp_path):
    runs_root = packed_data.parent.parent
    result = subprocess.run([sys.executable, str(REPO / "monitoring" / "report.py"), "run=shared",
                             f"runs_root={runs_root}", "kind=energy", f"out={tmp_path}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    md = (tmp_path / "energy.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| prepare |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["1", "0"], row  # one attempt, not failed
    assert re.fullmatch(r"[\d,.]+ (J|Wh|kWh)", cells[3]), row
    assert cells[-1] == "0 (0.0%)", row  # nothing lost to failures
    assert not re.search(r"\de-\d", md), "an energy or CO2 figure printed with an exponent"
    assert "No energy was lost to failures." in md


def test_goodput_leaves_out_a_stage_that_trains_no_steps(packed_data):
    from monitoring import goodput

    assert goodput.collect_stage(packed_data.parent / "prepare") is None  # it has attempts, but no step loop
