"""Step 4: exact and near-duplicate removal, sharded like datatrove's four MinHash stages.

    signatures  per input shard, on every rank: a 256-permutation MinHash of each document's
                word 5-grams (text-dedup's defaults: lower-cased, split on non-alphanumerics),
                saved next to the shard's documents
    buckets     after all shards, spread over the ranks by band (rank r takes bands r, r+N, ...,
                as datatrove's bucket stage takes a band range per task): 42 bands x 6 rows;
                documents whose band values agree share a bucket; within a band, two documents
                of a bucket are joined only if their 256-value signatures agree on >= 50 %, and
                the band's result is a spanning forest of its clusters (`band_edges`)
    clusters    union-find over every band's forest (transitive, like text-dedup's clustering):
                the same clusters whatever the split of bands over ranks
    filter      keep the first document of each cluster (sources in order, files sorted,
                records in file order), remove the rest as `near_duplicate`
Exact duplicates (SHA-256 of the lower-cased, whitespace-collapsed text) go first, the same way.

Shingle hashes: text-dedup hashes each joined 5-gram with sha1 (one Python call per shingle,
~1,000 documents/s). Here each distinct word is hashed once (blake2b, 64 bits, cached) and the
5-gram's hash is a position-weighted sum of its words' hashes put through MurmurHash3's 64-bit
finalizer, top 32 bits kept: the same job (a 32-bit random hash of the shingle), computed for a
whole document in a few numpy operations. MinHash only needs the hash to be random, so the
estimate and the S-curve below are unchanged.

Why datasketch and not datatrove: the signature is datasketch's MinHash (scheme affine32:
MurmurHash3's 32-bit finalizer, then 256 affine permutations mod 2^32, seed 1);
`Signer.signatures` applies those permutations to a whole batch of documents at once (one numpy
product and a `minimum.reduceat` per ~4k shingles instead of one MinHash object per document;
tests check the values equal datasketch's `update_batch` on the same shingle hashes). Its parameter optimizer
gives the same 42 x 6 split for threshold 0.5. The bucketing and filtering over shards (below)
is a few lines of numpy that run inside our own ranks, ledger and resume markers, where
datatrove would bring its own executor, logging tree and completion files.

With b bands of r rows, two documents of Jaccard similarity J become candidates with
probability 1 - (1 - J^r)^b; for 42 x 6: 0.030 at J=0.3, 0.158 at 0.4, 0.484 at 0.5 (the
~(1/b)^(1/r) = 0.54 midpoint), 0.866 at 0.6, 0.995 at 0.7, 1.000 from 0.8. text-dedup stops
there; we also check each candidate pair on its whole signature (the Jaccard estimate must be
>= 0.5, the paper's threshold), because legal text is templated: two different statutes of one
code share ~30 % of their 5-grams, and at 3 % per pair (transitively, through union-find) a
code of a thousand sections would collapse into one cluster. `duplicate_probability` is the
curve after the check: ~0 below J=0.45, unchanged from J=0.6 (tests and the benchmark measure
recall and false positives on planted pairs).
"""
from __future__ import annotations

import hashlib
import math
import re
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np

