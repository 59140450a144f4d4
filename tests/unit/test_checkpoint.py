"""The checkpoint directory protocol: atomic commit, verification, retention, crash mid-save."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from saul.train import checkpoint as ckpt


def save(root: Path, step: int, payload: bytes, keep_last: int = 3, state=None) -> Path:
    tmp = ckpt.begin_save(root, step)
    (tmp / "model.bin").write_bytes(payload)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "rng-rank00000.pt").write_bytes(b"rng" + payload[:10])
    files = ckpt.hash_share(tmp, ckpt.relative_files(tmp), 0, 1)
    return ckpt.commit_save(root, tmp, step, files, state or {"step": step}, keep_last)


def newest_valid(root: Path):
    for step, path in ckpt.list_step_dirs(root):
        try:
            manifest = ckpt.read_manifest(path)
        except ValueError:
            continue
        if ckpt.verify_share(path, manifest, 0, 1) is None:
            return step
    return None


def test_commit_writes_manifest_with_sizes_and_checksums(tmp_path):
    final = save(tmp_path, 5, b"x" * 1000)
    assert final.name == "step-00000005"
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["files"]["model.bin"]["size"] == 1000
    assert len(manifest["files"]["model.bin"]["sha256"]) == 64
    assert "sub/rng-rank00000.pt" in manifest["files"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_retention_keeps_the_newest_k(tmp_path):
    for step in (1, 2, 3, 4, 5):
        save(tmp_path, step, bytes([step]) * 10, keep_last=2)
    assert [s for s, _ in ckpt.list_step_dirs(tmp_path)] == [5, 4]


def test_truncated_or_corrupt_newest_is_skipped_for_the_previous(tmp_path):
    save(tmp_path, 1, b"a" * 100)
    newest = save(tmp_path, 2, b"b" * 100)
    with open(newest / "model.bin", "r+b") as fh:
        fh.truncate(50)
    assert "has 50 bytes" in ckpt.verify_share(newest, ckpt.read_manifest(newest), 0, 1)
    assert newest_valid(tmp_path) == 1
    (newest / "model.bin").write_bytes(b"c" * 100)  # right size, wrong bytes
    assert "sha256" in ckpt.verify_share(newest, ckpt.read_manifest(newest), 0, 1)
    assert newest_valid(tmp_path) == 1


def test_missing_or_garbled_manifest_is_not_a_checkpoint(tmp_path):
    save(tmp_path, 1, b"a" * 10)
    broken = save(tmp_path, 2, b"b" * 10)
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        ckpt.read_manifest(broken)
    assert newest_valid(tmp_path) == 1


def test_leftover_temporary_directory_is_ignored_and_cleaned(tmp_path):
    save(tmp_path, 1, b"a" * 10)
    leftover = tmp_path / ".tmp-step-00000002"
    leftover.mkdir()
    (leftover / "model.bin").write_bytes(b"half")
    assert newest_valid(tmp_path) == 1
    save(tmp_path, 2, b"b" * 10)
    assert newest_valid(tmp_path) == 2


def test_resave_over_an_invalid_checkpoint_of_the_same_step(tmp_path):
    save(tmp_path, 1, b"a" * 10)
    bad = save(tmp_path, 2, b"b" * 10)
    (bad / "model.bin").write_bytes(b"")
    save(tmp_path, 2, b"c" * 10)
    assert newest_valid(tmp_path) == 2


def test_resume_refuses_other_data_or_other_global_batch():
    state = {"dataset_fingerprint": "abc", "global_batch": 16, "seq_len": 64, "parallel": "ddp", "world_size": 2}
    ckpt.check_resumable(state, dict(state))
    with pytest.raises(ckpt.CheckpointMismatch, match="dataset 'abc'"):
        ckpt.check_resumable(state, dict(state, dataset_fingerprint="xyz"))
    with pytest.raises(ckpt.CheckpointMismatch, match="global batch"):
        ckpt.check_resumable(state, dict(state, global_batch=32))
    zero = dict(state, parallel="zero3")
    ckpt.check_resumable(zero, dict(zero, world_size=4))  # resliced (saul.train.universal_checkpoint)
    with pytest.raises(ckpt.CheckpointMismatch, match="made with parallel=ddp, this job has parallel=zero3"):
        ckpt.check_resumable(state, zero)


SAVER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from tests.unit.test_checkpoint import save
    root = Path(sys.argv[1])
    step = 0
    while True:
        step += 1
        save(root, step, os.urandom(8 << 20), keep_last=2)
        print(step, flush=True)
""")


def test_a_process_killed_during_save_leaves_the_previous_checkpoint_usable(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path), str(repo)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "1"  # one checkpoint committed
    proc.stdout.readline()
    time.sleep(0.05)  # now somewhere inside a later save: writing, hashing or committing
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = [s for s, _ in ckpt.list_step_dirs(tmp_path)]
    assert steps, "a committed checkpoint must survive the kill"
    assert newest_valid(tmp_path) == steps[0]  # whatever is listed verifies completely
