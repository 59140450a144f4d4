"""Step 4: exact and near-duplicate removal, sharded like datatrove's four MinHash stages.

    signatures  per input shard, on every rank: a 256-permutation MinHash of each document's
                word 5-grams (text-dedup's defaults: lower-cased, split on non-alphanumerics,
                sha1 32-bit hashing), saved next to the shard's documents
    buckets     after all shards: 42 bands x 6 rows; documents whose band values agree in any
                band share a bucket
    clusters    union-find over buckets (transitive, like text-dedup's clustering)
    filter      keep the first document of each cluster (sources in order, files sorted,
                records in file order), remove the rest as `near_duplicate`
Exact duplicates (SHA-256 of the lower-cased, whitespace-collapsed text) go first, the same way.

Why datasketch and not datatrove: datasketch's `MinHash.update_batch` is one small, vectorized
dependency for the signatures, and its parameter optimizer gives the same 42 x 6 split for
threshold 0.5; the bucketing and filtering over shards (below) is a few lines of numpy that run
inside our own ranks, ledger and resume markers, where datatrove would bring its own executor,
logging tree and completion files. Candidates are not re-verified by exact Jaccard (text-dedup
does not either); `candidate_probability` is the S-curve that decides recall and false
positives, and tests/benchmarks measure both on planted pairs.

With b bands of r rows, two documents of Jaccard similarity J become candidates with
probability 1 - (1 - J^r)^b; for 42 x 6 that is 0.02 at J=0.3, 0.49 at 0.5 (the ~(1/b)^(1/r)
= 0.54 midpoint), 0.93 at 0.6, 1.00 from 0.7.
"""
from __future__ import annotations

import hashlib
import re
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

NUM_PERM = 256
_NON_ALNUM = re.compile(r"[^A-Za-z0-9_]+")
_MINHASH_SEED = 1


def exact_key(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def shingles(text: str, n: int) -> List[bytes]:
    """text-dedup's shingles: word n-grams of the lower-cased text split on non-alphanumerics
    (a text of fewer than n words is one shingle)."""
    tokens = [t for t in _NON_ALNUM.split(text.lower()) if t]
    if len(tokens) < n:
        return [" ".join(tokens).encode("utf-8")] if tokens else []
    return list({" ".join(tokens[i:i + n]).encode("utf-8") for i in range(len(tokens) - n + 1)})


class Signer:
    """MinHash signatures with one set of permutations (building them per document is slow)."""

    def __init__(self, ngram: int = 5, num_perm: int = NUM_PERM):
        from datasketch import MinHash

        self._minhash = MinHash
        self.ngram, self.num_perm = ngram, num_perm
        self._template = MinHash(num_perm=num_perm, seed=_MINHASH_SEED)

    def signature(self, text: str) -> np.ndarray:
        m = self._minhash(num_perm=self.num_perm, seed=_MINHASH_SEED,
                          permutations=self._template.permutations, scheme=self._template.scheme)
        m.update_batch(shingles(text, self.ngram))
        # Values are < 2^32 (datasketch's max hash): uint32 halves the shard files.
        return m.hashvalues.astype(np.uint32)

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        rows = [self.signature(t) for t in texts]
        return np.stack(rows) if rows else np.empty((0, self.num_perm), dtype=np.uint32)


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    return 1.0 - (1.0 - jaccard ** rows) ** bands


def check_bands(bands: int, rows: int, num_perm: int = NUM_PERM) -> None:
    if bands <= 0 or rows <= 0 or bands * rows > num_perm:
        raise ValueError(f"minhash bands x rows = {bands} x {rows} must be positive and use at most "
                         f"{num_perm} permutations")


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller index (earlier document) stays the root: it is the one kept
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_of(signatures: np.ndarray, bands: int, rows: int) -> List[int]:
    """For documents in keep-priority order: -1 for a kept document, else the index of the kept
    document of its cluster."""
    check_bands(bands, rows, signatures.shape[1] if signatures.ndim == 2 else NUM_PERM)
    n = len(signatures)
    uf = _UnionFind(n)
    for band in range(bands):
        block = np.ascontiguousarray(signatures[:, band * rows:(band + 1) * rows])
        first: Dict[bytes, int] = {}
        for i in range(n):
            key = block[i].tobytes()
            j = first.setdefault(key, i)
            if j != i:
                uf.union(j, i)
    roots = [uf.find(i) for i in range(n)]
    return [-1 if root == i else root for i, root in enumerate(roots)]


def exact_duplicate_of(keys: Sequence[str]) -> List[int]:
    """-1 for the first document with each key, else the index of that first document."""
    first: Dict[str, int] = {}
    out = []
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        out.append(-1 if j == i else j)
    return out


def recall_curve(bands: int, rows: int, points: Iterable[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
                 ) -> List[Tuple[float, float]]:
    return [(j, candidate_probability(j, bands, rows)) for j in points]
