"""`jobs/submit.py` against a real Slurm cluster: multi-node DDP, 1 node, ZeRO-3, live-job refusal.

The cluster (tests/slurm_cluster.py) runs 3 slurmd on this machine, each in its own UTS
namespace (hostnames n1..n3); the ranks talk over loopback with gloo.
"""
import json
import re
import subprocess

import pytest

from tests.integration import e2e

pytestmark = pytest.mark.slurm


def submit(cluster, *args, timeout=600):
    env = cluster.client_environ(e2e.env_extra())
    return subprocess.run([*e2e.SUBMIT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def base(runs, data, run, *extra):
    return ["stage=cpt", "model=tiny-mixtral", f"runs_root={runs}", f"run={run}", f"data.path={data}",
            "train.max_steps=10", "checkpoint.every_steps=5", "train.log_every=1", *extra]


def ledger(runs, run):
    return [json.loads(line) for line in (runs / run / "cpt" / "ledger.jsonl").read_text().splitlines()]


def submitted_job(result) -> str:
    match = re.search(r"submitted Slurm job (\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return match.group(1)


@pytest.mark.parametrize("nodes, nproc, parallel", [(2, 2, "ddp"), (1, 1, "ddp"), (2, 2, "zero3")])
def test_stage_trains_on_the_cluster_and_sacct_agrees(slurm_cluster, packed_data, tmp_path, nodes, nproc, parallel):
    """The real rank layout: several Slurm tasks per node (2 nodes x 2 tasks), DDP and ZeRO-3, to completion."""
    runs = tmp_path / "runs"
    result = submit(slurm_cluster, *base(runs, packed_data, "r", f"nodes={nodes}", f"nproc={nproc}",
                                         f"parallel={parallel}", "follow=true"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "site:        local-slurm (Slurm cluster 'saultest' matches site_configs/local-slurm.yaml)" in result.stdout
    job = submitted_job(result)
    world = nodes * nproc

    records = ledger(runs, "r")
    start = next(r for r in records if r["event"] == "attempt_start")
    end = next(r for r in records if r["event"] == "attempt_end")
    assert start["job_id"] == job and start["world_size"] == world and start["nodes"] == nodes
    assert end["exit_code"] == 0 and end["step_end"] == 10
    assert (runs / "r" / "cpt" / "checkpoints" / "step-00000010").is_dir()
    assert (runs / "r" / "cpt" / "final").is_dir()

    rows = slurm_cluster.wait_for_sacct(job, lambda rs: rs and rs[0]["State"] == "COMPLETED",
                                        fields=("JobID", "JobName", "State", "NodeList", "NNodes", "NTasks", "ExitCode"))
    assert rows[0]["NNodes"] == str(nodes) and rows[0]["ExitCode"] == "0:0"
    step = next(r for r in rows if r["JobName"] == "saul-ranks")  # the srun step that ran the ranks
    assert step["NTasks"] == str(world) and step["State"] == "COMPLETED"
    assert start["host"] in slurm_cluster.node_names  # rank 0 ran inside a slurmd's namespace

    # Each rank said where Slurm placed it; local ranks 0..nproc-1 on every node.
    logs = runs / "r" / "cpt" / "logs" / "slurm"
    placed = {}
    for rank in range(world):
        line = next(l for l in (logs / f"{job}_{rank}_log.out").read_text().splitlines() if l.startswith("binding:"))
        match = re.match(rf"binding: rank {rank} node (\S+) local_rank (\d+): cpus \S+ \(Slurm --cpu-bind", line)
        assert match, line
        placed[rank] = (match.group(1), int(match.group(2)))
    assert sorted(local for _, local in placed.values()) == sorted(list(range(nproc)) * nodes)
    assert len({node for node, _ in placed.values()}) == nodes
    # The rendezvous port the batch script picked on the first node: below Linux's ephemeral range.
    port = int(re.search(r"rendezvous: \S+:(\d+) \(restart 0", (logs / f"{job}_0_log.out").read_text()).group(1))
    assert 10000 <= port < 32768


def test_a_second_submit_of_a_live_run_is_refused(slurm_cluster, packed_data, tmp_path):
    runs = tmp_path / "runs"
    args = base(runs, packed_data, "live", "train.max_steps=400", "checkpoint.every_steps=400")
    first = submit(slurm_cluster, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    job = submitted_job(first)
    try:
        second = submit(slurm_cluster, *args)
        assert second.returncode == 2
        assert f"already has live Slurm job {job}" in second.stderr
        assert sum(1 for r in ledger(runs, "live") if r["event"] == "submitted") == 1
    finally:
        slurm_cluster.run(["scancel", job], check=False)
