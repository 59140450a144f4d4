"""A post-training stage on the real local Slurm cluster (2 nodes, one rank each): a time-limit
signal (USR2) mid-training stops every rank at the same step, which is checkpointed; the job is
requeued by our own path and finishes, with no step lost or repeated and DPO's stored reference
log-probabilities reused. IFT runs the same TrainingStage path (saul/stages/training.py)."""
import time

import pytest

from tests.integration import e2e
from tests.integration.test_faults_slurm import ledger, submit, wait_until_done

pytestmark = pytest.mark.slurm

STEPS = 8


def test_dpo_stops_on_usr2_at_one_step_checkpoints_requeues_and_finishes(slurm_cluster, packed_data, tmp_path):
    runs = tmp_path / "runs"
    job = submit(slurm_cluster, "stage=dpo", "model=tiny-mixtral", f"runs_root={runs}", "run=usr2",
                 f"data.path={packed_data}", "nproc=1", "dpo.demo_pairs=16", "train.micro_batch=2",
                 "train.grad_accum=1", f"train.max_steps={STEPS}", "checkpoint.every_steps=100",
                 "train.log_every=1", "train.threads_per_rank=1", "energy.enabled=false")
    stage = runs / "usr2" / "dpo"
    deadline = time.time() + 240
    while not any(r.get("step", 0) >= 2 for r in e2e.step_records(stage / "metrics.jsonl")):
        assert time.time() < deadline, f"no training step in 240s; ledger: {ledger(stage)}"
        time.sleep(0.2)
    slurm_cluster.run(["scancel", "--signal=USR2", job])

    ends = wait_until_done(stage)
    assert [(e["class"], e["action"]) for e in ends] == [("stopped", "requeue"), ("done", "done")], ends
    finished = [r for r in ledger(stage) if r["event"] == "attempt_end"]
    assert [r["exit_code"] for r in finished] == [75, 0]
    stop_step = finished[0]["step"]
    assert 2 <= stop_step < STEPS and "SIGUSR2" in finished[0]["reason"]
    assert finished[1]["step_start"] == stop_step and finished[1]["resumed_from"] == f"step-{stop_step:08d}"
    steps = e2e.by_step(stage / "metrics.jsonl")
    assert sorted(steps) == list(range(1, STEPS + 1))
    assert all(len(recs) == 1 for recs in steps.values())  # the stop step was checkpointed: nothing redone
    assert all("rewards/accuracies" in recs[0] for recs in steps.values())
    assert (stage / "reference_logps.safetensors").is_file() and (stage / "final" / "config.json").is_file()
    # Both ranks of the stopped attempt ended by themselves with 75 (none killed), then 0.
    rows = slurm_cluster.sacct(job, fields=("JobID", "JobName", "State", "ExitCode"), duplicates=True)
    assert [r["ExitCode"] for r in rows if r["JobName"] == "saul-ranks"] == ["75:0", "0:0"], rows