NUM_PERM = 256
_NON_ALNUM = re.compile(r"[^A-Za-z0-9_]+")
_WORD = re.compile(r"[A-Za-z0-9_]+")  # the pieces _NON_ALNUM.split leaves (text-dedup's words)
_MINHASH_SEED = 1
_EMPTY = np.uint32(0xFFFFFFFF)  # datasketch's initial value: a document without shingles
VERIFY_JACCARD = 0.5  # the paper's threshold, checked on the whole signature of each candidate pair
_MAX_BUCKET_CHECKS = 64  # members of one bucket a new document is compared with (a cluster links anyway)
_BATCH_SHINGLES = 1 << 12  # shingles per numpy product: 4 MiB for 256 permutations stays in cache
_MAX_CACHED_WORDS = 1 << 20  # the word-hash cache is cleared past this (memory stays ~100 MB)
# Odd 64-bit multipliers, one per position in the n-gram: "a b" and "b a" hash differently.
_POSITION_WEIGHTS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                              0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53,
                              0x94D049BB133111EB, 0xBF58476D1CE4E5B9], dtype=np.uint64)


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
    """MinHash signatures, many documents per numpy call, equal to datasketch's MinHash
    (scheme affine32, seed 1) fed the same shingles."""

    def __init__(self, ngram: int = 5, num_perm: int = NUM_PERM):
        self.ngram, self.num_perm = ngram, num_perm
        if not 0 < ngram <= len(_POSITION_WEIGHTS):
            raise ValueError(f"minhash n-gram size {ngram} must be in 1..{len(_POSITION_WEIGHTS)}")
        a, b = affine32_permutations(num_perm, _MINHASH_SEED)
        self._a, self._b = a[:, None], b[:, None]
        self._word_hashes: Dict[str, int] = {}

    def signature(self, text: str) -> np.ndarray:
        return self.signatures([text])[0]

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """One row of `num_perm` uint32 per text."""
        rows: List[np.ndarray] = []
        hashes: List[np.ndarray] = []
        pending = 0
        for text in texts:
            hv = self.shingle_hashes(text)
            hashes.append(hv)
            pending += len(hv)
            if pending >= _BATCH_SHINGLES:
                rows.append(self._reduce(hashes))
                hashes, pending = [], 0
        if hashes:
            rows.append(self._reduce(hashes))
        return np.concatenate(rows) if rows else np.empty((0, self.num_perm), dtype=np.uint32)

    def shingle_hashes(self, text: str) -> np.ndarray:
        """32-bit hashes of the text's word n-grams (one per position; repeats do not change a
        minimum). A text of fewer than n words is one shingle."""
        tokens = _WORD.findall(text.lower())
        if not tokens:
            return np.empty(0, dtype=np.uint32)
        cache = self._word_hashes
        if len(cache) > _MAX_CACHED_WORDS:
            cache.clear()
        for t in set(tokens).difference(cache):
            cache[t] = int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little")
        w = np.array(list(map(cache.__getitem__, tokens)), dtype=np.uint64)
        n = min(self.ngram, len(w))
        m = len(w) - n + 1
        h = w[:m] * _POSITION_WEIGHTS[0]
        for j in range(1, n):  # uint64 arithmetic wraps: a hash mod 2^64
            h += w[j:j + m] * _POSITION_WEIGHTS[j]
        return (_fmix64(h) >> np.uint64(32)).astype(np.uint32)

    def _reduce(self, hashes: List[np.ndarray]) -> np.ndarray:
        counts = np.fromiter((len(h) for h in hashes), dtype=np.int64, count=len(hashes))
        out = np.full((len(hashes), self.num_perm), _EMPTY, dtype=np.uint32)
        nonempty = counts > 0
        if not nonempty.any():
            return out
        hv = _fmix32(np.concatenate(hashes))[None, :]
        # Permutations x shingles, so each document's shingles are contiguous for reduceat
        # (row-major the other way round is 10x slower). uint32 wraps: datasketch's mod 2^32.
        permuted = np.multiply(self._a, hv)
        np.add(permuted, self._b, out=permuted)
        starts = np.concatenate(([0], np.cumsum(counts[nonempty])[:-1]))
        out[nonempty] = np.minimum.reduceat(permuted, starts, axis=1).T
        return out


