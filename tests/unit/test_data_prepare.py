"""The prepare stage body: idempotent, crash-safe, and careful with directories it did not make."""
import os

import pytest

from saul.config.schema import DataConfig
from saul.data import prepare as prepare_module
from saul.data.dataset import DatasetError, PackedDataset
from saul.data.prepare import prepare_dataset
from saul.data.tokenizer import load_tokenizer, tokenizer_fingerprint

CFG = DataConfig(num_documents=24, tokenizer_vocab_size=400)


def _snapshot(path):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in path.rglob("*")}


def test_prepare_writes_a_complete_dataset(tmp_path):
    out = tmp_path / "run" / "data"
    m = prepare_dataset(CFG, seq_len=32, seed=3, out_dir=out, samples_per_shard=200)
    ds = PackedDataset(out)
    ds.verify(full=True)
    assert ds.manifest == m and len(m["shards"]) >= 2
    assert m["metadata"]["inputs"]["num_documents"] == 24
    assert (out / "corpus.jsonl").read_text().count("\n") == 24
    assert tokenizer_fingerprint(ds.tokenizer_dir) == ds.tokenizer_fingerprint
    assert load_tokenizer(ds.tokenizer_dir).eos_token_id == ds.eos_id
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["data"]  # no temp dirs left


def test_prepare_is_idempotent_and_deterministic(tmp_path):
    first = prepare_dataset(CFG, seq_len=32, seed=3, out_dir=tmp_path / "a")
    before = _snapshot(tmp_path / "a")
    assert prepare_dataset(CFG, seq_len=32, seed=3, out_dir=tmp_path / "a") == first
    assert _snapshot(tmp_path / "a") == before  # nothing rewritten
    elsewhere = prepare_dataset(CFG, seq_len=32, seed=3, out_dir=tmp_path / "b")
    assert elsewhere["fingerprint"] == first["fingerprint"]
    assert ((tmp_path / "a" / "shard-00000.bin").read_bytes()
            == (tmp_path / "b" / "shard-00000.bin").read_bytes())


def test_changed_inputs_rebuild(tmp_path):
    first = prepare_dataset(CFG, seq_len=32, seed=3, out_dir=tmp_path)
    reseeded = prepare_dataset(CFG, seq_len=32, seed=4, out_dir=tmp_path)
    assert reseeded["fingerprint"] != first["fingerprint"]
    longer = prepare_dataset(CFG, seq_len=48, seed=4, out_dir=tmp_path)
    assert PackedDataset(tmp_path).seq_len == 48 == longer["seq_len"]


def test_a_damaged_dataset_is_rebuilt(tmp_path):
    m = prepare_dataset(CFG, seq_len=32, seed=3, out_dir=tmp_path / "d")
    shard = tmp_path / "d" / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:100])
    assert prepare_dataset(CFG, seq_len=32, seed=3, out_dir=tmp_path / "d") == m
    PackedDataset(tmp_path / "d").verify(full=True)


def test_a_crash_mid_build_leaves_the_old_dataset_or_nothing(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("node failure")

    monkeypatch.setattr(prepare_module, "pack_documents", crash)
    with pytest.raises(RuntimeError):
        prepare_dataset(CFG, seq_len=32, seed=3, out_dir=tmp_path / "new")
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    old = prepare_dataset(CFG, seq_len=32, seed=3, out_dir=tmp_path / "new")
    monkeypatch.setattr(prepare_module, "pack_documents", crash)
    with pytest.raises(RuntimeError):
        prepare_dataset(CFG, seq_len=32, seed=9, out_dir=tmp_path / "new")
    assert PackedDataset(tmp_path / "new").fingerprint == old["fingerprint"]
    assert os.listdir(tmp_path) == ["new"]


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="not part of a packed dataset.*thesis.tex"):
        prepare_dataset(CFG, seq_len=32, seed=3, out_dir=tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="data.source='pdf' is not supported"):
        prepare_dataset(DataConfig(source="pdf"), seq_len=32, seed=3, out_dir=tmp_path)


def test_same_fingerprint_in_a_fresh_process(tmp_path):
    """No hidden dependence on hash randomisation or process state (a requeue is a new process)."""
    import subprocess
    import sys

    here = prepare_dataset(CFG, seq_len=32, seed=3, out_dir=tmp_path / "here")
    code = ("import sys; from saul.config.schema import DataConfig; "
            "from saul.data.prepare import prepare_dataset; "
            "m = prepare_dataset(DataConfig(num_documents=24, tokenizer_vocab_size=400), 32, 3, "
            "sys.argv[1]); print(m['fingerprint'])")
    env = dict(os.environ, PYTHONHASHSEED="987")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "there")], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here["fingerprint"]
