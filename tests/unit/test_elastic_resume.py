"""What resumes on another world size (saul.train.checkpoint.shrunk_grad_accum, used by check_layout at submit and
by the ranks): DDP and ZeRO-3 alike, where the global batch divides by micro_batch x ranks, fewer ranks or back to
more; which node counts a shrink may use (jobs.slurm_launcher.step_node_counts: ZeRO-3 shards must still fit); and
the ZeRO-3 conversion's failure paths (saul.train.universal_checkpoint). The real conversions and resumes:
tests/integration/test_elastic_resume.py."""
import threading
import time

import pytest

from jobs import slurm_launcher
from saul.config.compose import compose
from saul.train import checkpoint as ckpt
from saul.train import universal_checkpoint
from saul.train.checkpoint import CheckpointMismatch, check_resumable, shrunk_grad_accum


def state(world=4, global_batch=32, parallel="ddp"):
    return {"world_size": world, "global_batch": global_batch, "parallel": parallel}


def test_fewer_ranks_keep_the_global_batch_with_more_accumulation():
    for parallel in ("ddp", "zero3"):
        assert shrunk_grad_accum(state(parallel=parallel), micro_batch=4, grad_accum=2, world=2) == (4, "")
        assert shrunk_grad_accum(state(parallel=parallel), micro_batch=4, grad_accum=2, world=1) == (8, "")
    assert shrunk_grad_accum(state(), micro_batch=4, grad_accum=2, world=4) == (2, "")  # same layout
    assert shrunk_grad_accum({}, micro_batch=4, grad_accum=2, world=3) == (2, "")  # no state to keep


def test_a_shrink_before_the_first_checkpoint_keeps_the_configured_global_batch(tmp_path):
    """A node lost before the first (asynchronous) save committed: 1 of 2 configured ranks starts over with twice
    the accumulation, so the sample order is the configured run's; without allow_shrink nothing changes."""
    said = []
    cfg = compose(["stage=cpt", "model=tiny-mixtral", "site=local", "run=r", "nodes=2", "train.grad_accum=2",
                   "resilience.allow_shrink=true"], env={}).cfg
    ckpt.apply_elastic_resume(cfg, tmp_path / "checkpoints", world=1, say=said.append)
    assert cfg.train.grad_accum == 4 and "no checkpoint yet, the configured layout has 2 ranks; 1 ranks keep its global batch" in said[0]
    cfg = compose(["stage=cpt", "model=tiny-mixtral", "site=local", "run=r", "nodes=2", "train.grad_accum=2"],
                  env={}).cfg
    ckpt.apply_elastic_resume(cfg, tmp_path / "checkpoints", world=1, say=said.append)
    assert cfg.train.grad_accum == 2 and len(said) == 1
    cfg = compose(["stage=cpt", "model=tiny-mixtral", "site=local", "run=r", "nodes=2", "train.grad_accum=2",
                   "resilience.allow_shrink=true"], env={}).cfg
    ckpt.apply_elastic_resume(cfg, tmp_path / "checkpoints", world=2, say=said.append)  # the configured size
    assert cfg.train.grad_accum == 2 and len(said) == 1


def test_what_cannot_keep_the_global_batch_says_why():
    accum, why = shrunk_grad_accum(state(), micro_batch=4, grad_accum=2, world=3)
    assert accum is None and why == "its global batch of 32 sequences is not a multiple of micro_batch x ranks = 4 x 3"
    accum, why = shrunk_grad_accum(state(parallel="zero3"), micro_batch=4, grad_accum=1, world=16)
    assert accum is None and why == "its global batch of 32 sequences is not a multiple of micro_batch x ranks = 4 x 16"


def test_after_a_shrink_the_configured_size_resumes_again():
    assert shrunk_grad_accum(state(world=1), micro_batch=4, grad_accum=8, world=4) == (2, "")
    assert shrunk_grad_accum(state(world=1, parallel="zero3"), micro_batch=4, grad_accum=8, world=4) == (2, "")


def test_on_the_ranks_zero3_shards_resume_on_another_world_size_but_not_ddp_files():
    expected = {"global_batch": 32, "parallel": "zero3", "world_size": 2}
    check_resumable(state(parallel="zero3"), expected)  # 4 ranks' shards on 2 ranks, same global batch
    with pytest.raises(CheckpointMismatch, match="made with parallel=ddp, this job has parallel=zero3"):
        check_resumable(state(parallel="ddp"), expected)
    with pytest.raises(CheckpointMismatch, match="global batch"):
        check_resumable(state(parallel="zero3", global_batch=16), expected)


