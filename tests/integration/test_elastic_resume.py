"""Elastic resume (resilience.allow_shrink=true, DDP): a checkpoint of 2 ranks resumes on 1 rank with twice the
gradient accumulation, keeping the global batch and the exact sample order; the losses stay the clean 2-rank
run's up to the reduction order (documented tolerance: relative 1e-4 over these steps, float32 on CPU); what
cannot resume elastically is refused at submit (the rules: tests/unit/test_elastic_resume.py)."""
import pytest

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
