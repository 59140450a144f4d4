"""jobs/run_status.py, jobs/status.py and jobs/cancel.py on run directories written the way the toolkit writes them.

Ledger lines go through saul.resilience.ledger.append, metrics through MetricsWriter, config.yaml
through OmegaConf, checkpoints as step-NNNNNNNN/manifest.json; no Slurm here (sacct states are
passed in), see tests/integration/test_status_slurm.py for the real thing.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from jobs import run_status
from saul.config.errors import ConfigError
from saul.resilience import ledger
from saul.train.checkpoint import step_dir_name
from saul.train.metrics import MetricsWriter

REPO = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()
NOW = 1_800_000_000.0


# ---------------------------------------------------------------- building run directories

def make_stage(root: Path, run: str = "legal", stage: str = "cpt", scheduler: str = "local",
               max_steps: int = 100, nodes: int = 1, nproc: int = 2) -> Path:
    stage_dir = root / run / stage
    stage_dir.mkdir(parents=True)
    # config.yaml as submit freezes it: the local site's scheduler is "none"
    site = {"name": "local", "scheduler": "none"} if scheduler == "local" else {"name": "lumi", "scheduler": scheduler}
    cfg = OmegaConf.create({"stage": stage, "run": run, "runs_root": str(root), "nodes": nodes, "nproc": nproc,
                            "time_limit_min": 60, "site": site, "train": {"max_steps": max_steps, "log_every": 1}})
    (stage_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return stage_dir


def record(stage_dir: Path, **fields) -> None:
    ledger.append(stage_dir / "ledger.jsonl", fields)


def attempt_start(stage_dir: Path, attempt: int, job_id: str, pid: int = 999_999_999, host: str = HOST,
                  t: float = NOW - 600) -> None:
    record(stage_dir, event="attempt_start", attempt=attempt, job_id=job_id, world_size=2, nodes=1, host=host,
           pid=pid, time=t)


def attempt_end(stage_dir: Path, attempt: int, job_id: str, exit_code: int, step_end: int,
                reason: str = "signal SIGTERM", t: float = NOW - 60) -> None:
    record(stage_dir, event="attempt_end", attempt=attempt, job_id=job_id, exit_code=exit_code, reason=reason,
           step_start=0, step_end=step_end, tokens_end=step_end * 512, resumed_from=None, time_to_first_step_s=1.5,
           time=t)


def log_steps(stage_dir: Path, steps, attempt: int = 1, step_time_s: float = 0.5, tokens_per_s: float = 1000.0,
              max_steps: int = 100) -> None:
    writer = MetricsWriter(stage_dir / "metrics.jsonl", enabled=True)
    for step in steps:
        writer.write({"step": step, "loss": 5.0 - step / 100, "lr": 1e-4, "tokens_per_s": tokens_per_s,
                      "step_time_s": step_time_s, "tokens": step * 512, "max_steps": max_steps, "attempt": attempt,
                      "time": NOW - 100 + step})
    writer.close()


def save_checkpoint(stage_dir: Path, step: int, created: float, seconds: float = 2.5, attempt: int = 1) -> None:
    step_dir = stage_dir / "checkpoints" / step_dir_name(step)
    step_dir.mkdir(parents=True)
    (step_dir / "manifest.json").write_text(json.dumps(
        {"format_version": 1, "step": step, "created": created, "files": {}, "state": {"step": step}}))
    writer = MetricsWriter(stage_dir / "metrics.jsonl", enabled=True)
    writer.write({"event": "checkpoint", "step": step, "seconds": seconds, "attempt": attempt})
    writer.close()


def fake_rank(stage_dir: Path) -> subprocess.Popen:
    """A process whose command line looks like a local rank of `stage_dir` (python -m saul.stage_entry DIR)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "saul.stage_entry", str(stage_dir)])


def run_cli(script: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / script), *args], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, COLUMNS="250", **(env or {})))


# ---------------------------------------------------------------- progress, throughput, ETA

