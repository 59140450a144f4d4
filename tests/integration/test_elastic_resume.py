"""Elastic resume (resilience.allow_shrink=true, DDP and ZeRO-3): a checkpoint of 2 ranks resumes on 1 rank with
twice the gradient accumulation (and back on 2), keeping the global batch and the exact sample order; the losses
stay the clean 2-rank run's up to the reduction order (documented tolerance: relative 1e-4 over these steps,
float32 on CPU; ZeRO-3 measured ~2e-8); ZeRO-3's optimizer state carries over through DeepSpeed's universal
checkpoint; what cannot resume elastically is refused at submit (the rules: tests/unit/test_elastic_resume.py)."""
import json
import subprocess
import sys

import pytest
import torch

from tests.integration import e2e

STEPS, SHRINK_AT = 8, 4
COMMON = ["stage=cpt", "model=tiny-mixtral", "site=local", f"train.max_steps={STEPS}", "checkpoint.every_steps=4",
          "train.log_every=1", "train.log_sample_ids=true", "train.threads_per_rank=1", "optim.lr=1e-3",
          "energy.enabled=false"]
TOLERANCE = 1e-4  # relative: 2 ranks x 2 micro-batches vs 1 rank x 4 sum the same gradients in another order


def run(runs, data, name, *extra):
    return e2e.submit(*COMMON, f"runs_root={runs}", f"run={name}", f"data.path={data}", *extra)


def test_a_ddp_checkpoint_of_2_ranks_resumes_on_1_with_the_same_batches_and_losses(packed_data, tmp_path):
    clean = run(tmp_path, packed_data, "clean", "nproc=2")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    first = run(tmp_path, packed_data, "shrink", "nproc=2", f"train.stop_after_steps={SHRINK_AT}")
    assert first.returncode != 2, first.stdout + first.stderr
    stage = tmp_path / "shrink" / "cpt"
    assert max(e2e.by_step(stage / "metrics.jsonl")) == SHRINK_AT

    refused = run(tmp_path, packed_data, "shrink", "nproc=1")  # without allow_shrink: the global batch would change
    assert refused.returncode == 2 and "resilience.allow_shrink=true" in refused.stderr

    resumed = run(tmp_path, packed_data, "shrink", "nproc=1", "resilience.allow_shrink=true")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "elastic resume: step-00000004 was made on 2 ranks; 1 ranks keep its global batch of 16 with grad_accum 4" \
        in resumed.stdout
    reference, shrunk = e2e.by_step(tmp_path / "clean" / "cpt" / "metrics.jsonl"), e2e.by_step(stage / "metrics.jsonl")
    assert sorted(shrunk) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        got, want = shrunk[step][-1], reference[step][0]
        assert got["sample_ids"] == want["sample_ids"], f"step {step}"
        if step <= SHRINK_AT:
            assert got["loss"] == want["loss"]
        else:
            assert got["loss"] == pytest.approx(want["loss"], rel=TOLERANCE), f"step {step}"
    starts = [r for r in e2e.records(stage / "ledger.jsonl") if r["event"] == "attempt_start"]
    assert [r["world_size"] for r in starts] == [2, 1]


def test_a_layout_that_cannot_keep_the_global_batch_is_refused_at_submit_even_with_allow_shrink(packed_data, tmp_path):
    ddp = run(tmp_path, packed_data, "d", "nproc=2", "train.max_steps=2", "checkpoint.every_steps=2")
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    odd = run(tmp_path, packed_data, "d", "nproc=3", "train.max_steps=4", "resilience.allow_shrink=true")
    assert odd.returncode == 2
    [line] = odd.stderr.strip().splitlines()
    assert line.startswith("error: run 'd' stage cpt: checkpoint step-00000002 cannot resume elastically: its global "
                           "batch of 16 sequences is not a multiple of micro_batch x ranks = 4 x 3")


