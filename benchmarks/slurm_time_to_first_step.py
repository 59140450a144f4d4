"""Time from `jobs/submit.py` to the first training step on the local Slurm cluster (2 nodes, tiny CPT).

    python benchmarks/slurm_time_to_first_step.py [--repeats 3]

Starts a LocalSlurmCluster (tests/slurm_cluster.py; root and the Debian Slurm packages needed),
prepares the demo data, then submits the same 2-node stage several times and prints, per run:
submit command latency, submit -> job start (Slurm scheduling), job start -> first step (process
start, imports, process group, model build), and the total.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from saul.resilience import ledger  # noqa: E402
from tests.slurm_cluster import LocalSlurmCluster  # noqa: E402

SUBMIT = [sys.executable, str(REPO / "jobs" / "submit.py")]


def first_step_time(metrics: Path, timeout: float = 300) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [r for r in ledger.read(metrics) if "loss" in r]
        if steps:
            return steps[0]["time"]
        time.sleep(0.05)
    raise RuntimeError(f"no training step in {metrics} after {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ok, reason = LocalSlurmCluster.available()
    if not ok:
        sys.exit(f"cannot start the local Slurm cluster: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = LocalSlurmCluster(root / "cluster", nodes=3)
        try:
            cluster.start()
            env = cluster.client_environ({"PYTHONPATH": str(REPO)})
            subprocess.run([*SUBMIT, "stage=prepare", "model=tiny-mixtral", "site=local", f"runs_root={root}",
                            "run=data"], env=env, check=True, capture_output=True)
            rows = []
            for i in range(args.repeats):
                run = f"r{i}"
                t0 = time.time()
                out = subprocess.run([*SUBMIT, "stage=cpt", "model=tiny-mixtral", "site=local-slurm", "nodes=2",
                                      f"runs_root={root}", f"run={run}", f"data.path={root}/data/data",
                                      "train.max_steps=5"], env=env, check=True, capture_output=True, text=True)
                submitted = time.time()
                first = first_step_time(root / run / "cpt" / "metrics.jsonl")
                records = ledger.read(root / run / "cpt" / "ledger.jsonl")
                job = out.stdout.split("submitted Slurm job ")[1].split()[0]
                start_iso = cluster.wait_for_sacct(job, lambda r: r and r[0].get("Start", "Unknown") != "Unknown",
                                                   fields=("JobID", "Start"))[0]["Start"]
                started = time.mktime(time.strptime(start_iso, "%Y-%m-%dT%H:%M:%S"))
                attempt = next(r for r in records if r["event"] == "attempt_start")["time"]
                rows.append((submitted - t0, started - t0, attempt - t0, first - t0))
                time.sleep(8)  # let the job finish before the next submit
            print("run  submit-cmd  ->job-start  ->rank-0-up  ->first-step   (seconds from typing submit)")
            for i, (cmd, start, up, first) in enumerate(rows):
                print(f"r{i}   {cmd:9.2f}  {start:10.1f}  {up:10.1f}  {first:11.1f}")
            print(f"median time to first step: {statistics.median(r[3] for r in rows):.1f} s")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
