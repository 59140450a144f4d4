"""The global sample order: exact resume from a position, seamless epochs, rank partitions."""
import numpy as np
import pytest

from saul.data.dataset import global_batch_ids, rank_slice, sample_order
from saul.data.sampler import stable_permutation

N, SEED = 37, 1234
PINNED_1234_0 = [0, 8, 5, 7, 2, 6, 1, 3, 4, 9]
PINNED_0_0 = [8, 4, 5, 6, 1, 7, 9, 2, 0, 3]


def _stream(length, num_samples=N, seed=SEED):
    """The reference stream: epochs' permutations laid end to end."""
    epochs = -(-length // num_samples)
    return np.concatenate([sample_order(num_samples, seed, e) for e in range(epochs)])[:length]


def test_sample_order_is_a_fixed_permutation_per_epoch():
    order = sample_order(N, SEED, 0)
    assert sorted(order.tolist()) == list(range(N))
    np.testing.assert_array_equal(order, sample_order(N, SEED, 0))
    assert not np.array_equal(order, sample_order(N, SEED, 1))
    assert not np.array_equal(order, sample_order(N, SEED + 1, 0))
    # (seed, epoch) pairs, not seed + epoch: seed s+1 does not replay seed s one epoch later.
    assert not np.array_equal(sample_order(N, SEED, 1), sample_order(N, SEED + 1, 0))
    with pytest.raises(ValueError):
        order[0] = 1  # the cached array is shared, so it is read-only


def test_permutation_is_pinned():
    # Resume must survive library upgrades: these values may never change.
    assert stable_permutation(10, 1234, 0).tolist() == PINNED_1234_0
    assert stable_permutation(10, 0, 0).tolist() == PINNED_0_0


@pytest.mark.parametrize("global_batch", [1, 8, 16, 37, 50, 100])
def test_batches_follow_the_stream_across_epochs(global_batch):
    stream = _stream(global_batch * 12)
    for step in range(12):
        pos = step * global_batch
        np.testing.assert_array_equal(global_batch_ids(pos, global_batch, N, SEED),
                                      stream[pos:pos + global_batch])


def test_position_p_then_p_plus_g_equals_one_call():
    for p in (0, 5, 30, 36, 37, 70, 1000):
        for g in (1, 7, 16, 40):
            joined = np.concatenate([global_batch_ids(p, g, N, SEED),
                                     global_batch_ids(p + g, g, N, SEED)])
            np.testing.assert_array_equal(joined, global_batch_ids(p, 2 * g, N, SEED))


def test_a_batch_crossing_an_epoch_boundary():
    ids = global_batch_ids(N - 3, 8, N, SEED)
    np.testing.assert_array_equal(ids[:3], sample_order(N, SEED, 0)[-3:])
    np.testing.assert_array_equal(ids[3:], sample_order(N, SEED, 1)[:5])


def test_resume_gives_the_same_ids_as_an_uninterrupted_run():
    g = 12
    straight = [global_batch_ids(step * g, g, N, SEED) for step in range(10)]
    from saul.data import sampler

    sampler._cached_order.cache_clear()  # a fresh process after a requeue
    resumed = [global_batch_ids(step * g, g, N, SEED) for step in range(6, 10)]
    for a, b in zip(straight[6:], resumed):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("world, micro, accum", [(1, 4, 2), (2, 2, 2), (4, 1, 3), (3, 2, 1)])
def test_rank_slices_partition_the_global_batch(world, micro, accum):
    g = world * micro * accum
    ids = global_batch_ids(11, g, N, SEED)
    slices = [rank_slice(ids, r, world, micro, accum) for r in range(world)]
    assert all(s.shape == (accum, micro) for s in slices)
    np.testing.assert_array_equal(np.concatenate([s.reshape(-1) for s in slices]), ids)
    # Rank-major layout: rank r micro-step a = ids[(r*accum + a)*micro : ... + micro].
    r, a = world - 1, accum - 1
    start = (r * accum + a) * micro
    np.testing.assert_array_equal(slices[r][a], ids[start:start + micro])


def test_rank_slice_rejects_mismatched_sizes():
    ids = np.arange(8)
    with pytest.raises(ValueError, match="expected \\(12,\\)"):
        rank_slice(ids, 0, 3, 2, 2)
    with pytest.raises(ValueError, match="rank 2 outside"):
        rank_slice(ids, 2, 2, 2, 2)


def test_bad_arguments():
    with pytest.raises(ValueError):
        global_batch_ids(-1, 4, N, SEED)
    with pytest.raises(ValueError):
        global_batch_ids(0, 0, N, SEED)
    with pytest.raises(ValueError):
        sample_order(0, SEED, 0)
    with pytest.raises(ValueError):
        sample_order(N, -1, 0)

