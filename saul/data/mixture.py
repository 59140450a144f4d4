"""Step 6: sample the sources to their configured token shares, deterministically from the seed.

Sources with a `weight` (replay 2 %, math 5 %, instruction data ...) get that share of the mix;
the sources without one (the legal corpus) share what is left and are kept whole: their tokens
fix the size of the mix, T = unweighted tokens / (1 - sum of weights). A weighted source with
more than weight x T tokens is down-sampled (a seeded random subset of its documents, the rest
removed with reason `mixture`); one with fewer is up-sampled (every document repeated
floor(factor) times, plus a seeded subset once more). Shares are met to within one document.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from saul.data.dataset import DatasetError

_MIX_STREAM = 7  # keeps the mixture's draws apart from the other seeded streams


@dataclass
class SourceShare:
    name: str
    weight: Optional[float]  # None = takes the remaining share
    available_tokens: int
    requested_share: float = 0.0
    target_tokens: int = 0
    actual_tokens: int = 0
    actual_share: float = 0.0
    factor: float = 1.0  # actual / available: < 1 down-sampled, > 1 up-sampled


def plan_mixture(names: Sequence[str], weights: Sequence[Optional[float]],
                 doc_source: Sequence[int], doc_tokens: Sequence[int], seed: int
                 ) -> tuple[List[int], List[SourceShare]]:
    """Copies of each document (0 = dropped by the mixture) and the per-source report."""
    tokens = np.asarray(doc_tokens, dtype=np.int64)
    src = np.asarray(doc_source, dtype=np.int64)
    shares = [SourceShare(n, w, int(tokens[src == i].sum())) for i, (n, w) in enumerate(zip(names, weights))]
    fixed = sum(w for w in weights if w is not None)
    free_tokens = sum(s.available_tokens for s in shares if s.weight is None)
    if free_tokens == 0:
        raise DatasetError("no legal (unweighted) source has documents left after filtering: "
                           "the mixture has nothing to take shares of")
    total = free_tokens / (1.0 - fixed)
    copies = np.ones(len(tokens), dtype=np.int64)
    rng = np.random.default_rng([seed, _MIX_STREAM])
    for i, share in enumerate(shares):
        members = np.flatnonzero(src == i)
        if share.weight is None:
            share.requested_share = share.available_tokens / total
            share.target_tokens = share.available_tokens
            continue
        share.requested_share = share.weight
        share.target_tokens = int(round(share.weight * total))
        if share.available_tokens == 0:
            if share.target_tokens:
                raise DatasetError(f"source {share.name}: weight {share.weight} but no documents left "
                                   f"after filtering")
            continue
        whole, rest = divmod(share.target_tokens, share.available_tokens)
        copies[members] = whole
        # The remainder: a seeded random order of the source's documents, taken while they fit.
        order = members[rng.permutation(len(members))]
        taken = 0
        for d in order:
            if taken + tokens[d] / 2 > rest:  # the next document would overshoot more than undershoot
                break
            copies[d] += 1
            taken += int(tokens[d])
    total_actual = int((tokens * copies).sum())
    for i, share in enumerate(shares):
        members = src == i
        share.actual_tokens = int((tokens[members] * copies[members]).sum())
        share.actual_share = share.actual_tokens / total_actual if total_actual else 0.0
        share.factor = share.actual_tokens / share.available_tokens if share.available_tokens else 0.0
    return copies.tolist(), shares


def shares_table(shares: Sequence[SourceShare]) -> List[Dict]:
    return [{"source": s.name, "requested_share": round(s.requested_share, 6),
             "actual_share": round(s.actual_share, 6), "available_tokens": s.available_tokens,
             "tokens": s.actual_tokens, "sampling_factor": round(s.factor, 6)} for s in shares]
