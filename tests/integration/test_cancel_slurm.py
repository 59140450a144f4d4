"""jobs/cancel.py against the real local Slurm cluster: the cancel is on record before scancel acts, so the
requeue path (after_job), which may run the moment the job is signalled, never requeues a cancelled job.

The stand-in job does what a stage's batch script does on scancel's SIGTERM: its ranks stop cleanly (exit 75)
and the teardown runs the real after_job. The `scancel` that cancel.py finds on PATH is the real one whose
reply comes back 3 s late (a busy controller): after_job runs before cancel.py could write anything after it.
"""
from __future__ import annotations

import json
import os
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


def test_a_cancelled_job_is_not_requeued_even_when_scancel_answers_late(slurm_cluster: LocalSlurmCluster,
                                                                         tmp_path: Path) -> None:
    stage = tmp_path / "runs" / "r" / "cpt"
    stage.mkdir(parents=True)
    cfg = {"stage": "cpt", "run": "r", "runs_root": str(tmp_path / "runs"), "nodes": 1, "nproc": 1,
           "time_limit_min": 5, "site": {"name": "local-slurm", "scheduler": "slurm"}, "train": {"max_steps": 10}}
    (stage / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    script = tmp_path / "stage.sh"
    script.write_text(f"""#!/bin/bash
export PYTHONPATH={REPO}
teardown() {{ {sys.executable} -m saul.resilience.after_job {stage} 75; exit 75; }}
trap teardown TERM
echo started > {tmp_path}/started
sleep 120 & wait
""")
    job = slurm_cluster.sbatch("--requeue", "-o", str(tmp_path / "job.out"), str(script))
    ledger.append(stage / "ledger.jsonl", {"event": "submitted", "job_id": job, "site": "local-slurm", "nodes": 1,
                                           "nproc": 1, "time_limit_min": 5})
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the stand-in job never started"
        time.sleep(0.2)

    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "scancel").write_text(f"#!/bin/bash\n{subprocess.check_output(['which', 'scancel'], text=True).strip()} "
                                  f"\"$@\"; rc=$?; sleep 3; exit $rc\n")
    (slow / "scancel").chmod(0o755)
    env = slurm_cluster.client_environ({"PATH": f"{slow}:{os.environ['PATH']}"})
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "cancel.py"), "run=r", f"runs_root={tmp_path / 'runs'}"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert f"cancelled Slurm job {job}" in result.stdout

    deadline = time.monotonic() + 60
    while not [r for r in ledger.read(stage / "ledger.jsonl") if r["event"] == "job_end"]:
        assert time.monotonic() < deadline, (tmp_path / "job.out").read_text()
        time.sleep(0.5)
    events = [r["event"] for r in ledger.read(stage / "ledger.jsonl")]
    assert events.index("cancelled") < events.index("job_end")
    [end] = [r for r in ledger.read(stage / "ledger.jsonl") if r["event"] == "job_end"]
    assert end["action"] == "stop" and "cancelled by the user" in end["why"]
    rows = slurm_cluster.wait_for_sacct(job, lambda rs: rs and rs[0]["State"].startswith("CANCELLED"),
                                        fields=("JobID", "State"), duplicates=True, timeout=60)
    assert sum(1 for r in rows if "." not in r["JobID"]) == 1  # ran once: never requeued