def affine32_permutations(num_perm: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """datasketch's `MinHash(num_perm, seed, scheme="affine32").permutations`, drawn the same way
    here because importing datasketch pulls in scipy (~0.7 s on every rank); a test checks both
    agree."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every input bit reaches every output bit."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(hv: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before its affine permutations."""
    hv = hv ^ (hv >> np.uint32(16))
    hv = hv * np.uint32(0x85EBCA6B)
    hv = hv ^ (hv >> np.uint32(13))
    hv = hv * np.uint32(0xC2B2AE35)
    return hv ^ (hv >> np.uint32(16))


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


def band_key(columns: np.ndarray) -> np.ndarray:
    """One band's `rows` values per document folded into one 64-bit key (sorting uint64 is ~5x
    faster than rows of bytes); a collision could only propose a pair, which the signature check
    then rejects."""
    key = np.zeros(len(columns), dtype=np.uint64)
    for j in range(columns.shape[1]):
        key = _fmix64(key ^ columns[:, j].astype(np.uint64))
    return key


def band_edges(key: np.ndarray, signatures_of: Callable[[np.ndarray], np.ndarray],
               verify: float = VERIFY_JACCARD) -> np.ndarray:
    """The buckets and clusters of one band: documents (in keep-priority order) whose keys agree
    are joined when their whole signatures (`signatures_of(indices)` -> rows) agree on at least
    `verify` of the values. Returns a spanning forest of the band's clusters as (root, member)
    pairs, root the earliest document: the union over bands, in any split and any order, gives
    the same clusters as one pass over all bands (`clusters_from_edges`)."""
    _, bucket, size = np.unique(key, return_inverse=True, return_counts=True)
    bucket = bucket.ravel()
    shared = np.flatnonzero(size[bucket] > 1)  # only documents that share a bucket need Python
    if not len(shared):
        return np.empty((0, 2), dtype=np.int64)
    grouped = shared[np.argsort(bucket[shared], kind="stable")]  # by bucket, document order inside
    rows = signatures_of(grouped)
    row_of = {int(d): k for k, d in enumerate(grouped)}
    parent: Dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for members in np.split(grouped, np.flatnonzero(np.diff(bucket[grouped])) + 1):
        members = members.tolist()
        for k in range(1, len(members)):
            i = members[k]
            root = find(i)
            others = [m for m in members[:min(k, _MAX_BUCKET_CHECKS)] if find(m) != root]
            if others:
                agree = (rows[[row_of[m] for m in others]] == rows[row_of[i]]).mean(axis=1)
                for m, share in zip(others, agree):
                    if share >= verify:
                        ra, rb = find(m), find(i)
                        if ra != rb:  # the earlier document stays the root: it is the one kept
                            parent[max(ra, rb)] = min(ra, rb)
    edges = [(find(d), d) for d in parent if find(d) != d]
    return np.array(sorted(edges), dtype=np.int64).reshape(-1, 2)


def clusters_from_edges(n: int, edges: Iterable[np.ndarray]) -> List[int]:
    """The filter: -1 for a kept document, else the index of the kept (earliest) document of its
    cluster, from the bands' edges."""
    uf = _UnionFind(n)
    for pairs in edges:
        for a, b in pairs.tolist():
            uf.union(a, b)
    roots = [uf.find(i) for i in range(n)]
    return [-1 if root == i else root for i, root in enumerate(roots)]


def near_duplicate_of(signatures: np.ndarray, bands: int, rows: int,
                      verify: float = VERIFY_JACCARD) -> List[int]:
    """All bands in one process: for documents in keep-priority order, -1 for a kept document,
    else the index of the kept document of its cluster. Two documents sharing a bucket are joined
    only when their whole signatures agree on at least `verify` of the values (the Jaccard
    estimate). The prepare pipeline runs the same `band_edges` spread over its ranks."""
    check_bands(bands, rows, signatures.shape[1] if signatures.ndim == 2 else NUM_PERM)
    edges = [band_edges(band_key(signatures[:, band * rows:(band + 1) * rows]),
                        lambda idx: signatures[idx], verify) for band in range(bands)]
    return clusters_from_edges(len(signatures), edges)


def exact_duplicate_of(keys: Sequence[str]) -> List[int]:
    """-1 for the first document with each key, else the index of that first document."""
    first: Dict[str, int] = {}
    out = []
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        out.append(-1 if j == i else j)
    return out


def duplicate_probability(jaccard: float, bands: int, rows: int, num_perm: int = NUM_PERM,
                          verify: float = VERIFY_JACCARD) -> float:
    """P(removed as a near duplicate): a candidate (the band S-curve) whose signatures then agree
    on >= `verify` of the values (the other num_perm - rows values each agree with
    probability J, binomially)."""
    rest = num_perm - rows
    need = max(0, math.ceil(verify * num_perm) - rows)
    agree = sum(math.comb(rest, k) * jaccard ** k * (1.0 - jaccard) ** (rest - k) for k in range(need, rest + 1))
    return candidate_probability(jaccard, bands, rows) * agree


def recall_curve(bands: int, rows: int, points: Iterable[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
                 ) -> List[Tuple[float, float, float]]:
    """(Jaccard, P(candidate), P(removed)) at each point."""
    return [(j, candidate_probability(j, bands, rows), duplicate_probability(j, bands, rows)) for j in points]
