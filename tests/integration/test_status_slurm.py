"""jobs/status.py and jobs/cancel.py against a real Slurm cluster (tests/slurm_cluster.py).

A plain `sleep` job stands in for a stage: what status and cancel read is the ledger's
`submitted` record and sacct, not what the job runs. Every wait polls with a deadline.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from saul.resilience import ledger
from tests.slurm_cluster import LocalSlurmCluster

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]


def slurm_stage(runs: Path, run: str = "r", stage: str = "cpt") -> Path:
    stage_dir = runs / run / stage
    stage_dir.mkdir(parents=True)
    cfg = OmegaConf.create({"stage": stage, "run": run, "runs_root": str(runs), "nodes": 1, "nproc": 1,
                            "time_limit_min": 5, "site": {"name": "local-slurm", "scheduler": "slurm"},
                            "train": {"max_steps": 10}})
    (stage_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return stage_dir


def cli(cluster: LocalSlurmCluster, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / script), *args], capture_output=True, text=True,
                          timeout=60, env=cluster.client_environ({"COLUMNS": "250"}))


def poll_status(cluster: LocalSlurmCluster, runs: Path, until, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        result = cli(cluster, "status.py", "run=r", f"runs_root={runs}", "--json")
        assert result.returncode == 0, result.stderr
        [stage] = json.loads(result.stdout)["stages"]
        if until(stage):
            return stage
        assert time.monotonic() < deadline, f"status never reached the expected state; last: {stage}"
        time.sleep(0.5)


def test_status_shows_a_running_job_and_cancel_stops_it(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    stage_dir = slurm_stage(runs)
    job_id = slurm_cluster.sbatch("-o", str(tmp_path / "sleep.out"), "--wrap", "sleep 120")
    ledger.append(stage_dir / "ledger.jsonl", {"event": "submitted", "job_id": job_id, "site": "local-slurm",
                                               "nodes": 1, "nproc": 1, "time_limit_min": 5})

    stage = poll_status(slurm_cluster, runs, lambda s: s["jobs"] == [{"job_id": job_id, "state": "RUNNING"}])
    assert stage["state"] == "running" and stage["scheduler"] == "slurm"
    table = cli(slurm_cluster, "status.py", "run=r", f"runs_root={runs}")
    assert table.returncode == 0, table.stderr
    assert f"{job_id} RUNNING" in table.stdout and "running" in table.stdout

    cancelled = cli(slurm_cluster, "cancel.py", "run=r", f"runs_root={runs}")
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"cancelled Slurm job {job_id} (RUNNING) of run r stage cpt" in cancelled.stdout

    slurm_cluster.wait_for_sacct(job_id, lambda rows: any(
        row["JobID"] == job_id and row["State"].startswith("CANCELLED") for row in rows), timeout=30)
    events = [r for r in ledger.read(stage_dir / "ledger.jsonl") if r["event"] == "cancelled"]
    assert [(e["job_id"], e["state"]) for e in events] == [(job_id, "RUNNING")]
    poll_status(slurm_cluster, runs, lambda s: s["state"] == "cancelled")

    again = cli(slurm_cluster, "cancel.py", "run=r", f"runs_root={runs}")
    assert again.returncode == 0 and "nothing to cancel" in again.stdout
