"""The `prepare` stage body: synthetic corpus -> tokenizer -> packed dataset, in one directory.

    <out_dir>/
        corpus.jsonl     the documents ({"id", "kind", "text"} per line)
        tokenizer/       tokenizer.json + transformers config (see saul.data.tokenizer)
        shard-*.bin      packed samples
        manifest.json    written last (see saul.data.packing)

Idempotent: when `out_dir` already holds a valid dataset made from the same inputs it is
returned untouched, so a requeued or repeated prepare costs nothing. Crash-safe: everything is
built in a sibling temporary directory and renamed into place, so `out_dir` is either the old
dataset, the new one, or absent, never half-written. Torch-free.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from saul.data.atomic import fsync_dir
from saul.data.dataset import DatasetError, PackedDataset
from saul.data.packing import (DEFAULT_SAMPLES_PER_SHARD, FORMAT_VERSION, MANIFEST_FILE,
                               SHARD_GLOB, pack_documents)
from saul.data.synthetic import GENERATOR_VERSION, generate_corpus, write_corpus_jsonl
from saul.data.tokenizer import tokenizer_fingerprint, train_tokenizer

SOURCES = ("synthetic",)
CORPUS_FILE = "corpus.jsonl"
TOKENIZER_DIR = "tokenizer"
AUDIT_DIR = "audit"  # removed.jsonl, kept.jsonl, report.md (saul.data.audit)


def prepare_inputs(cfg_data: Any, seq_len: int, seed: int) -> dict:
    """Everything that decides the dataset's bytes: a dataset made from equal inputs is reused."""
    if cfg_data.source not in SOURCES:
        raise DatasetError(f"data.source={cfg_data.source!r} is not supported (choose from "
                           f"{', '.join(SOURCES)})")
    return {
        "source": cfg_data.source,
        "generator_version": GENERATOR_VERSION,
        "num_documents": int(cfg_data.num_documents),
        "tokenizer_vocab_size": int(cfg_data.tokenizer_vocab_size),
        "seq_len": int(seq_len),
        "seed": int(seed),
        "format_version": FORMAT_VERSION,
    }


def existing_dataset(out_dir: os.PathLike, inputs: dict) -> Optional[dict]:
    """The manifest of a valid dataset in `out_dir` built from `inputs`, else None."""
    try:
        dataset = PackedDataset(out_dir)
    except DatasetError:
        return None
    if dataset.manifest.get("metadata", {}).get("inputs") != inputs:
        return None
    tokenizer = dataset.tokenizer_dir
    try:
        if tokenizer is None or tokenizer_fingerprint(tokenizer) != dataset.tokenizer_fingerprint:
            return None
    except (OSError, ValueError):
        return None
    return dataset.manifest


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but a dataset directory: data.path may point anywhere."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a directory; refusing to replace it")
    foreign = [p.name for p in out.iterdir()
               if p.name not in (MANIFEST_FILE, CORPUS_FILE, TOKENIZER_DIR, AUDIT_DIR)
               and not fnmatch.fnmatch(p.name, SHARD_GLOB) and not p.name.startswith(".")]
    if foreign:
        raise DatasetError(f"{out}: holds files that are not part of a packed dataset "
                           f"({', '.join(sorted(foreign)[:5])}); refusing to replace it")


def _build(tmp: Path, inputs: dict, samples_per_shard: int) -> dict:
    corpus = generate_corpus(inputs["num_documents"], inputs["seed"])
    write_corpus_jsonl(tmp / CORPUS_FILE, corpus)
    texts = [doc.text for doc in corpus]
    tokenizer = train_tokenizer(texts, inputs["tokenizer_vocab_size"], tmp / TOKENIZER_DIR)
    metadata = {"inputs": inputs, "tokenizer_dir": TOKENIZER_DIR, "corpus": CORPUS_FILE}
    return pack_documents(texts, tokenizer=tokenizer, seq_len=inputs["seq_len"], out_dir=tmp,
                          seed=inputs["seed"], samples_per_shard=samples_per_shard,
                          metadata=metadata)


def prepare_dataset(cfg_data: Any, seq_len: int, seed: int, out_dir: os.PathLike,
                    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD) -> dict:
    """Make `out_dir` hold the dataset that `cfg_data` (a DataConfig), `seq_len` and `seed`
    describe, and return its manifest. A dataset there from other inputs is replaced."""
    if seq_len <= 0:
        raise DatasetError(f"seq_len must be > 0, got {seq_len}")
    out = Path(out_dir).absolute()
    inputs = prepare_inputs(cfg_data, seq_len, seed)
    found = existing_dataset(out, inputs)
    if found is not None:
        return found
    return install_atomically(out, inputs, lambda tmp: _build(tmp, inputs, samples_per_shard))


def install_atomically(out: Path, inputs: dict, build: Callable[[Path], dict]) -> dict:
    """Run `build(tmp)` in a sibling temporary directory and rename the result onto `out`:
    `out` is the old dataset, the new one, or briefly absent, never half-written."""
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Unique names: two prepares racing on the same out_dir never share a temp directory.
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.with_name(f".{out.name}.tmp-{tag}")
    old = out.with_name(f".{out.name}.old-{tag}")
    tmp.mkdir()
    try:
        manifest = build(tmp)
        fsync_dir(tmp)
        try:
            # out_dir is briefly absent: a reader sees "no dataset", never half of one.
            os.rename(out, old)
        except FileNotFoundError:
            pass
        try:
            os.rename(tmp, out)
        except OSError:
            # Another prepare won the race: keep its result if it is what we were asked for.
            found = existing_dataset(out, inputs)
            if found is None:
                raise
            return found
        fsync_dir(out.parent)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
