"""monitoring.accounting: the teardown capture of sacct, and sacct text parsing.

The capture runs the real command line (`python3 -m monitoring.accounting capture ...`) against
a fake `sacct` first on PATH: the external tool at the lowest level, printing what the real one
printed on the test cluster for a requeued 2-node job (sacct -P -n --duplicates).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitoring import accounting

REPO = Path(__file__).resolve().parents[2]

# Real `sacct -j 1 -P -n --duplicates -o <FIELDS>` output of the test cluster, taken at the
# teardown of run 1 of a job whose run 0 crashed and was requeued.
CANNED = """\
1|saul-metered-cpt|REQUEUED|0:0|2|n[1-2]|2026-11-22T19:54:14|2026-11-22T19:54:38|24|51260|billing=2,cpu=2,energy=51260,node=2
1.batch|batch|CANCELLED|0:15|1|n1|2026-11-22T19:54:14|2026-11-22T19:54:38|24|11864|cpu=1,mem=0,node=1
1.0|saul-ranks|FAILED|1:0|2|n[1-2]|2026-11-22T19:54:14|2026-11-22T19:54:37|23|24098|cpu=2,mem=0,node=2
1.1|saul-meter|COMPLETED|0:0|2|n[1-2]|2026-11-22T19:54:14|2026-11-22T19:54:37|23|27162|cpu=2,mem=0,node=2
1|saul-metered-cpt|RUNNING|0:0|2|n[1-2]|2026-11-22T19:55:05|Unknown|39||billing=2,cpu=2,node=2
1.batch|batch|RUNNING|0:0|1|n1|2026-11-22T19:55:05|Unknown|39|0|cpu=1,mem=0,node=1
1.0|saul-meter|COMPLETED|0:0|2|n[1-2]|2026-11-22T19:55:05|2026-11-22T19:55:43|38|45679|cpu=2,mem=0,node=2
1.1|saul-ranks|COMPLETED|0:0|2|n[1-2]|2026-11-22T19:55:05|2026-11-22T19:55:43|38|45104|cpu=2,mem=0,node=2
"""


@pytest.fixture
def fake_sacct(tmp_path):
    """Install a `sacct` script; `program(body)` sets what it does (a /bin/sh body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def program(body: str) -> Path:
        script = bin_dir / "sacct"
        script.write_text("#!/bin/sh\n" + body + "\n")
        script.chmod(0o755)
        return script

    program.bin = bin_dir
    return program


def capture(stage: Path, *args: str, bin_dir: Path = None, path_only: bool = False):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if bin_dir is not None:
        env["PATH"] = str(bin_dir) if path_only else f"{bin_dir}{os.pathsep}{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "monitoring.accounting", "capture", str(stage), *args],
                          env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


def test_capture_writes_every_run_of_the_job_as_json(fake_sacct, tmp_path):
    canned = tmp_path / "canned.txt"
    canned.write_text(CANNED)
    fake_sacct(f'echo "$@" > {tmp_path}/argv; cat {canned}')
    stage = tmp_path / "runs" / "r" / "cpt"
    result = capture(stage, "1", bin_dir=fake_sacct.bin)
    assert result.returncode == 0, result.stderr
    path = stage / "accounting" / "1.json"
    document = json.loads(path.read_text())
    assert (tmp_path / "argv").read_text().split() == [
        "-j", "1", "-P", "-n", "--duplicates", "-o", ",".join(accounting.FIELDS)]
    assert document["job_id"] == "1" and document["fields"] == list(accounting.FIELDS)
    assert len(document["rows"]) == 8 and document["rows"][4]["State"] == "RUNNING"
    assert document["captured_at"] > 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["1.json"]  # no temp file left behind
    runs = accounting.runs_of(document["rows"], "1")
    assert [r.state for r in runs] == ["REQUEUED", "RUNNING"]
    assert [r.meter_step()["JobIDRaw"] for r in runs] == ["1.1", "1.0"]  # found by name, not number
    assert runs[1].meter_step()["ConsumedEnergyRaw"] == "45679" and not runs[1].ended


def test_a_second_capture_replaces_the_first(fake_sacct, tmp_path):
    stage = tmp_path / "stage"
    first = "\n".join(CANNED.splitlines()[:4])
    fake_sacct(f"cat <<'EOF'\n{first}\nEOF")
    assert capture(stage, "1", bin_dir=fake_sacct.bin).returncode == 0
    fake_sacct(f"cat <<'EOF'\n{CANNED}EOF")
    assert capture(stage, "1", bin_dir=fake_sacct.bin).returncode == 0
    assert len(accounting.load_capture(stage / "accounting" / "1.json")["rows"]) == 8


@pytest.mark.parametrize("body, message", [
    ("echo 'sacct: error: Problem talking to the database: Connection refused' >&2; exit 1",
     "sacct exited 1: sacct: error: Problem talking to the database: Connection refused"),
    ("exit 0", "sacct has no record of job 1"),
    ("echo '1|only|three'", "sacct row has 3 fields, expected 11"),
])
def test_sacct_failing_never_fails_the_job(fake_sacct, tmp_path, body, message):
    fake_sacct(body)
    stage = tmp_path / "stage"
    result = capture(stage, "1", "--settle-s", "0", bin_dir=fake_sacct.bin)
    assert result.returncode == 0
    assert f"job 1: accounting not captured: {message}" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (stage / "accounting" / "1.json").exists()


def test_a_hanging_sacct_is_given_up_in_time(fake_sacct, tmp_path):
    """The capture runs before the requeue decision: a stuck database must not eat the time the
    pre-timeout signal leaves for it."""
    fake_sacct("exec sleep 60")
    started = time.monotonic()
    result = capture(tmp_path / "stage", "1", "--max-s", "1", bin_dir=fake_sacct.bin)
    assert time.monotonic() - started < 15
    assert result.returncode == 0 and "accounting not captured: sacct did not answer in 1 s" in result.stderr


def test_no_sacct_on_path_never_fails_the_job(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = capture(tmp_path / "stage", "7", bin_dir=empty, path_only=True)
    assert result.returncode == 0
    assert "accounting not captured: sacct not found on PATH" in result.stderr
    assert not (tmp_path / "stage" / "accounting").exists()


def test_an_unwritable_stage_dir_never_fails_the_job(fake_sacct, tmp_path):
    fake_sacct(f"cat <<'EOF'\n{CANNED}EOF")
    blocker = tmp_path / "stage"
    blocker.write_text("a file where the stage directory should be")
    result = capture(blocker, "1", bin_dir=fake_sacct.bin)
    assert result.returncode == 0 and "accounting not captured" in result.stderr


def test_a_failed_write_keeps_the_previous_capture_whole(tmp_path):
    path = tmp_path / "accounting" / "1.json"
    accounting.write_atomic(path, {"rows": [{"JobIDRaw": "1"}]})
    with pytest.raises(TypeError):
        accounting.write_atomic(path, {"rows": [object()]})  # fails half-way through the JSON
    assert json.loads(path.read_text()) == {"rows": [{"JobIDRaw": "1"}]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["1.json"]


def test_capture_waits_for_ended_steps_to_reach_the_database(fake_sacct, tmp_path):
    """Right after the meter step ends, slurmdbd may not have its end (and energy) yet."""
    settled = tmp_path / "settled.txt"
    settled.write_text(CANNED)
    early = tmp_path / "early.txt"
    early.write_text(CANNED.replace("2026-11-22T19:55:43|38|45679", "Unknown|38|0"))
    counter = tmp_path / "calls"
    fake_sacct(f'echo x >> {counter}; if [ $(wc -l < {counter}) -lt 3 ]; then cat {early}; else cat {settled}; fi')
    stage = tmp_path / "stage"
    result = capture(stage, "1", "--settle-s", "10", bin_dir=fake_sacct.bin)
    assert result.returncode == 0, result.stderr
    assert len(counter.read_text().split()) == 3
    runs = accounting.runs_of(accounting.load_capture(stage / "accounting" / "1.json")["rows"], "1")
    assert runs[1].meter_step()["ConsumedEnergyRaw"] == "45679"


def test_capture_keeps_what_it_has_when_the_database_stays_behind(fake_sacct, tmp_path):
    early = tmp_path / "early.txt"
    early.write_text(CANNED.replace("2026-11-22T19:55:43|38|45679", "Unknown|38|0"))
    fake_sacct(f"cat {early}")
    result = capture(tmp_path / "stage", "1", "--settle-s", "1", bin_dir=fake_sacct.bin)
    assert result.returncode == 0
    assert len(accounting.load_capture(tmp_path / "stage" / "accounting" / "1.json")["rows"]) == 8


@pytest.mark.parametrize("args, message", [
    ([], "usage: python3 -m monitoring.accounting capture <stage_dir> <job_id>"),
    (["stage", ""], "job id must be a number, got ''"),
    (["stage", "12;rm"], "job id must be a number, got '12;rm'"),
    (["stage", "1", "--settle-s", "soon"], "--settle-s needs a number of seconds"),
    (["stage", "1", "--max-s"], "--max-s needs a number of seconds"),
])
def test_a_malformed_command_line_is_one_line_and_exit_2(tmp_path, args, message):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = ["capture", *[str(tmp_path / a) if a == "stage" else a for a in args]] if args else ["capture"]
    result = subprocess.run([sys.executable, "-m", "monitoring.accounting", *argv], env=env,
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_the_capture_module_uses_only_the_standard_library():
    """It runs on the batch node's host python3, outside the container: no third-party import (it may use
    the checkout's own standard-library modules, such as the one atomic writer saul.data.atomic)."""
    probe = ("import sys; import monitoring.accounting; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('yaml','pandas','numpy','torch','codecarbon','omegaconf','rich')))")
    result = subprocess.run([sys.executable, "-S", "-c", probe], env=dict(os.environ, PYTHONPATH=str(REPO)),
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr  # -S: site-packages are not even on the path
    assert result.stdout.strip() == "[]"


def test_a_sacct_export_with_header_parses():
    text = ("JobID|JobName|State|NNodes|ConsumedEnergyRaw|\n"  # --parsable: a trailing '|'
            "9001|eval|COMPLETED|1|9000000|\n9001.batch|batch|COMPLETED|1|9000000|\n")
    rows = accounting.parse_export(text)
    assert rows[0] == {"JobID": "9001", "JobName": "eval", "State": "COMPLETED", "NNodes": "1",
                       "ConsumedEnergyRaw": "9000000", "JobIDRaw": "9001"}
    assert accounting.job_ids(rows) == ["9001"]
    with pytest.raises(accounting.AccountingError, match="not a sacct header"):
        accounting.parse_export("9001|eval|COMPLETED\n")
    with pytest.raises(accounting.AccountingError, match="empty sacct export"):
        accounting.parse_export("\n")


@pytest.mark.parametrize("text, names", [
    ("n[1-2]", ["n1", "n2"]),
    ("nid[001-003,007],login1", ["nid001", "nid002", "nid003", "nid007", "login1"]),
    ("x1000c[0-1]s0b0n[0-1]", ["x1000c0s0b0n0", "x1000c0s0b0n1", "x1000c1s0b0n0", "x1000c1s0b0n1"]),
    ("n3", ["n3"]),
    ("None assigned", []),
    ("", []),
])
def test_node_lists_expand_like_slurm(text, names):
    assert accounting.expand_hostlist(text) == names


def test_sacct_fields_parse():
    assert accounting.parse_time("Unknown") is None and accounting.parse_time("") is None
    assert accounting.parse_time("2024-02-20T08:00:00") == pytest.approx(
        __import__("datetime").datetime(2024, 2, 20, 8).timestamp())
    assert accounting.parse_tres("billing=64,gres/gpu=8,node=1") == {"billing": "64", "gres/gpu": "8", "node": "1"}
    assert accounting.step_number({"JobIDRaw": "12.3"}) == 3
    assert accounting.step_number({"JobIDRaw": "12.batch"}) is None
    assert accounting.parse_int("") is None and accounting.parse_int("42") == 42