def test_eta_is_remaining_steps_times_mean_of_last_ten_step_times(tmp_path):
    stage = make_stage(tmp_path, max_steps=100)
    attempt_start(stage, 1, "4242")
    log_steps(stage, range(1, 31), step_time_s=9.0, tokens_per_s=10.0)  # older records: outside the window
    log_steps(stage, range(31, 36), step_time_s=0.4, tokens_per_s=1000.0)
    log_steps(stage, range(36, 41), step_time_s=0.6, tokens_per_s=2000.0)
    attempt_end(stage, 1, "4242", 75, step_end=40)

    s = run_status.stage_status(stage, None, now=NOW)

    assert s.progress.step == 40 and s.progress.max_steps == 100
    assert s.progress.step_time_s == pytest.approx(0.5)
    assert s.progress.tokens_per_s == pytest.approx(1500.0)
    assert s.progress.eta_s == pytest.approx(60 * 0.5)
    assert s.progress.fraction == pytest.approx(0.4)
    assert s.progress.tokens == 40 * 512


def test_throughput_comes_from_the_newest_attempt_only(tmp_path):
    stage = make_stage(tmp_path, max_steps=50)
    log_steps(stage, range(1, 21), attempt=1, step_time_s=2.0)
    log_steps(stage, range(21, 24), attempt=2, step_time_s=1.0)

    s = run_status.stage_status(stage, None, now=NOW)

    assert s.progress.step_time_s == pytest.approx(1.0)
    assert s.progress.eta_s == pytest.approx((50 - 23) * 1.0)


def test_max_steps_follows_config_yaml_after_a_config_change(tmp_path):
    stage = make_stage(tmp_path, max_steps=200)  # the submit that raised it rewrote config.yaml
    log_steps(stage, range(1, 11), max_steps=100, step_time_s=1.0)
    record(stage, event="config_change", changes=[["train.max_steps", 100, 200]])

    s = run_status.stage_status(stage, None, now=NOW)

    assert s.progress.max_steps == 200 and s.progress.eta_s == pytest.approx(190.0)
    assert s.config_changes == 1