def test_a_zero3_checkpoint_of_2_ranks_resumes_on_1_and_grows_back_to_2_with_the_same_batches_and_losses(
        packed_data, tmp_path):
    """ZeRO-3 shards are resliced through DeepSpeed's universal checkpoint (saul.train.universal_checkpoint):
    2 ranks -> step 2 -> 1 rank -> step 4 -> 2 ranks again -> step 6, against the clean 2-rank run."""
    steps, common = 6, ["parallel=zero3", "train.max_steps=6", "checkpoint.every_steps=2", "checkpoint.keep_last=3"]
    clean = run(tmp_path, packed_data, "clean", "nproc=2", *common)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    stage = tmp_path / "z" / "cpt"
    first = run(tmp_path, packed_data, "z", "nproc=2", *common, "train.stop_after_steps=2")
    assert first.returncode != 2, first.stdout + first.stderr
    leftover = stage / "checkpoints" / "step-00000002" / ".tmp-universal-from-2-99999"  # a conversion that crashed
    (leftover / "universal").mkdir(parents=True)
    shrunk = run(tmp_path, packed_data, "z", "nproc=1", *common, "resilience.allow_shrink=true",
                 "train.stop_after_steps=2")
    assert shrunk.returncode != 2, shrunk.stdout + shrunk.stderr
    assert "elastic resume: step-00000002 was made on 2 ranks; 1 ranks keep its global batch of 16 with grad_accum 4" \
        in shrunk.stdout
    grown = run(tmp_path, packed_data, "z", "nproc=2", *common, "resilience.allow_shrink=true")
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert "resumed from step-00000004" in grown.stdout  # the configured grad_accum keeps the batch on 2 ranks

    reference, elastic = e2e.by_step(tmp_path / "clean" / "cpt" / "metrics.jsonl"), e2e.by_step(stage / "metrics.jsonl")
    assert sorted(elastic) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        got, want = elastic[step][-1], reference[step][0]
        assert got["sample_ids"] == want["sample_ids"], f"step {step}"
        if step <= 2:
            assert got["loss"] == want["loss"]
        else:
            assert got["loss"] == pytest.approx(want["loss"], rel=TOLERANCE), f"step {step}"
    starts = [r for r in e2e.records(stage / "ledger.jsonl") if r["event"] == "attempt_start"]
    assert [r["world_size"] for r in starts] == [2, 1, 2]
    # each conversion sits next to the shards it came from, complete (no temporary directory left)
    checkpoints = stage / "checkpoints"
    assert (checkpoints / "step-00000002" / "universal-from-2" / "universal").is_dir()
    assert (checkpoints / "step-00000004" / "universal-from-1" / "universal").is_dir()
    assert not list(checkpoints.rglob(".tmp-universal-*"))

    # Optimizer state carried over, not re-initialized: a fresh 1-rank engine loads step 2's 2-rank shards
    # (reusing their conversion) and holds the same Adam moments, step, fp32 weights and LR position.
    step_dir, out = checkpoints / "step-00000002", tmp_path / "state.pt"
    code = (f"from tests.integration.test_elastic_resume import loaded_optimizer_state as f; "
            f"f({json.dumps(str(stage))}, {json.dumps(str(step_dir))}, {json.dumps(str(out))})")
    loaded = subprocess.run([sys.executable, "-c", code], env=e2e.env(), capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "universal checkpoint of" not in loaded.stdout  # made once, by the shrunk run
    got = torch.load(out, weights_only=False)
    assert got["before"]["step"] is None and "exp_avg" not in got["before"]  # a fresh optimizer has no moments
    shards = [torch.load(step_dir / "zero3" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt", weights_only=False)
              ["optimizer_state_dict"] for r in range(2)]
    saved = {"fp32": torch.cat([s["fp32_flat_groups"][0] for s in shards]),
             **{k: torch.cat([s["optimizer_state_dict"]["state"][0][k] for s in shards]) for k in ("exp_avg", "exp_avg_sq")}}
    after = got["after"]
    assert after["step"] == 2 == float(shards[0]["optimizer_state_dict"]["state"][0]["step"])
    assert got["lr_steps"] == 2
    for key in ("fp32", "exp_avg", "exp_avg_sq"):  # resliced: the same values (zeros are the shards' padding)
        assert torch.equal(nonzero_values(after[key]), nonzero_values(saved[key])), key
    assert not torch.equal(nonzero_values(got["before"]["fp32"]), nonzero_values(saved["fp32"]))


def nonzero_values(t):
    return torch.sort(t[t != 0]).values


def loaded_optimizer_state(stage: str, step_dir: str, out: str) -> None:
    """In a fresh 1-rank process: a ZeRO-3 engine of the run's config loads `step_dir` (shards of more ranks)
    through Zero3Engine.load_files; writes its optimizer state, and the one it had before the load."""
    import os
    import socket
    from pathlib import Path

    import torch
    from omegaconf import OmegaConf

    from saul.train.engine import Zero3Engine

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cfg = OmegaConf.load(Path(stage) / "config.yaml")
    cfg.train.grad_accum = cfg.train.grad_accum * 2  # what apply_elastic_resume sets for 2 ranks -> 1
    engine = Zero3Engine(cfg, torch.device("cpu"))

    def state():
        flat = engine.optimizer.fp32_partitioned_groups_flat[0]
        adam = engine.optimizer.optimizer.state.get(flat, {})
        return {"fp32": flat.detach().clone(), "step": float(adam["step"]) if "step" in adam else None,
                **{k: adam[k].clone() for k in ("exp_avg", "exp_avg_sq") if k in adam}}

    before = state()
    engine.load_files(Path(step_dir), 0)
    torch.save({"before": before, "after": state(), "lr_steps": engine.scheduler.last_epoch}, out)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_zero3_run_on_2_nodes_shrinks_to_1_when_a_node_is_set_down_without_a_spare(slurm_cluster, packed_data,
                                                                                      tmp_path):
    """The real path on the local Slurm cluster: parallel=zero3, nodes=2, no spare, resilience.allow_shrink=true;
    rank 1's node set DOWN mid-run leaves the --no-kill job, and the ranks relaunch on the healthy node, where
    1 rank converts the 2 ranks' shards and goes on with twice the accumulation: the clean run's samples, its
    losses within TOLERANCE, one job. (Slow: ~2 min; the fast zero3 test above covers the same resume path.)"""
    from tests.integration.test_faults_slurm import _Alive, ledger, rank_process, submit, wait_until_done

    steps = ["parallel=zero3", "train.max_steps=16", "checkpoint.every_steps=4", "checkpoint.keep_last=5"]
    clean = run(tmp_path, packed_data, "clean", "nproc=2", *steps)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    runs = tmp_path / "slurm"
    job = submit(slurm_cluster, *COMMON, f"runs_root={runs}", "run=z", f"data.path={packed_data}", *steps,
                 "resilience.allow_shrink=true")
    stage = runs / "z" / "cpt"
    e2e.wait_for_step(stage / "metrics.jsonl", 6, _Alive())
    first = (stage / "step_nodes").read_text().split()
    victim = rank_process(stage, 1).environ()["SLURMD_NODENAME"]
    slurm_cluster.set_node_state(victim, "down", reason="fault injection")
    try:
        ends = wait_until_done(stage, timeout=400)
    finally:
        slurm_cluster.set_node_state(victim, "resume")
    assert [e["class"] for e in ends] == ["done"]  # no requeue
    (shrink,) = [r for r in ledger(stage) if r["event"] == "shrink"]
    assert shrink["failed"] == [victim] and shrink["nodes_after"] == [n for n in first if n != victim]
    assert [r["world_size"] for r in ledger(stage) if r["event"] == "attempt_start"] == [2, 1]
    (resumed_from,) = [r["resumed_from"] for r in ledger(stage) if r["event"] == "attempt_end" and r.get("resumed_from")]
    assert (stage / "checkpoints" / resumed_from / "universal-from-2" / "universal").is_dir()
    reference, elastic = e2e.by_step(tmp_path / "clean" / "cpt" / "metrics.jsonl"), e2e.by_step(stage / "metrics.jsonl")
    assert sorted(elastic) == list(range(1, 17))
    for step, recs in elastic.items():
        want = reference[step][0]
        assert all(r["sample_ids"] == want["sample_ids"] for r in recs), f"step {step}"
        assert recs[-1]["loss"] == pytest.approx(want["loss"], rel=TOLERANCE), f"step {step}"
    # sacct: one job, never requeued (the lost node is booked as a resize of the one run); the allocation row
    # may still say RUNNING while the batch script tears down after the ledger's job_end
    rows = slurm_cluster.wait_for_sacct(job, lambda rs: allocation_states(rs)[-1:] not in ([], ["RUNNING"]),
                                        fields=("JobID", "State"), duplicates=True)
    assert allocation_states(rows) == ["RESIZING", "COMPLETED"]


def allocation_states(rows):
    return [r["State"].split()[0] for r in rows if "." not in r["JobID"]]
