"""PackedDataset: a validated, lazily memory-mapped, read-only view of a packed directory.

Opening checks everything that is cheap (manifest present and well-formed, known format
version, every shard present with exactly the bytes the manifest promises) and fails with a
`DatasetError` that names the file and what is wrong; `verify()` also re-hashes the shards.
Numpy only: the trainer turns samples into tensors itself.

The global sample order lives in `saul.data.sampler`; its functions are re-exported here so
that `from saul.data.dataset import PackedDataset, global_batch_ids, rank_slice` is all a
training loop needs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from saul.data.packing import FORMAT, FORMAT_VERSION, MANIFEST_FILE, dataset_fingerprint
from saul.data.sampler import global_batch_ids, rank_slice, sample_order  # noqa: F401 (re-export)

_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_REQUIRED = {"format": str, "format_version": int, "seq_len": int, "dtype": str,
             "vocab_size": int, "eos_id": int, "num_samples": int, "shards": list,
             "tokenizer_fingerprint": str, "fingerprint": str}
_HASH_BLOCK = 1 << 24  # 16 MiB reads while re-hashing a shard


class DatasetError(Exception):
    """A packed dataset is missing, malformed or does not match its manifest."""


def resolve_dataset_dir(cfg) -> Path:
    """Where a run's packed dataset is: `data.path` when set, else runs/<run>/data."""
    from saul.rundir import RunDir

    return Path(cfg.data.path).absolute() if cfg.data.path else RunDir.from_config(cfg).default_data


def read_manifest(path: os.PathLike) -> dict:
    """The manifest of the dataset directory `path`, checked for shape but not against shards."""
    file = Path(path) / MANIFEST_FILE
    if not file.is_file():
        raise DatasetError(f"{file}: missing; {Path(path)} is not a packed dataset "
                           f"(run stage=prepare, or an interrupted prepare left it unfinished)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{file}: unreadable ({exc})") from exc
    if not isinstance(manifest, dict):
        raise DatasetError(f"{file}: expected a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{file}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{file}: unknown format_version {manifest.get('format_version')!r} "
                           f"(this code reads version {FORMAT_VERSION})")
    for key, kind in _REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise DatasetError(f"{file}: key {key!r} missing or not of type {kind.__name__}")
    if manifest["dtype"] not in _DTYPES:
        raise DatasetError(f"{file}: dtype {manifest['dtype']!r} not one of {sorted(_DTYPES)}")
    if manifest["seq_len"] <= 0:
        raise DatasetError(f"{file}: seq_len must be > 0, got {manifest['seq_len']}")
    for i, shard in enumerate(manifest["shards"]):
        if not (isinstance(shard, dict) and isinstance(shard.get("file"), str)
                and isinstance(shard.get("num_samples"), int) and shard["num_samples"] > 0
                and isinstance(shard.get("sha256"), str)):
            raise DatasetError(f"{file}: shards[{i}] needs 'file', 'num_samples' > 0 and 'sha256'")
        if Path(shard["file"]).name != shard["file"]:
            raise DatasetError(f"{file}: shards[{i}] file {shard['file']!r} must be a bare name")
    counted = sum(shard["num_samples"] for shard in manifest["shards"])
    if counted != manifest["num_samples"] or counted == 0:
        raise DatasetError(f"{file}: num_samples is {manifest['num_samples']} but the shards hold "
                           f"{counted}")
    if dataset_fingerprint(manifest) != manifest["fingerprint"]:
        raise DatasetError(f"{file}: fingerprint does not match the manifest's content "
                           f"(edited by hand or corrupted)")
    return manifest


class PackedDataset:
    """Samples of `seq_len` token ids; `ds[i]` is an int64 numpy array of shape [seq_len]."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.seq_len: int = self.manifest["seq_len"]
        self.vocab_size: int = self.manifest["vocab_size"]
        self.eos_id: int = self.manifest["eos_id"]
        self.fingerprint: str = self.manifest["fingerprint"]
        self.tokenizer_fingerprint: str = self.manifest["tokenizer_fingerprint"]
        self.dtype = _DTYPES[self.manifest["dtype"]]
        self._shards = self.manifest["shards"]
        counts = [shard["num_samples"] for shard in self._shards]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._maps: list[Optional[np.memmap]] = [None] * len(self._shards)
        for shard in self._shards:
            self._check_size(shard)

    # -- validation -------------------------------------------------------------------------
    def _check_size(self, shard: dict) -> None:
        file = self.path / shard["file"]
        expected = shard["num_samples"] * self.seq_len * self.dtype.itemsize
        try:
            actual = file.stat().st_size
        except FileNotFoundError:
            raise DatasetError(f"{file}: shard listed in {self.path / MANIFEST_FILE} is "
                               f"missing") from None
        if actual != expected:
            raise DatasetError(
                f"{file}: {actual} bytes, expected {expected} ({shard['num_samples']} samples x "
                f"seq_len {self.seq_len} x {self.dtype.itemsize} bytes); truncated or overwritten")

    def verify(self, full: bool = True) -> None:
        """Re-check every shard's size, and with `full` its SHA-256; raise DatasetError on the
        first mismatch."""
        for shard in self._shards:
            self._check_size(shard)
            if not full:
                continue
            digest = hashlib.sha256()
            with open(self.path / shard["file"], "rb") as f:
                while block := f.read(_HASH_BLOCK):
                    digest.update(block)
            if digest.hexdigest() != shard["sha256"]:
                raise DatasetError(f"{self.path / shard['file']}: sha256 {digest.hexdigest()} "
                                   f"does not match the manifest's {shard['sha256']}; the shard "
                                   f"is corrupt")

    # -- access ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.manifest["num_samples"]

    def _shard_map(self, s: int) -> np.memmap:
        # One memmap per shard, opened on first use: a rank touching few shards maps few files.
        if self._maps[s] is None:
            shard = self._shards[s]
            self._maps[s] = np.memmap(self.path / shard["file"], dtype=self.dtype, mode="r",
                                      shape=(shard["num_samples"], self.seq_len))
        return self._maps[s]

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {index} out of range for a dataset of {n} samples")
        s = int(np.searchsorted(self._starts, i, side="right")) - 1
        # int64 copy: the caller owns it, and torch.from_numpy needs a writable, signed array.
        return self._shard_map(s)[i - self._starts[s]].astype(np.int64)

    def get_batch(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Samples `ids` stacked: int64 array of shape [len(ids), seq_len]."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((ids.size, self.seq_len), dtype=np.int64)
        for row, i in enumerate(ids):
            out[row] = self[i]
        return out

    @property
    def num_tokens(self) -> int:
        return len(self) * self.seq_len

    @property
    def tokenizer_dir(self) -> Optional[Path]:
        """The tokenizer written beside the shards by `prepare`, when there is one."""
        rel = self.manifest.get("metadata", {}).get("tokenizer_dir")
        return self.path / rel if rel else None

    # Memmaps do not pickle: DataLoader workers reopen them lazily in their own process.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = [None] * len(self._shards)
        return state

    def __repr__(self) -> str:
        return (f"PackedDataset({str(self.path)!r}, samples={len(self)}, seq_len={self.seq_len}, "
                f"fingerprint={self.fingerprint[:12]})")
