"""What a resubmit of a stage may change, checked where it is cheap: at submit, before the queue.

- stage=prepare then stage=cpt without run= meet in one run directory (the default run name is the model's);
- raising train.max_steps extends training at the schedule's final LR: the LR never jumps at the resume;
- a world size (nodes x nproc) the newest checkpoint cannot resume with is refused at submit (exit 2,
  nothing written) with the way out, for DDP and ZeRO-3 (the global batch, kept with allow_shrink where it divides).
"""
import math

import pytest

from saul.resilience import ledger
from saul.train import checkpoint as ckpt
from tests.integration import e2e

LOCAL = ["model=tiny-mixtral", "site=local"]


def snapshot(root):
    """Every file under root with its content: 'nothing written' is checked against this."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_then_cpt_without_a_run_name_meet_on_the_same_data(tmp_path):
    runs = tmp_path / "runs"
    prepare = e2e.submit("stage=prepare", *LOCAL, f"runs_root={runs}")
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    assert (runs / "tiny-mixtral" / "data" / "manifest.json").is_file()
    plan = e2e.submit("stage=cpt", *LOCAL, f"runs_root={runs}", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "run: tiny-mixtral" in plan.stdout and f"run dir:     {runs}/tiny-mixtral/cpt" in plan.stdout
    assert "no packed dataset" not in plan.stderr  # the dataset prepare wrote is the one cpt finds


def test_raising_max_steps_keeps_the_lr_schedule_and_a_layout_change_is_refused(packed_data, tmp_path):
    """A real run of 3 steps, then the same command with train.max_steps=6: the cosine schedule keeps its
    horizon of 3 steps (frozen at the first submit), so steps 4-6 run at the floor and the LR never rises."""
    args = ["stage=cpt", *LOCAL, f"runs_root={tmp_path}", "run=lr", f"data.path={packed_data}", "train.log_every=1",
            "checkpoint.every_steps=3",
            "optim.lr=1e-3", "optim.warmup_steps=0", "optim.min_lr_ratio=0.1"]
    first = e2e.submit(*args, "train.max_steps=3")
    assert first.returncode == 0, first.stdout + first.stderr
    stage = tmp_path / "lr" / "cpt"
    assert "schedule_steps: 3" in (stage / "config.yaml").read_text()

    # A world size the DDP checkpoint cannot continue with (global batch 8 -> 16) is refused before anything runs.
    before = snapshot(stage)
    wider = e2e.submit(*args, "train.max_steps=6", "nproc=2")
    assert wider.returncode == 2
    [line] = wider.stderr.strip().splitlines()
    assert line.startswith("error: ") and "checkpoint step-00000003 was made with a global batch of 8" in line
    assert "submit with the original layout (nodes=1 nproc=1)" in line
    # the stage finished: its final/ model is a way on, under a new name
    assert f"run=<new name> model.path={stage}/final data.path={packed_data})" in line
    assert snapshot(stage) == before

    longer = e2e.submit(*args, "train.max_steps=6")
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert "resumed from step-00000003" in longer.stdout and "train.max_steps: 3 -> 6" in longer.stdout
    assert "schedule_steps: 3" in (stage / "config.yaml").read_text()

    lrs = {r["step"]: r["lr"] for r in e2e.step_records(stage / "metrics.jsonl")}
    assert sorted(lrs) == [1, 2, 3, 4, 5, 6]
    # Cosine over 3 steps from 1e-3 to 1e-4: the LR of step k is set by the scheduler after k-1 steps.
    cosine = [1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, k / 3))) for k in range(6)]
    assert [lrs[s] for s in range(1, 7)] == pytest.approx(cosine, rel=1e-9)
    assert all(lrs[s + 1] <= lrs[s] for s in range(1, 6))  # never a jump up at the resume


def zero3_checkpoint(stage, world_size, step=4):
    """A ZeRO-3 checkpoint's manifest as the step loop commits it (rank 0 after every rank wrote its
    shards), and the attempt that made it: all that submit reads. No weights: submit never opens them."""
    tmp = ckpt.begin_save(stage / "checkpoints", step)
    (tmp / "zero3").mkdir()
    files = {}
    for rank in range(world_size):
        shard = tmp / "zero3" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        shard.write_bytes(b"shard %d" % rank)
        files[str(shard.relative_to(tmp))] = {"size": shard.stat().st_size, "sha256": ckpt.sha256_file(shard)}
    state = {"dataset_fingerprint": "f" * 64, "global_batch": 8, "seq_len": 64, "parallel": "zero3",
             "world_size": world_size, "step": step, "samples_consumed": 8 * step, "tokens_consumed": 512 * step,
             "attempt": 1}
    ckpt.commit_save(stage / "checkpoints", tmp, step, files, state, keep_last=2)
    ledger.append(stage / "ledger.jsonl", {"event": "attempt_start", "attempt": 1, "world_size": world_size,
                                           "nodes": 1, "job_id": "local"})


def test_a_zero3_world_size_change_is_refused_at_submit_unless_it_keeps_the_global_batch(packed_data, tmp_path):
    runs = tmp_path / "runs"
    stage = runs / "z" / "cpt"
    zero3_checkpoint(stage, world_size=2)
    args = ["stage=cpt", *LOCAL, f"runs_root={runs}", "run=z", f"data.path={packed_data}", "parallel=zero3",
            "train.grad_accum=1", "train.micro_batch=4"]
    before = snapshot(runs)

    refused = e2e.submit(*args, "nproc=4")  # global batch 8 -> 16
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert line == (
        f"error: run 'z' stage cpt: checkpoint step-00000004 was made with a global batch of 8 sequences and this "
        f"submit asks nodes=1 x nproc=4 = 4 ranks, a global batch of 4 x 1 x 4 = 16: the data order would change; "
        f"submit with the original layout (nodes=1 nproc=2), or start over under a new name (run=<new name>); "
        f"or keep the global batch on this layout with resilience.allow_shrink=true"
    )
    elastic = e2e.submit(*args, "nproc=4", "resilience.allow_shrink=true")  # 8 sequences do not split over 4 x 4
    assert elastic.returncode == 2
    [line] = elastic.stderr.strip().splitlines()
    assert line.startswith("error: run 'z' stage cpt: checkpoint step-00000004 cannot resume elastically: its global "
                           "batch of 8 sequences is not a multiple of micro_batch x ranks = 4 x 4; ")
    assert snapshot(runs) == before

    planned = e2e.submit(*args, "nproc=4", "--dry-run")  # a dry run says so, and runs
    assert planned.returncode == 0
    assert "warning: when run for real: run 'z' stage cpt: checkpoint step-00000004 was made with" in planned.stderr
    for layout in (["nproc=2"], ["nproc=1", "resilience.allow_shrink=true"]):  # the original, and one that keeps 8
        same = e2e.submit(*args, *layout, "--dry-run")
        assert same.returncode == 0 and "when run for real" not in same.stderr, same.stderr
    assert snapshot(runs) == before
