"""What resumes on fewer ranks (saul.train.checkpoint.shrunk_grad_accum, used by check_layout at submit and by the
ranks): DDP with a global batch that divides by micro_batch x ranks, fewer ranks or back to more; never ZeRO-3
shards."""
from saul.train.checkpoint import shrunk_grad_accum


def state(world=4, global_batch=32, parallel="ddp"):
    return {"world_size": world, "global_batch": global_batch, "parallel": parallel}


def test_fewer_ddp_ranks_keep_the_global_batch_with_more_accumulation():
    assert shrunk_grad_accum(state(), micro_batch=4, grad_accum=2, world=2, parallel="ddp") == (4, "")
    assert shrunk_grad_accum(state(), micro_batch=4, grad_accum=2, world=1, parallel="ddp") == (8, "")
    assert shrunk_grad_accum(state(), micro_batch=4, grad_accum=2, world=4, parallel="ddp") == (2, "")  # same layout
    assert shrunk_grad_accum({}, micro_batch=4, grad_accum=2, world=3, parallel="ddp") == (2, "")  # no state to keep


def test_what_cannot_shrink_says_why():
    accum, why = shrunk_grad_accum(state(), micro_batch=4, grad_accum=2, world=3, parallel="ddp")
    assert accum is None and why == "its global batch of 32 sequences is not a multiple of micro_batch x ranks = 4 x 3"
    accum, why = shrunk_grad_accum(state(parallel="zero3"), micro_batch=4, grad_accum=2, world=2, parallel="zero3")
    assert accum is None and why == "ZeRO-3 shards for 4 ranks resume only on 4 ranks"
    assert shrunk_grad_accum(state(), micro_batch=4, grad_accum=2, world=2, parallel="zero3")[0] is None
    accum, why = shrunk_grad_accum(state(), micro_batch=4, grad_accum=1, world=16, parallel="ddp")
    assert accum is None and why == "its global batch of 32 sequences is not a multiple of micro_batch x ranks = 4 x 16"


def test_after_a_shrink_the_configured_size_resumes_again():
    assert shrunk_grad_accum(state(world=1), micro_batch=4, grad_accum=8, world=4, parallel="ddp") == (2, "")