def test_metrics_tail_is_read_from_the_end_of_a_long_file(tmp_path, monkeypatch):
    stage = make_stage(tmp_path)
    log_steps(stage, range(1, 2001), step_time_s=1.0)
    with open(stage / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2001, "loss"')  # cut by a kill mid-write
    monkeypatch.setattr(run_status, "METRICS_TAIL_BYTES", 256)  # forces the doubling path

    records = run_status.tail_records(stage / "metrics.jsonl")

    steps = [r["step"] for r in records]
    assert steps[-1] == 2000 and len(steps) >= run_status.THROUGHPUT_WINDOW
    assert len(steps) < 2000
    assert steps == list(range(steps[0], 2001))


# ---------------------------------------------------------------- checkpoints and events

def test_newest_readable_checkpoint_with_its_age_and_save_time(tmp_path):
    stage = make_stage(tmp_path)
    save_checkpoint(stage, 10, created=NOW - 7200, seconds=1.0)
    save_checkpoint(stage, 20, created=NOW - 300, seconds=2.5)
    (stage / "checkpoints" / step_dir_name(30)).mkdir()  # no manifest: a save cut before its manifest
    (stage / "checkpoints" / ".tmp-step-00000040").mkdir()  # in progress: never a checkpoint

    s = run_status.stage_status(stage, None, now=NOW)

    assert (s.checkpoint.step, s.checkpoint.age_s, s.checkpoint.save_s) == (20, 300, 2.5)
    assert s.progress.step == 20  # the checkpoint is the furthest evidence of progress here


def test_unknown_events_are_counted_and_excluded_nodes_listed(tmp_path):
    stage = make_stage(tmp_path, scheduler="slurm")
    record(stage, event="submitted", job_id="11", site="lumi", nodes=4, nproc=8, time_limit_min=60)
    record(stage, event="failure", **{"class": "nccl_timeout", "node": "nid001"})
    record(stage, event="failure", **{"class": "ecc", "node": "nid002"})
    record(stage, event="node_excluded", node="nid002", reason="ecc")
    record(stage, event="node_excluded", node="nid001", reason="nccl_timeout")
    record(stage, event="node_excluded", node="nid003", reason="NODE_FAIL")
    record(stage, event="node_cleared", node="nid003")
    record(stage, event="hang", job_id="11", why="no heartbeat for 600s")
    record(stage, event="job_end", job_id="11", restart_count=0, exit_code=1, action="stop",
           why="3 crashes in a row without a new checkpoint (budget 3)")

    s = run_status.stage_status(stage, {"11": "PENDING"}, now=NOW)

    assert s.other_events == {"failure": 2, "hang": 1}
    assert s.excluded_nodes == ["nid002", "nid001"]  # exclusion order, as sbatch's --exclude gets them
    assert s.requeue_verdict == "stop: 3 crashes in a row without a new checkpoint (budget 3)"
    assert (s.nodes, s.nproc, s.site) == (4, 8, "lumi")  # the newest submission's shape


# ---------------------------------------------------------------- states

@pytest.mark.parametrize("exit_code, state", [(0, "done"), (75, "stopped (resumable)"), (2, "failed"), (1, "failed"),
                                              (137, "failed")])
def test_state_of_an_ended_attempt_follows_its_exit_code(tmp_path, exit_code, state):
    stage = make_stage(tmp_path)
    attempt_start(stage, 1, "1700000000123")
    attempt_end(stage, 1, "1700000000123", exit_code, step_end=10, reason="why")

    s = run_status.stage_status(stage, None, now=NOW)

    assert s.state == state
    assert (s.attempts.count, s.attempts.exit_code, s.attempts.reason, s.attempts.open) == (1, exit_code, "why", False)
    assert [(j.job_id, j.state) for j in s.jobs] == [("1700000000123", "local")]


def test_a_stage_with_only_its_config_never_started(tmp_path):
    s = run_status.stage_status(make_stage(tmp_path), None, now=NOW)
    assert s.state == "never started" and s.attempts.count == 0 and s.progress.eta_s is None


def test_prepare_is_done_when_its_dataset_manifest_exists(tmp_path):
    stage = make_stage(tmp_path, stage="prepare")
    assert run_status.stage_status(stage, None).state == "never started"
    (tmp_path / "legal" / "data").mkdir()
    (tmp_path / "legal" / "data" / "manifest.json").write_text("{}")
    assert run_status.stage_status(stage, None).state == "done"


def test_local_attempt_is_running_while_its_rank_process_lives(tmp_path):
    stage = make_stage(tmp_path)
    rank = fake_rank(stage)
    try:
        attempt_start(stage, 1, "77", pid=rank.pid)
        assert run_status.stage_status(stage, None).state == "running"
    finally:
        rank.kill()
        rank.wait()
    # Killed without an attempt_end (SIGKILL, OOM): no longer running, and not resumable by its own word.
    assert run_status.stage_status(stage, None).state == "failed"


def test_a_cancelled_local_stage_runs_until_its_ranks_have_checkpointed(tmp_path):
    stage = make_stage(tmp_path)
    rank = fake_rank(stage)
    try:
        attempt_start(stage, 1, "77", pid=rank.pid)
        record(stage, event="cancelled", job_id="77", pid=rank.pid, signal="SIGTERM")
        assert run_status.stage_status(stage, None).state == "running"
    finally:
        rank.kill()
        rank.wait()
    attempt_end(stage, 1, "77", 75, step_end=12)
    assert run_status.stage_status(stage, None).state == "stopped (resumable)"


def test_local_attempt_on_another_host_is_judged_by_how_fresh_the_files_are(tmp_path):
    stage = make_stage(tmp_path)
    attempt_start(stage, 1, "77", host="other-login-node")
    fresh = time.time()
    assert run_status.stage_status(stage, None, now=fresh).state == "running"
    assert run_status.stage_status(stage, None, now=fresh + run_status.STALE_AFTER_S + 1).state == "failed"


def test_a_reused_pid_is_not_taken_for_a_rank(tmp_path):
    stage = make_stage(tmp_path)
    attempt_start(stage, 1, "77", pid=os.getpid())  # alive, but pytest is no rank of this stage
    assert run_status.stage_status(stage, None).state == "failed"


@pytest.mark.parametrize("slurm, state", [
    ({"12": "PENDING"}, "pending"), ({"12": "REQUEUED"}, "pending"), ({"12": "RUNNING"}, "running"),
    ({"12": "COMPLETING"}, "running"), ({"12": "CANCELLED"}, "cancelled"), ({"12": "FAILED"}, "failed"),
    ({"12": "TIMEOUT"}, "failed"), ({}, "unknown"),
])
def test_slurm_job_without_an_attempt_takes_its_state_from_sacct(tmp_path, slurm, state):
    stage = make_stage(tmp_path, scheduler="slurm")
    record(stage, event="submitted", job_id="12", site="lumi", nodes=1, nproc=2, time_limit_min=60)

    s = run_status.stage_status(stage, slurm, now=NOW)

    assert s.state == state
    assert [(j.job_id, j.state) for j in s.jobs] == [("12", slurm.get("12", "UNKNOWN"))]


def test_a_requeued_job_is_pending_even_though_its_last_attempt_stopped(tmp_path):
    stage = make_stage(tmp_path, scheduler="slurm")
    record(stage, event="submitted", job_id="12", site="lumi", nodes=1, nproc=2, time_limit_min=60)
    attempt_start(stage, 1, "12", host="nid001")
    attempt_end(stage, 1, "12", 75, step_end=40)

    assert run_status.stage_status(stage, {"12": "REQUEUED"}, now=NOW).state == "pending"
    assert run_status.stage_status(stage, {"12": "COMPLETED"}, now=NOW).state == "stopped (resumable)"


def test_open_slurm_attempt_without_sacct_is_judged_by_how_fresh_the_files_are(tmp_path):
    stage = make_stage(tmp_path, scheduler="slurm")
    record(stage, event="submitted", job_id="12", site="lumi", nodes=1, nproc=2, time_limit_min=60)
    attempt_start(stage, 1, "12", host="nid001")
    log_steps(stage, range(1, 5))
    fresh = time.time()

    assert run_status.stage_status(stage, {}, now=fresh).state == "running"
    assert run_status.stage_status(stage, {}, now=fresh + run_status.STALE_AFTER_S + 1).state == "failed"
    assert run_status.stage_status(stage, {"12": "NODE_FAIL"}, now=fresh).state == "failed"
    assert run_status.stage_status(stage, {"12": "CANCELLED"}, now=fresh).state == "cancelled"


def test_collect_asks_slurm_once_for_the_recent_slurm_jobs_only(tmp_path):
    slurm_stage = make_stage(tmp_path, run="a", stage="cpt", scheduler="slurm")
    for job in range(10, 16):
        record(slurm_stage, event="submitted", job_id=str(job), site="lumi", nodes=1, nproc=2, time_limit_min=60)
    local_stage = make_stage(tmp_path, run="b", stage="cpt")
    attempt_start(local_stage, 1, "99")
    calls = []

    def fake_sacct(ids):
        calls.append(list(ids))
        return {"13": "CANCELLED", "14": "RUNNING", "15": "PENDING"}

    statuses = run_status.collect(run_status.select_stages(tmp_path), query=fake_sacct)

    assert calls == [["11", "12", "13", "14", "15"]]  # newest QUERIED_JOBS; no local ids
    assert [s.state for s in statuses] == ["running", "failed"]
    assert [j.job_id for j in statuses[0].live_jobs] == ["14", "15"]
    assert statuses[0].jobs[0].state == "UNKNOWN"


# ---------------------------------------------------------------- finding runs

def test_find_runs_orders_stages_by_pipeline_and_skips_non_stage_dirs(tmp_path):
    make_stage(tmp_path, stage="anneal")
    make_stage(tmp_path, stage="cpt")
    make_stage(tmp_path, stage="prepare")
    (tmp_path / "legal" / "data").mkdir()
    (tmp_path / "legal" / "reports").mkdir()
    (tmp_path / "empty-run").mkdir()

    runs = run_status.find_runs(tmp_path)

    assert list(runs) == ["legal"]
    assert [p.name for p in runs["legal"]] == ["prepare", "cpt", "anneal"]


def test_unknown_run_or_stage_is_a_config_error_with_a_suggestion(tmp_path):
    make_stage(tmp_path, run="legal-cpt")
    with pytest.raises(ConfigError, match=r"^no run 'legal-cp' under .* \(did you mean 'legal-cpt'\?\)$"):
        run_status.find_runs(tmp_path, "legal-cp")
    with pytest.raises(ConfigError, match=r"no stage 'cp' in run 'legal-cpt' \(did you mean 'cpt'\?\)"):
        run_status.select_stages(tmp_path, "legal-cpt", "cp")


def test_parse_selection_takes_settings_and_options():
    settings, options = run_status.parse_selection(
        ["run=r", "--watch", "--interval", "2", "stage=cpt"], {"--watch": False, "--interval": True})
    assert settings == {"run": "r", "stage": "cpt"} and options == {"--watch": True, "--interval": "2"}
    with pytest.raises(ConfigError, match="did you mean 'run'"):
        run_status.parse_selection(["rnu=r"], {})


# ---------------------------------------------------------------- the command lines

def test_status_cli_unknown_run_is_one_line_and_exit_2(tmp_path):
    make_stage(tmp_path, run="legal")
    result = run_cli("status.py", "run=legl", f"runs_root={tmp_path}")
    assert result.returncode == 2
    assert result.stderr == f"error: no run 'legl' under {tmp_path} (did you mean 'legal'?)\n"
    assert result.stdout == ""


def test_status_cli_without_runs_says_so_and_exits_0(tmp_path):
    result = run_cli("status.py", f"runs_root={tmp_path / 'nothing-here'}")
    assert result.returncode == 0, result.stderr
    assert "no runs under" in result.stdout and "jobs/submit.py" in result.stdout


def test_status_cli_json_and_table(tmp_path):
    stage = make_stage(tmp_path, max_steps=100)
    attempt_start(stage, 1, "4242")
    log_steps(stage, range(1, 41), step_time_s=0.5)
    save_checkpoint(stage, 40, created=time.time() - 90)
    attempt_end(stage, 1, "4242", 75, step_end=40)
    make_stage(tmp_path, run="other", stage="cpt")

    result = run_cli("status.py", f"runs_root={tmp_path}", "run=legal", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    [s] = data["stages"]
    assert (s["run"], s["stage"], s["state"], s["scheduler"]) == ("legal", "cpt", "stopped (resumable)", "local")
    assert s["progress"]["step"] == 40 and s["progress"]["eta_s"] == pytest.approx(30.0)
    assert s["progress"]["fraction"] == pytest.approx(0.4)
    assert s["checkpoint"]["step"] == 40 and s["attempts"]["exit_code"] == 75

    table = run_cli("status.py", f"runs_root={tmp_path}")
    assert table.returncode == 0, table.stderr
    assert "stopped (resumable)" in table.stdout and "never started" in table.stdout
    assert "40/100 (40%)" in table.stdout and " 30s " in table.stdout
    assert re.search(r"step 40, 1m3\ds ago, saved in 2.5s", table.stdout)


def test_status_cli_rejects_bad_options(tmp_path):
    for args, message in ((["--jsn"], "did you mean '--json'"), (["--interval", "0"], "--interval takes"),
                          (["--watch", "--json"], "--watch redraws")):
        result = run_cli("status.py", f"runs_root={tmp_path}", *args)
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_cancel_sends_sigterm_to_a_live_local_rank_and_records_it(tmp_path):
    stage = make_stage(tmp_path)
    rank = fake_rank(stage)
    try:
        attempt_start(stage, 1, "77", pid=rank.pid)
        result = run_cli("cancel.py", "run=legal", f"runs_root={tmp_path}")
        assert result.returncode == 0, result.stderr
        assert f"sent SIGTERM to rank 0 (pid {rank.pid})" in result.stdout
        assert rank.wait(timeout=10) == -signal.SIGTERM
    finally:
        rank.kill()
        rank.wait()
    [cancelled] = [r for r in ledger.read(stage / "ledger.jsonl") if r["event"] == "cancelled"]
    assert (cancelled["job_id"], cancelled["pid"], cancelled["signal"]) == ("77", rank.pid, "SIGTERM")

    again = run_cli("cancel.py", "run=legal", f"runs_root={tmp_path}")
    assert again.returncode == 0 and "nothing to cancel" in again.stdout


def test_cancel_cli_needs_a_known_run(tmp_path):
    make_stage(tmp_path, run="legal")
    unknown = run_cli("cancel.py", "run=legl", f"runs_root={tmp_path}")
    assert unknown.returncode == 2
    assert unknown.stderr == f"error: no run 'legl' under {tmp_path} (did you mean 'legal'?)\n"
    missing = run_cli("cancel.py", f"runs_root={tmp_path}")
    assert missing.returncode == 2 and "run=NAME" in missing.stderr


def test_status_shows_the_capped_exclusion_list_that_sbatch_uses(tmp_path):
    """One function decides which nodes a run excludes: status shows exactly what the next sbatch gets."""
    from saul.resilience.node_exclusion import excluded_nodes

    stage = make_stage(tmp_path, scheduler="slurm")
    config = OmegaConf.load(stage / "config.yaml")
    config.resilience = {"max_excluded_nodes": 2}
    (stage / "config.yaml").write_text(OmegaConf.to_yaml(config))
    for node in ("nid001", "nid002", "nid003"):
        record(stage, event="node_excluded", node=node, reason="NODE_FAIL")

    s = run_status.stage_status(stage, {}, now=NOW)

    assert s.excluded_nodes == ["nid002", "nid003"]  # the oldest drops first
    assert s.excluded_nodes == list(excluded_nodes(stage / "ledger.jsonl", 2))
