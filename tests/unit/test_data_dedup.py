"""MinHash signatures (batched, equal to datasketch's) and the candidate check that keeps templated
legal text from collapsing into one near-duplicate cluster."""
import random

import numpy as np
import pytest

from saul.data import dedup


def _words(rng, n, vocab=20000):
    return [f"w{rng.randrange(vocab)}" for _ in range(n)]


def test_batched_signatures_equal_datasketch_minhash():
    import datasketch  # a dependency of [train]: missing is a failure, not a skip

    a, b = dedup.affine32_permutations(dedup.NUM_PERM, 1)
    ref_a, ref_b = datasketch.MinHash(num_perm=dedup.NUM_PERM, seed=1, scheme="affine32").permutations
    assert np.array_equal(a, ref_a) and np.array_equal(b, ref_b)
    rng = random.Random(4)
    # Empty, shorter than one 5-gram, and long documents, in batches larger than one numpy product.
    texts = [" ".join(_words(rng, n)) for n in (0, 3, 600, 5, 2000, 600, 1, 9000, 40)]
    signer = dedup.Signer()
    got = signer.signatures(texts)
    assert got.shape == (len(texts), dedup.NUM_PERM) and got.dtype == np.uint32
    for text, row in zip(texts, got):
        ref = datasketch.MinHash(num_perm=dedup.NUM_PERM, seed=1, hashfunc=int)
        ref.update_batch([int(h) for h in signer.shingle_hashes(text)])
        assert np.array_equal(ref.hashvalues, row)
    assert np.array_equal(signer.signature(texts[2]), got[2])  # one at a time: the same values


def test_shingle_hashes_follow_the_words_not_their_case_or_punctuation():
    signer = dedup.Signer()
    one = signer.shingle_hashes("The Court held, that the contract was void")
    assert np.array_equal(one, signer.shingle_hashes("the court held that THE contract -- was void."))
    assert len(one) == 8 - 5 + 1  # one hash per 5-gram position
    swapped = signer.shingle_hashes("court The held that the contract was void")
    assert not set(one[:2].tolist()) & set(swapped[:2].tolist())  # word order matters inside a 5-gram


def test_templated_documents_do_not_collapse_into_one_cluster():
    """150 'statutes' sharing half their text (5-gram Jaccard ~0.33 per pair): the bands make
    ~3 % of the 11,175 pairs candidates; the signature check keeps them all apart, while true
    near-copies planted among them are still removed."""
    rng = random.Random(7)
    shared = _words(rng, 250)
    docs = [" ".join(shared + _words(rng, 250)) for _ in range(150)]
    near = []
    for k in range(10):  # a near-copy of statute k: ~1 word in 40 changed
        words = docs[k].split()
        for i in rng.sample(range(len(words)), len(words) // 40):
            words[i] = f"x{rng.randrange(10**6)}"
        near.append(len(docs))
        docs.append(" ".join(words))
    sig = dedup.Signer().signatures(docs)
    dup_of = dedup.near_duplicate_of(sig, 42, 6)
    assert [i for i, j in enumerate(dup_of) if j >= 0] == near
    assert [dup_of[i] for i in near] == list(range(10))
    unchecked = dedup.near_duplicate_of(sig, 42, 6, verify=0.0)  # text-dedup's plain LSH
    assert sum(j >= 0 for j in unchecked) > 50


def test_recall_curve_before_and_after_the_check():
    curve = {j: (p, q) for j, p, q in dedup.recall_curve(42, 6)}
    assert [round(curve[j][0], 3) for j in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)] == [0.030, 0.158, 0.484, 0.866, 0.995, 1.0]
    assert curve[0.3][1] < 1e-6 and curve[0.4][1] < 1e-3  # templated neighbours are kept
    assert curve[0.6][1] == pytest.approx(curve[0.6][0], abs=0.01)  # real near-duplicates are not


@pytest.mark.parametrize("world", [2, 3, 42])
def test_bands_spread_over_ranks_give_the_same_clusters(world):
    """Each 'rank' takes bands r, r + world, ... (any order); the union of their forests is the
    one-process result: templated statutes kept apart, near-copies (also of near-copies) found."""
    rng = random.Random(11)
    shared = _words(rng, 200)
    docs = [" ".join(shared + _words(rng, 300)) for _ in range(60)]
    for k in range(8):  # a chain: copy of a copy, so clusters join across bands
        words = docs[-1 if k % 2 else k].split()
        for i in rng.sample(range(len(words)), len(words) // 30):
            words[i] = f"x{rng.randrange(10**6)}"
        docs.append(" ".join(words))
    sig = dedup.Signer().signatures(docs)
    whole = dedup.near_duplicate_of(sig, 42, 6)
    assert sum(j >= 0 for j in whole) >= 8
    edges = []
    for r in reversed(range(world)):
        for band in range(r, 42, world):
            key = dedup.band_key(sig[:, band * 6:(band + 1) * 6])
            calls = []
            edges.append(dedup.band_edges(key, lambda idx: calls.append(len(idx)) or sig[idx]))
            assert sum(calls) < len(docs)  # only documents sharing a bucket are read whole
    assert dedup.clusters_from_edges(len(docs), edges) == whole