def node_counts(*extra):
    cfg = compose(["stage=cpt", "run=r", "runs_root=/tmp/saul-elastic-test", "resilience.allow_shrink=true",
                   "parallel=zero3", *extra], env={}).cfg
    return slurm_launcher.step_node_counts(cfg)


def test_a_zero3_shrink_stops_at_the_node_count_whose_shards_still_fit():
    # mixtral-8x7b on 64 GB GCDs (8 per node): ~23 GB of state per rank on 4 nodes, ~47 on 2, ~93 on 1
    assert node_counts("model=mixtral-8x7b", "site=adastra", "nodes=4") == [4, 2]
    assert node_counts("model=tiny-mixtral", "site=local-slurm", "nodes=4") == [4, 2, 1]
    # the configured count is always first: the submit refused it already if it does not fit
    assert node_counts("model=mixtral-8x7b", "site=local-slurm", "nodes=4") == [4]


def shards(step_dir, ranks):
    (step_dir / "zero3").mkdir(parents=True)
    for rank in ranks:
        (step_dir / "zero3" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"not a checkpoint")
        (step_dir / "zero3" / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")


def test_the_saved_world_size_is_read_from_a_complete_set_of_shards(tmp_path):
    shards(tmp_path / "a", [0, 1, 2])
    assert universal_checkpoint.saved_world_size(tmp_path / "a" / "zero3") == 3
    shards(tmp_path / "b", [0, 2])  # rank 1's shard is missing
    with pytest.raises(FileNotFoundError, match=r"no complete set of ZeRO-3 optimizer shards \(ranks found: \[0, 2\]\)"):
        universal_checkpoint.saved_world_size(tmp_path / "b" / "zero3")
    with pytest.raises(FileNotFoundError, match="ranks found: \\[\\]"):
        universal_checkpoint.saved_world_size(tmp_path / "missing")


def test_a_failed_conversion_fails_every_rank_with_the_reason_and_leaves_nothing_half_written(tmp_path):
    """Rank 0 and a waiting rank, as two threads sharing the token broadcast: rank 0's conversion fails (these
    shards are not DeepSpeed's), and the waiting rank stops polling with rank 0's reason."""
    step_dir = tmp_path / ckpt.step_dir_name(4)
    shards(step_dir, [0, 1])
    (step_dir / ".universal-failed-oldtoken").write_text("an earlier attempt's failure")
    before = sorted(p.relative_to(step_dir) for p in step_dir.rglob("*") if "failed" not in p.name)
    token = {}
    errors = {}

    def broadcast(obj):  # rank 0's object to every rank, as saul.train.distributed.broadcast_object
        if obj is not None:
            token["value"] = obj
        while "value" not in token:
            time.sleep(0.01)
        return token["value"]

    def rank(r):
        try:
            universal_checkpoint.ensure(step_dir, "zero3", r, broadcast, poll_s=0.05)
        except RuntimeError as exc:
            errors[r] = str(exc)

    waiting = threading.Thread(target=rank, args=(1,))
    waiting.start()  # polls before rank 0 has even started
    rank(0)
    waiting.join(timeout=60)
    assert not waiting.is_alive()
    assert errors[0] == errors[1] and errors[0].startswith(
        "converting step-00000004/zero3 to a universal checkpoint failed: ")
    assert "earlier attempt" not in errors[1]  # another call's marker is never read (and rank 0 removed it)
    assert not (step_dir / ".universal-failed-oldtoken").exists()
    # no temporary directory, no conversion: only the shards and this failure's marker
    assert sorted(p.relative_to(step_dir) for p in step_dir.rglob("*") if "failed" not in p.name) == before
    assert [p.name for p in step_dir.glob(".universal-failed-*")] == [f".universal-failed-{token['value']}"]


def test_a_waiting_rank_takes_the_conversion_rank_0_finished(tmp_path):
    step_dir = tmp_path / ckpt.step_dir_name(4)
    shards(step_dir, [0, 1])
    done = universal_checkpoint.conversion_dir(step_dir, 2) / universal_checkpoint.DONE
    timer = threading.Timer(0.2, lambda: done.mkdir(parents=True))  # rank 0's rename, a moment later
    timer.start()
    assert universal_checkpoint.ensure(step_dir, "zero3", 1, lambda obj: "t", poll_s=0.05) == done.parent
    timer.join()
