"""Packing invariants: fixed-length samples, EOS after every document, token conservation,
long documents chunked across samples, deterministic bytes, several shards."""
import json

import numpy as np
import pytest

from saul.data.dataset import PackedDataset
from saul.data.packing import MANIFEST_FILE, dataset_fingerprint, pack_documents, token_dtype
from saul.data.sampler import stable_permutation
from saul.data.synthetic import generate_documents
from saul.data.tokenizer import describe_tokenizer, train_tokenizer

SEQ = 32


@pytest.fixture(scope="module")
def texts():
    return generate_documents(40, seed=21)


@pytest.fixture(scope="module")
def tokenizer_dir(texts, tmp_path_factory):
    return train_tokenizer(texts, 400, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def packed(texts, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    manifest = pack_documents(texts, tokenizer=tokenizer_dir, seq_len=SEQ, out_dir=out, seed=5,
                              samples_per_shard=100)
    return out, manifest


def _doc_ids(texts, tokenizer_dir):
    backend = describe_tokenizer(tokenizer_dir).backend
    return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]


def test_stream_is_shuffled_documents_each_followed_by_eos(packed, texts, tokenizer_dir):
    out, manifest = packed
    ds = PackedDataset(out)
    eos = manifest["eos_id"]
    docs = _doc_ids(texts, tokenizer_dir)
    order = stable_permutation(len(docs), 1, 5)
    expected = np.concatenate([np.array(docs[i] + [eos]) for i in order])
    stream = ds.get_batch(range(len(ds))).reshape(-1)
    # Every sample is exactly SEQ tokens; the stream is the expected one minus a short tail.
    assert ds.get_batch([0, 1]).shape == (2, SEQ)
    assert manifest["dropped_tokens"] < SEQ
    np.testing.assert_array_equal(stream, expected[: stream.size])
    assert (stream == eos).sum() + (expected[stream.size:] == eos).sum() == len(docs)


def test_token_count_is_conserved(packed, texts, tokenizer_dir):
    _, m = packed
    doc_tokens = sum(len(ids) + 1 for ids in _doc_ids(texts, tokenizer_dir))
    assert m["total_tokens"] == doc_tokens
    assert m["total_tokens"] == m["packed_tokens"] + m["dropped_tokens"]
    assert m["packed_tokens"] == m["num_samples"] * SEQ
    assert m["num_documents"] == len(texts)


def test_long_documents_are_chunked_across_samples(packed, texts, tokenizer_dir):
    out, m = packed
    ds = PackedDataset(out)
    longest = max(len(ids) for ids in _doc_ids(texts, tokenizer_dir))
    assert longest > 3 * SEQ
    # Some window of consecutive samples holds no EOS at all: one document spans it.
    eos_per_sample = (ds.get_batch(range(len(ds))) == m["eos_id"]).sum(axis=1)
    assert (np.convolve(eos_per_sample == 0, np.ones(3), "valid") == 3).any()


def test_several_shards_with_hashes_and_sizes(packed):
    out, m = packed
    assert len(m["shards"]) == -(-m["num_samples"] // 100) >= 3
    assert all(s["num_samples"] == 100 for s in m["shards"][:-1])
    for shard in m["shards"]:
        assert (out / shard["file"]).stat().st_size == shard["num_samples"] * SEQ * 2
    assert m["dtype"] == "uint16" and m["fingerprint"] == dataset_fingerprint(m)
    assert json.loads((out / MANIFEST_FILE).read_text()) == m
    assert not list(out.glob(".*tmp*"))


def test_same_seed_same_bytes_other_seed_other_fingerprint(packed, texts, tokenizer_dir, tmp_path):
    out, m = packed
    again = pack_documents(texts, tokenizer=tokenizer_dir, seq_len=SEQ, out_dir=tmp_path / "a",
                           seed=5, samples_per_shard=100)
    assert again == m
    for shard in m["shards"]:
        assert (tmp_path / "a" / shard["file"]).read_bytes() == (out / shard["file"]).read_bytes()
    assert (tmp_path / "a" / MANIFEST_FILE).read_bytes() == (out / MANIFEST_FILE).read_bytes()
    other = pack_documents(texts, tokenizer=tokenizer_dir, seq_len=SEQ, out_dir=tmp_path / "b",
                           seed=6, samples_per_shard=100)
    assert other["fingerprint"] != m["fingerprint"]
    assert other["total_tokens"] == m["total_tokens"]


def test_token_id_lists_pack_like_texts(texts, tokenizer_dir, tmp_path, packed):
    from_ids = pack_documents(_doc_ids(texts, tokenizer_dir), tokenizer=tokenizer_dir,
                              seq_len=SEQ, out_dir=tmp_path, seed=5, samples_per_shard=100)
    assert from_ids["fingerprint"] == packed[1]["fingerprint"]


def test_repacking_a_directory_replaces_the_old_dataset(texts, tokenizer_dir, tmp_path):
    pack_documents(texts, tokenizer=tokenizer_dir, seq_len=SEQ, out_dir=tmp_path, seed=5,
                   samples_per_shard=50)
    m = pack_documents(texts, tokenizer=tokenizer_dir, seq_len=SEQ * 4, out_dir=tmp_path, seed=5,
                       samples_per_shard=1000)
    assert sorted(p.name for p in tmp_path.glob("shard-*.bin")) == ["shard-00000.bin"]
    assert len(PackedDataset(tmp_path)) == m["num_samples"]


def test_bad_inputs_are_rejected(tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="fewer than one sample"):
        pack_documents(["short"], tokenizer=tokenizer_dir, seq_len=4096, out_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="out of range"):
        pack_documents([[1, 2, 5000]], tokenizer=tokenizer_dir, seq_len=2, out_dir=tmp_path, seed=0)
    with pytest.raises(TypeError, match="not a mix"):
        pack_documents(["text", [1, 2]], tokenizer=tokenizer_dir, seq_len=2, out_dir=tmp_path,
                       seed=0)
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_dtype_widens_only_past_65536_ids():
    assert token_dtype(1000).name == "uint16" and token_dtype(65536).name == "uint16"
    assert token_dtype(65537).name == "uint32"
