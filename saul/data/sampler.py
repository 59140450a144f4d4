"""The order in which samples are trained on: one global stream, cut into global batches, dealt
out to ranks. The only state a resume needs is `position` (samples consumed so far) plus the
seed and the dataset fingerprint; the same position always gives the same ids, whatever the
world size of the attempt that wrote the checkpoint.

Stream: epoch e is the permutation `sample_order(num_samples, seed, e)`; epochs are laid end to
end, so stream index k is sample `sample_order(n, seed, k // n)[k % n]`.

Layout of one global batch (G = micro_batch x grad_accum x world_size ids), rank-major:
    ids[r*A*M : (r+1)*A*M]  belong to rank r, as A micro-batches of M ids in order,
so rank r's micro-step a trains on ids[(r*A + a)*M : (r*A + a + 1)*M].

Why this permutation and not `Generator.permutation`: numpy does not promise that Generator
methods give the same stream across versions, but it does promise it for the raw output of a
bit generator and for SeedSequence. Sorting raw 64-bit draws (stable sort, ties by index) is a
uniformly random permutation defined by those guaranteed streams alone, so a campaign that
upgrades numpy mid-way still resumes on the same samples.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

_STREAM_TAG = 0x5A01  # separates these streams from any other use of the same seed


def stable_permutation(n: int, *key: int) -> np.ndarray:
    """A permutation of range(n) (int64) determined by the non-negative integers `key`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if any(k < 0 for k in key):
        raise ValueError(f"seed/epoch must be non-negative integers, got {key}")
    bits = np.random.PCG64(np.random.SeedSequence([_STREAM_TAG, *key])).random_raw(n)
    return np.argsort(bits, kind="stable").astype(np.int64, copy=False)


@lru_cache(maxsize=4)
def _cached_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    order = stable_permutation(num_samples, seed, epoch)
    order.flags.writeable = False  # shared through the cache: nobody may edit it in place
    return order


def sample_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of sample ids that epoch `epoch` visits (read-only, cached).

    Seeded by the pair (seed, epoch) rather than seed + epoch, so run seeds s and s+1 do not see
    the same orders one epoch apart.
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    return _cached_order(int(num_samples), int(seed), int(epoch))


def global_batch_ids(position: int, global_batch: int, num_samples: int, seed: int) -> np.ndarray:
    """Sample ids of the global batch that starts after `position` samples were consumed.

    Crosses epoch boundaries seamlessly: a batch that starts near the end of epoch e finishes
    with the first ids of epoch e+1. Batches of positions p and p+G concatenated equal the
    batch of 2G at p.
    """
    if position < 0:
        raise ValueError(f"position must be >= 0, got {position}")
    if global_batch <= 0:
        raise ValueError(f"global_batch must be > 0, got {global_batch}")
    out = np.empty(global_batch, dtype=np.int64)
    filled = 0
    while filled < global_batch:
        epoch, offset = divmod(position + filled, num_samples)
        take = min(global_batch - filled, num_samples - offset)
        out[filled:filled + take] = sample_order(num_samples, seed, epoch)[offset:offset + take]
        filled += take
    return out


def rank_slice(ids: np.ndarray, rank: int, world_size: int, micro_batch: int,
               grad_accum: int) -> np.ndarray:
    """Rank `rank`'s share of a global batch: shape [grad_accum, micro_batch] (rank-major layout,
    see the module docstring). Over all ranks the slices partition `ids`."""
    ids = np.asarray(ids)
    expected = micro_batch * grad_accum * world_size
    if ids.ndim != 1 or ids.shape[0] != expected:
        raise ValueError(f"global batch has shape {ids.shape}, expected ({expected},) = "
                         f"micro_batch {micro_batch} x grad_accum {grad_accum} x world_size "
                         f"{world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    per_rank = micro_batch * grad_accum
    return ids[rank * per_rank:(rank + 1) * per_rank].reshape(grad_accum, micro_batch)


def epoch_of(position: int, num_samples: int) -> int:
    """The epoch the next sample after `position` belongs to (for logs and metrics)."""
    return position // num_samples
