"""The local Slurm cluster behaves like a real one: multi-node jobs, requeue on node
failure, and energy accounting from pm_counters.

These run real slurmctld/slurmd/slurmdbd daemons (tests/slurm_cluster.py) and skip
where that is impossible. Every wait polls with a deadline; no test sleeps a fixed time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.slurm_cluster import LocalSlurmCluster

pytestmark = pytest.mark.slurm


def _allocation_rows(rows: list[dict[str, str]], job_id: str) -> list[dict[str, str]]:
    """sacct rows of the job allocation itself (not its steps), oldest run first."""
    return [row for row in rows if row["JobID"] == job_id]


def _hostnames(cluster: LocalSlurmCluster, nodelist: str) -> list[str]:
    return cluster.run(["scontrol", "show", "hostnames", nodelist]).stdout.split()


def _wait_for_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} not created within {timeout} s"
        time.sleep(0.1)


def test_two_node_job_runs_srun_on_both_nodes(slurm_cluster: LocalSlurmCluster,
                                              tmp_path: Path) -> None:
    output = tmp_path / "hostname.out"
    job_id = slurm_cluster.sbatch("-N", "2", "-o", str(output), "--wrap", "srun hostname")

    def finished_on_two_nodes(rows: list[dict[str, str]]) -> bool:
        # slurmdbd fills the allocation's NodeList in asynchronously: wait for all of it.
        allocation = _allocation_rows(rows, job_id)
        return (len(allocation) == 1 and allocation[0]["State"] == "COMPLETED"
                and len(_hostnames(slurm_cluster, allocation[0]["NodeList"])) == 2)

    rows = slurm_cluster.wait_for_sacct(
        job_id, finished_on_two_nodes, timeout=60,
        fields=("JobID", "State", "NodeList", "NNodes", "ExitCode"),
    )

    allocation = _allocation_rows(rows, job_id)[0]
    assert allocation["NNodes"] == "2"
    assert allocation["ExitCode"] == "0:0"
    allocated = _hostnames(slurm_cluster, allocation["NodeList"])
    # Each slurmd runs in its own UTS namespace, so `hostname` names the node.
    printed = sorted(output.read_text().split())
    assert printed == sorted(allocated)
    assert set(printed) <= set(slurm_cluster.node_names)


def test_requeue_job_restarts_on_another_node_after_node_failure(
        slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    slurm_cluster.wait_for_nodes("idle")
    runs = tmp_path / "runs.txt"
    # Each run appends "<node> <restart count>"; the job then waits to be cancelled.
    job_id = slurm_cluster.sbatch(
        "--requeue", "-N", "1", "-o", str(tmp_path / "job.out"), "--wrap",
        f'echo "$(hostname) ${{SLURM_RESTART_COUNT:-0}}" >> {runs}; sleep 600',
    )
    failed_node = None
    try:
        _wait_for_file(runs)
        failed_node = runs.read_text().split()[0]
        slurm_cluster.set_node_state(failed_node, "down", "test: simulated node failure")

        def failed_then_running_elsewhere(rows: list[dict[str, str]]) -> bool:
            allocation = _allocation_rows(rows, job_id)
            return (len(allocation) >= 2 and allocation[0]["State"] == "NODE_FAIL"
                    and allocation[-1]["State"] == "RUNNING")

        # cred_expire=10 lets the requeued job start again after ~25 s (default: 120 s).
        rows = slurm_cluster.wait_for_sacct(job_id, failed_then_running_elsewhere,
                                            timeout=90, duplicates=True)
        runs_in_sacct = _allocation_rows(rows, job_id)
        first_run, last_run = runs_in_sacct[0], runs_in_sacct[-1]
        assert first_run["NodeList"] == failed_node
        assert last_run["NodeList"] != failed_node

        deadline = time.monotonic() + 30
        while len(runs.read_text().splitlines()) < 2:
            assert time.monotonic() < deadline, f"no second run recorded: {runs.read_text()!r}"
            time.sleep(0.1)
        second_node, restart_count = runs.read_text().splitlines()[1].split()
        assert second_node == last_run["NodeList"]
        assert restart_count == "1"
    finally:
        slurm_cluster.run(["scancel", job_id], check=False)
        if failed_node is not None:
            # check=False: a failure before the node went down must not be masked here.
            slurm_cluster.run(["scontrol", "update", f"NodeName={failed_node}", "State=resume"],
                              check=False)
        slurm_cluster.wait_for_nodes("idle")


def test_batch_step_energy_equals_pm_counter_difference(
        slurm_cluster_energy: LocalSlurmCluster, tmp_path: Path) -> None:
    cluster = slurm_cluster_energy
    node = cluster.node_names[0]
    started, finish = tmp_path / "started", tmp_path / "finish"
    # The plugin needs a non-zero counter when the step starts; it keeps the difference.
    cluster.write_pm_counter(node, "energy", 1000, "J")
    job_id = cluster.sbatch(
        "-w", node, "-o", str(tmp_path / "job.out"), "--wrap",
        f"touch {started}; while [ ! -e {finish} ]; do sleep 0.1; done",
    )
    try:
        _wait_for_file(started)
        cluster.write_pm_counter(node, "energy", 1777, "J")
        finish.touch()

        batch_step = f"{job_id}.batch"
        rows = cluster.wait_for_sacct(
            job_id,
            lambda rows: any(r["JobID"] == batch_step and r["State"] == "COMPLETED"
                             and r["ConsumedEnergyRaw"] for r in rows),
            timeout=60, fields=("JobID", "State", "NodeList", "ConsumedEnergyRaw"),
        )
    finally:
        cluster.run(["scancel", job_id], check=False)

    batch = next(r for r in rows if r["JobID"] == batch_step)
    assert batch["NodeList"] == node
    assert int(batch["ConsumedEnergyRaw"]) == 1777 - 1000
