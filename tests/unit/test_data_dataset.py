"""PackedDataset: lazy memmapped reads, and a clear DatasetError for every broken directory."""
import json
import pickle
import shutil

import numpy as np
import pytest

from saul.config.schema import RunConfig
from saul.data.dataset import DatasetError, PackedDataset, resolve_dataset_dir
from saul.data.packing import pack_documents
from saul.data.synthetic import generate_documents
from saul.data.tokenizer import train_tokenizer

SEQ = 16


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    texts = generate_documents(12, seed=4)
    tok = train_tokenizer(texts, 300, tmp_path_factory.mktemp("tok"))
    out = tmp_path_factory.mktemp("ds")
    pack_documents(texts, tokenizer=tok, seq_len=SEQ, out_dir=out, seed=1, samples_per_shard=64)
    return out


@pytest.fixture
def ds_dir(pristine, tmp_path):
    """A private copy each test may damage."""
    return shutil.copytree(pristine, tmp_path / "ds")


def test_reads_samples_across_shards(ds_dir):
    ds = PackedDataset(ds_dir)
    m = ds.manifest
    assert len(m["shards"]) >= 2 and len(ds) == m["num_samples"]
    raw = np.concatenate([np.fromfile(ds_dir / s["file"], dtype="<u2") for s in m["shards"]])
    raw = raw.reshape(-1, SEQ)
    for i in (0, 63, 64, 65, len(ds) - 1, -1):
        sample = ds[i]
        assert sample.dtype == np.int64 and sample.shape == (SEQ,)
        np.testing.assert_array_equal(sample, raw[i])
    np.testing.assert_array_equal(ds.get_batch([3, 64]), raw[[3, 64]])
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert (ds.seq_len, ds.vocab_size, ds.fingerprint) == (SEQ, 300, m["fingerprint"])


def test_memmaps_open_lazily_and_the_dataset_pickles(ds_dir):
    ds = PackedDataset(ds_dir)
    assert ds._maps == [None] * len(ds._maps)
    ds[0]
    assert ds._maps[0] is not None and ds._maps[1] is None
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[70], ds[70])


def test_verify_passes_on_intact_data(ds_dir):
    PackedDataset(ds_dir).verify(full=True)


def test_missing_manifest(ds_dir):
    (ds_dir / "manifest.json").unlink()
    with pytest.raises(DatasetError, match=r"manifest\.json: missing.*not a packed dataset"):
        PackedDataset(ds_dir)


def test_truncated_shard(ds_dir):
    shard = ds_dir / "shard-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    message = r"shard-00001\.bin: \d+ bytes, expected \d+ .*truncated"
    with pytest.raises(DatasetError, match=message):
        PackedDataset(ds_dir)


def test_missing_shard(ds_dir):
    (ds_dir / "shard-00000.bin").unlink()
    with pytest.raises(DatasetError, match=r"shard-00000\.bin: shard listed in .* is missing"):
        PackedDataset(ds_dir)


def test_flipped_byte_is_caught_by_full_verify_only(ds_dir):
    shard = ds_dir / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    ds = PackedDataset(ds_dir)  # same size: opening is cheap and cannot tell
    ds.verify(full=False)
    with pytest.raises(DatasetError, match=r"shard-00000\.bin: sha256 .* corrupt"):
        ds.verify(full=True)


def _edit_manifest(ds_dir, **changes):
    path = ds_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 99}, r"unknown format_version 99"),
    ({"format": "other"}, r"format 'other'"),
    ({"dtype": "float32"}, r"dtype 'float32'"),
    ({"seq_len": "16"}, r"'seq_len' missing or not of type int"),
    ({"num_samples": 1}, r"num_samples is 1 but the shards hold"),
    ({"seq_len": 8}, r"fingerprint does not match"),
])
def test_bad_manifests(ds_dir, changes, message):
    _edit_manifest(ds_dir, **changes)
    with pytest.raises(DatasetError, match=message) as err:
        PackedDataset(ds_dir)
    assert "manifest.json" in str(err.value)


def test_unparseable_manifest(ds_dir):
    (ds_dir / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"manifest\.json: unreadable"):
        PackedDataset(ds_dir)


def test_resolve_dataset_dir(tmp_path):
    cfg = RunConfig(run="demo", runs_root=str(tmp_path))
    assert resolve_dataset_dir(cfg) == tmp_path / "demo" / "data"
    cfg.data.path = str(tmp_path / "elsewhere")
    assert resolve_dataset_dir(cfg) == tmp_path / "elsewhere"
