"""Our per-node meters against Slurm's own energy accounting, on a real 2-node Slurm cluster.

The `slurm_cluster_energy` cluster runs acct_gather_energy/pm_counters: each slurmd sees a
directory of ours at /sys/cray/pm_counters (its own mount namespace), and so do the jobs it
starts, our meters included. A writer thread advances each node's `energy` counter at a known
power (500 W on n1, 700 W on n2) every 0.1 s. A 2-node tiny CPT then runs through
jobs/submit.py exactly as a user would start it; afterwards we check

* one meter file per node, and each node's energy = its power x its metered time (2%);
* our total against Slurm's ConsumedEnergyRaw of the *meter step*: the srun step that ran our
  meters, so the same processes on the same nodes. Slurm reads the counters when the step's
  tasks start and end; our meter's first sample comes after srun, bash and Python start-up
  and its last one at the stop. Slurm's window is therefore longer by that start-up time, and
  (Slurm - ours) / total power must be a short, non-negative stretch of time: we allow
  -0.3 s (counter steps of 0.1 s at both ends, integer joules) to +3 s (start-up of a Python
  process on a 2-core VM busy starting the ranks).

The job allocation's ConsumedEnergy is printed, not compared: slurmctld adds every step's
energy into it (slurmctld/step_mgr.c, _internal_step_complete), and our meter step overlaps the
ranks' step, so it counts the nodes about twice (seen here: allocation = meter step + ranks step).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest

from monitoring import accounting, campaign
from monitoring.power_log import load_power_dir
from tests.integration import e2e

pytestmark = pytest.mark.slurm

POWER_W = {"n1": 500.0, "n2": 700.0}
START_J = {"n1": 1_000_000.0, "n2": 2_500_000.0}  # Slurm's plugin needs non-zero counters
WRITE_PERIOD_S = 0.1
MAX_START_UP_S = 3.0
COUNTER_STEP_SLACK_S = 0.3


class CounterWriter(threading.Thread):
    """Advances every node's pm_counters at its known power, like a blade controller (~10 Hz)."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.t0 = time.time()
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.write_all()  # before any job: counters are live and non-zero from the start

    def write_all(self) -> None:
        elapsed = time.time() - self.t0
        for node, watts in POWER_W.items():
            self.cluster.write_pm_counter(node, "energy", int(START_J[node] + watts * elapsed), "J")
            self.cluster.write_pm_counter(node, "power", int(watts), "W")

    def run(self) -> None:
        try:
            while not self.stopped.wait(WRITE_PERIOD_S):
                self.write_all()
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.error = exc

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


def test_meters_match_known_power_and_slurm_consumed_energy(slurm_cluster_energy, packed_data, tmp_path):
    cluster = slurm_cluster_energy
    runs = tmp_path / "runs"
    writer = CounterWriter(cluster)
    writer.start()
    try:
        started = time.time()
        result = subprocess.run(
            [*e2e.SUBMIT, "stage=cpt", "model=tiny-mixtral", "site=local-slurm", "nodes=2", "follow=true",
             f"data.path={packed_data}", f"runs_root={runs}", "run=metered", "train.max_steps=12",
             "checkpoint.every_steps=6", "train.log_every=1", "energy.interval_s=0.5"],
            env=cluster.client_environ(e2e.env_extra()), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        job = re.search(r"submitted Slurm job (\d+)", result.stdout).group(1)
        cluster.wait_for_sacct(job, lambda rows: rows and rows[0]["State"] == "COMPLETED")
    finally:
        writer.stop()
    assert writer.error is None, writer.error
    stage = runs / "metered" / "cpt"

    # One meter file per node, each reading its own node's counters. A run may have been requeued
    # (a crash before training, e.g. a port clash on a busy test host): check every run.
    assert sorted(p.name for p in (stage / "power").glob("*.jsonl")) == ["n1.jsonl", "n2.jsonl"]
    energy = load_power_dir(stage / "power")
    assert sorted(energy) == [("n1", job), ("n2", job)]
    ours_by_run = {}  # Slurm restart -> our J over both nodes
    for (node, _), measured in energy.items():
        for run in measured.runs:
            assert run.complete and run.source == "pm_counters"
            truth = POWER_W[node] * run.duration_s
            assert run.energy_j == pytest.approx(truth, rel=0.02), (node, run.attempt, run.energy_j, truth)
            print(f"\n{node} run {run.attempt}: {run.energy_j:.0f} J metered over {run.duration_s:.1f} s, "
                  f"known power gives {truth:.0f} J ({run.energy_j / truth - 1:+.2%})", end="")
            ours_by_run[run.attempt] = ours_by_run.get(run.attempt, 0.0) + run.energy_j

    # Slurm's side. The batch script's teardown captured it while the job still ran (allocation
    # RUNNING, but the meter step already over and final); capture again now that it has ended.
    path = stage / "accounting" / f"{job}.json"
    at_teardown = accounting.runs_of(json.loads(path.read_text())["rows"], job)
    assert at_teardown[-1].state == "RUNNING" and at_teardown[-1].meter_step() is not None
    capture = subprocess.run([sys.executable, "-m", "monitoring.accounting", "capture", str(stage), job],
                             env=cluster.client_environ(e2e.env_extra()), capture_output=True, text=True,
                             timeout=60)
    assert capture.returncode == 0 and "accounting not captured" not in capture.stderr, capture.stderr
    document = json.loads(path.read_text())
    slurm_runs = accounting.runs_of(document["rows"], job)
    assert len(slurm_runs) == len(at_teardown) == len(ours_by_run) >= 1
    assert slurm_runs[-1].meter_step() == at_teardown[-1].meter_step()  # nothing changed after teardown
    total_w = sum(POWER_W.values())
    rows = campaign.collect_stage(stage).rows
    assert [(r.job_id, r.restart) for r in rows] == [(job, i) for i in range(len(slurm_runs))]
    for restart, (slurm_run, row) in enumerate(zip(slurm_runs, rows)):
        step = slurm_run.meter_step()
        assert step is not None, document["rows"]
        slurm_j, ours_j = float(step["ConsumedEnergyRaw"]), ours_by_run[restart]
        extra_window_s = (slurm_j - ours_j) / total_w
        print(f"\nrun {restart} ({slurm_run.state}) meter step {step['JobIDRaw']}: Slurm {slurm_j:.0f} J, "
              f"ours {ours_j:.0f} J ({(ours_j - slurm_j) / slurm_j:+.2%}; Slurm's window "
              f"{extra_window_s:+.2f} s longer); allocation {slurm_run.allocation['ConsumedEnergyRaw']} J over "
              f"{slurm_run.allocation['ElapsedRaw']} s; test so far {time.time() - started:.0f} s")
        assert -COUNTER_STEP_SLACK_S <= extra_window_s <= MAX_START_UP_S
        # The campaign row reads the same capture and says which Slurm row it compared with.
        assert row.nodes == 2 and row.node_names == ["n1", "n2"]
        assert row.slurm_scope == f"meter step {step['JobIDRaw']}"
        assert row.slurm_rel_diff == pytest.approx((ours_j - slurm_j) / slurm_j)
        assert row.mean_power_per_node_w == pytest.approx(total_w / 2, rel=0.02)
    assert rows[-1].failure_class == "done" and rows[-1].tokens_kept == rows[-1].tokens > 0
