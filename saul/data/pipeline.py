"""The real prepare stage: data.sources -> cleaned, filtered, deduplicated, mixed, packed dataset.

Two phases, on the stage's N ranks (no process group: ranks meet through the filesystem):
  1. per input shard (files dealt by size onto shards, see deal_shards; rank r takes shards
     r, r+N, ...):
     extraction -> cleaning -> perplexity -> decontamination -> MinHash signatures. A shard's
     results go to <work>/shard-NNNNN/ (docs.jsonl records, texts.bin + texts.idx, removed.jsonl,
     signatures.u32) and its `done.json` marker (counters, CPU seconds per step) is written
     last, so a killed or requeued prepare redoes only the shards without one.
  2. on rank 0, once every marker is there: exact dedup, near dedup (buckets, clusters,
     filter), the model's tokenizer, tokenization, mixture, packing and the audit files, all
     in a temporary directory renamed onto the dataset path (saul.data.prepare).
The work directory is named after the inputs' fingerprint (sources, file sizes and mtimes,
every setting) and the shard count: changed inputs never reuse stale shards, and the same
inputs reuse the finished dataset on any rank count. Every step's CPU seconds (with pdftotext's)
go into the manifest's metadata, per step (`cpu_seconds`) and per rank for phase 1, which is
what benchmarks/data_pipeline.py reads. Torch-free.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from saul.data import audit, clean, dedup, extract, mixture, model_tokenizer
from saul.data.atomic import write_bytes_atomic, write_json_atomic
from saul.data.dataset import DatasetError
from saul.data.packing import DEFAULT_SAMPLES_PER_SHARD, FORMAT_VERSION, MANIFEST_FILE, pack_documents
from saul.data.prepare import TOKENIZER_DIR, existing_dataset, install_atomically
from saul.data.tokenizer import backend_tokenizer, describe_tokenizer, train_tokenizer

PIPELINE_VERSION = 2  # 2: MinHash shingle hashes from cached word hashes
DONE_MARKER = "done.json"
_ENCODE_CHUNK = 512
_WAIT_POLL_S = 1.0


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (pdftotext): what a step costs a core."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


class StepClock:
    """CPU seconds per step, summed (`with clock("cleaning"): ...`)."""

    def __init__(self):
        self.seconds: Counter = Counter()
        self._step, self._t0 = "", 0.0

    def __call__(self, step: str) -> "StepClock":
        self._step = step
        return self

    def __enter__(self):
        self._t0 = cpu_seconds()

    def __exit__(self, *exc):
        self.seconds[self._step] += cpu_seconds() - self._t0


@dataclass
class Outcome:
    status: str  # "done" (rank 0: dataset ready), "shards_done" (other ranks), "stopped"
    manifest: Optional[dict] = None
    shards_run: int = 0
    shards_total: int = 0


def _file_id(path: Path) -> Dict:
    st = path.stat()
    return {"path": str(path.absolute()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def pipeline_inputs(cfg_data, model_name: str, model_path: str, seq_len: int, seed: int,
                    files: Sequence[extract.InputFile], sources: Sequence[extract.Source]) -> dict:
    """Everything that decides the dataset's bytes (a dataset made from equal inputs is reused).
    The shard count is not in it: documents are merged in input order, so 1 or N ranks (and any
    data.num_shards) give the same dataset, and a re-run on another rank count reuses it."""
    settings = {k: cfg_data[k] for k in ("tokenizer", "max_perplexity", "min_words", "minhash_ngram",
                                         "minhash_bands", "minhash_rows", "tokenizer_vocab_size",
                                         "num_documents")}
    return {
        "pipeline_version": PIPELINE_VERSION,
        "format_version": FORMAT_VERSION,
        "sources": [{"name": s.name, "root": str(s.root.absolute()), "pattern": s.pattern, "role": s.role,
                     "weight": s.weight, "format": s.format, "text_field": s.text_field} for s in sources],
        "files": [[f.source, f.rel, f.format, f.size, f.mtime_ns] for f in files],
        "kenlm_model": _file_id(Path(cfg_data.kenlm_model)) if cfg_data.kenlm_model else None,
        "decontaminate": [_file_id(p) for p in _decontam_files(cfg_data)],
        "tokenizer_choice": model_tokenizer.choose(cfg_data.tokenizer, model_name, model_path),
        "settings": settings, "seq_len": int(seq_len), "seed": int(seed),
    }


def _decontam_files(cfg_data) -> List[Path]:
    from saul.data.decontaminate import eval_files

    return eval_files(list(cfg_data.decontaminate)) if cfg_data.decontaminate else []


def fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()


def work_dir_for(out: Path, inputs: dict, num_shards: int) -> Path:
    """Shards of other inputs or another split are never mixed: both are in the name."""
    return out.with_name(f".{out.name}.work-{fingerprint({**inputs, 'num_shards': num_shards})[:16]}")


def deal_shards(files: Sequence[extract.InputFile], num_shards: int) -> List[List[tuple]]:
    """Files onto shards, largest first onto the lightest shard (by bytes), so one big dump does
    not share a shard with a hundred PDFs while another shard idles. [(file index, file)] per
    shard, in input order; the dataset does not depend on the deal (the merge puts documents
    back in input order)."""
    loads = [(0, s) for s in range(num_shards)]
    shards: List[List[tuple]] = [[] for _ in range(num_shards)]
    for i in sorted(range(len(files)), key=lambda i: (-files[i].size, i)):
        load, s = heapq.heappop(loads)
        shards[s].append((i, files[i]))
        heapq.heappush(loads, (load + max(files[i].size, 1), s))
    return [sorted(shard, key=lambda item: item[0]) for shard in shards]


def shard_dir(work: Path, index: int) -> Path:
    return work / f"shard-{index:05d}"


class _ShardRunner:
    """Phase 1 for one shard; all the per-document steps with their counters."""

    def __init__(self, cfg_data, sources: Sequence[extract.Source], seed: int):
        from saul.data.decontaminate import ContaminationIndex
        from saul.data.perplexity import PerplexityScorer

        self.cfg, self.sources, self.seed = cfg_data, sources, seed
        # Plain values: an OmegaConf attribute read costs ~0.1 ms, several per document.
        self.min_words, self.max_perplexity = int(cfg_data.min_words), float(cfg_data.max_perplexity)
        self.num_documents = int(cfg_data.num_documents)
        self.clock = StepClock()
        with self.clock("filter_setup"):  # once per rank: load the KenLM model, index the eval data
            self.scorer = PerplexityScorer(cfg_data.kenlm_model) if cfg_data.kenlm_model else None
            self.index = ContaminationIndex.from_paths(list(cfg_data.decontaminate))
            self.signer = dedup.Signer(cfg_data.minhash_ngram)

    def run(self, files: Sequence[tuple[int, extract.InputFile]], out: Path,
            should_stop: Callable[[], bool], rank: int = 0) -> bool:
        kept, removed = [], []
        stats: Counter = Counter()
        rule_hits: Counter = Counter()
        clock = self.clock
        for file_index, f in files:
            if should_stop():
                return False
            src = self.sources[f.source]
            records = extract.extract(f, src.text_field, self.num_documents, self.seed)
            n = 0
            while True:
                with clock("extraction"):
                    ex = next(records, None)
                if ex is None:
                    break
                doc = self._one(src, ex, stats, rule_hits, removed, clock)
                if doc is not None:
                    doc["o"] = [file_index, n]
                    kept.append(doc)
                n += 1
        with clock("minhash_signatures"):  # one batched numpy product per ~4k shingles
            sig = self.signer.signatures(d["text"] for d in kept)
        out.mkdir(parents=True, exist_ok=True)
        # Texts go apart from their JSON records: raw UTF-8 plus offsets reads back ~10x faster
        # than JSON strings full of escaped line breaks.
        texts = [d.pop("text").encode("utf-8") for d in kept]
        offsets = np.concatenate(([0], np.cumsum([len(t) for t in texts], dtype=np.int64)))
        write_bytes_atomic(out / "texts.bin", b"".join(texts), sync_dir=False)
        write_bytes_atomic(out / "texts.idx", offsets.astype("<i8").tobytes(), sync_dir=False)
        write_bytes_atomic(out / "docs.jsonl", audit.jsonl_bytes(kept), sync_dir=False)
        write_bytes_atomic(out / "removed.jsonl", audit.jsonl_bytes(removed), sync_dir=False)
        write_bytes_atomic(out / "signatures.u32", sig.astype("<u4").tobytes(), sync_dir=False)
        rows = [{"step": step, "source": source, key: value}
                for (step, source, key), value in stats.items()]
        write_json_atomic(out / DONE_MARKER, {"docs": len(kept), "stats": rows, "rule_hits": dict(rule_hits),
                                              "cpu_seconds": dict(clock.seconds), "rank": rank})
        clock.seconds.clear()
        return True

    def _one(self, src, ex, stats: Counter, rule_hits: Counter, removed: list,
             clock: StepClock) -> Optional[dict]:
        name = src.name

        def step(step_name: str, words_in: int, reason: str = "", detail: str = "", words_out: int = 0):
            stats[(step_name, name, "docs_in")] += 1
            stats[(step_name, name, "words_in")] += words_in
            if reason:
                removed.append({"source": name, "doc_id": ex.doc_id, "step": step_name,
                                "reason": reason, "detail": detail})
                return False
            stats[(step_name, name, "docs_out")] += 1
            stats[(step_name, name, "words_out")] += words_out
            return True

        raw_words = len(ex.text.split()) if ex.text else 0
        if not step("extraction", 0, ex.skip, ex.detail, raw_words):
            return None
        with clock("cleaning"):
            cleaned = clean.clean_text(ex.text)
            rule_hits.update(cleaned.hits)
            words = len(cleaned.text.split())
            reason, detail = clean.document_verdict(cleaned.text, self.min_words)
        if not step("cleaning", raw_words, reason, detail, words):
            return None
        if self.scorer is not None and src.role == "legal":  # the model knows legal text only
            with clock("perplexity"):
                ppl = self.scorer.perplexity(cleaned.text)
            bad = ppl > self.max_perplexity
            if not step("perplexity", words, "perplexity" if bad else "",
                        f"perplexity {ppl:.1f} > {self.max_perplexity:g}", words):
                return None
        if self.index is not None:
            with clock("decontamination"):
                gram = self.index.match(cleaned.text)
            if not step("decontamination", words, "decontaminated" if gram else "",
                        f"shares an evaluation n-gram: {gram!r}", words):
                return None
        return {"source": src.index, "doc_id": ex.doc_id, "text": cleaned.text, "words": words}


def _read_jsonl(path: Path) -> List[dict]:
    from saul.resilience.ledger import read

    return list(read(path))


def run_prepare(cfg, out_dir: os.PathLike, rank: int = 0, world: int = 1,
                should_stop: Callable[[], bool] = lambda: False,
                beat: Callable[[int, str], None] = lambda step, phase: None,
                say: Callable[[str], None] = lambda msg: None,
                samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
                wait_timeout_s: float = 7 * 24 * 3600.0) -> Outcome:
    """Run this rank's part of the prepare pipeline for `cfg` (a RunConfig)."""
    data = cfg.data
    out = Path(out_dir).absolute()
    sources = extract.resolve_sources(data)
    files = extract.files_for(sources)
    if any(f.format == "pdf" for f in files):
        extract.require_pdftotext()
    num_shards = int(data.num_shards) or min(len(files), 4 * max(world, 1))
    inputs = pipeline_inputs(data, cfg.model.name, cfg.model.path, cfg.train.seq_len, cfg.seed, files, sources)
    found = existing_dataset(out, inputs)
    if found is not None:
        return Outcome("done" if rank == 0 else "shards_done", found, 0, num_shards)
    work = work_dir_for(out, inputs, num_shards)
    work.mkdir(parents=True, exist_ok=True)
    shards = deal_shards(files, num_shards)
    runner = _ShardRunner(data, sources, cfg.seed)
    ran = 0
    for s in range(rank, num_shards, world):
        target = shard_dir(work, s)
        if (target / DONE_MARKER).is_file():
            continue
        beat(s, "train")
        if not runner.run(shards[s], target, should_stop, rank):
            return Outcome("stopped", None, ran, num_shards)
        ran += 1
        say(f"prepare: shard {s + 1}/{num_shards} done ({len(shards[s])} files)")
    if rank != 0:
        return Outcome("shards_done", None, ran, num_shards)
    deadline = time.time() + wait_timeout_s
    while not all((shard_dir(work, s) / DONE_MARKER).is_file() for s in range(num_shards)):
        if should_stop():
            return Outcome("stopped", None, ran, num_shards)
        if time.time() > deadline:
            raise DatasetError(f"prepare: shards still unfinished after {wait_timeout_s:.0f} s in {work}")
        beat(num_shards, "train")
        time.sleep(_WAIT_POLL_S)
    beat(num_shards, "save")
    manifest = install_atomically(out, inputs, lambda tmp: _merge(tmp, cfg, inputs, sources, work,
                                                                   num_shards, samples_per_shard, say))
    shutil.rmtree(work, ignore_errors=True)
    return Outcome("done", manifest, ran, num_shards)


def _merge(tmp: Path, cfg, inputs: dict, sources, work: Path, num_shards: int,
           samples_per_shard: int, say) -> dict:
    data = cfg.data
    clock = StepClock()
    docs: List[dict] = []
    sigs: List[np.ndarray] = []
    removed: List[dict] = []
    stats: List[dict] = []
    rule_hits: Counter = Counter()
    shard_seconds: Counter = Counter()
    rank_seconds: Counter = Counter()  # phase-1 CPU seconds per rank that ran the shards
    with clock("merge_read"):
        for s in range(num_shards):
            d = shard_dir(work, s)
            marker = json.loads((d / DONE_MARKER).read_text(encoding="utf-8"))
            shard_docs = _read_jsonl(d / "docs.jsonl")
            sig = np.frombuffer((d / "signatures.u32").read_bytes(), dtype="<u4").reshape(-1, dedup.NUM_PERM)
            blob = (d / "texts.bin").read_bytes()
            offsets = np.frombuffer((d / "texts.idx").read_bytes(), dtype="<i8").tolist()
            if not (len(sig) == len(shard_docs) == marker["docs"] == len(offsets) - 1) or offsets[-1] != len(blob):
                raise DatasetError(f"{d}: documents, texts and signatures disagree; delete {work} and re-run")
            for doc, start, end in zip(shard_docs, offsets, offsets[1:]):
                doc["text"] = blob[start:end].decode("utf-8")
            docs.extend(shard_docs)
            sigs.append(sig)
            removed.extend(_read_jsonl(d / "removed.jsonl"))
            stats.extend(marker["stats"])
            rule_hits.update(marker["rule_hits"])
            shard_seconds.update(marker.get("cpu_seconds", {}))
            rank_seconds[str(marker.get("rank", 0))] += sum(marker.get("cpu_seconds", {}).values())
        sig_all = np.concatenate(sigs) if sigs else np.empty((0, dedup.NUM_PERM), dtype=np.uint32)
        order = sorted(range(len(docs)), key=lambda i: docs[i]["o"])
        docs = [docs[i] for i in order]
        sig_all = sig_all[order]
    names = [s.name for s in sources]

    def global_step(step: str, dup_of: Sequence[int], pool: List[dict], reason: str, label: str) -> List[int]:
        keep = []
        counts: Counter = Counter()
        for i, (doc, j) in enumerate(zip(pool, dup_of)):
            name = names[doc["source"]]
            counts[name, "docs_in"] += 1
            counts[name, "words_in"] += doc["words"]
            if j < 0:
                keep.append(i)
                counts[name, "docs_out"] += 1
                counts[name, "words_out"] += doc["words"]
            else:
                removed.append({"source": name, "doc_id": doc["doc_id"], "step": step,
                                "reason": reason, "detail": f"{label} of {pool[j]['doc_id']}"})
        stats.extend({"step": step, "source": name, key: value} for (name, key), value in counts.items())
        return keep

    with clock("exact_dedup"):
        keep = global_step("exact_dedup", dedup.exact_duplicate_of([dedup.exact_key(d["text"]) for d in docs]),
                           docs, "exact_duplicate", "duplicate")
        docs, sig_all = [docs[i] for i in keep], sig_all[keep]
    with clock("near_dedup"):  # buckets, clusters, filter
        keep = global_step("near_dedup", dedup.near_duplicate_of(sig_all, data.minhash_bands, data.minhash_rows),
                           docs, "near_duplicate", "near-duplicate")
        docs = [docs[i] for i in keep]
    if not docs:
        raise DatasetError("prepare: no document survived the filters (see the counts above); "
                           "check data.sources and data.max_perplexity")
    texts = [d["text"] for d in docs]
    say(f"prepare: {len(docs)} documents after dedup; tokenizing")

    tok_dir = tmp / TOKENIZER_DIR
    choice = inputs["tokenizer_choice"]
    tokenizer_info: Dict = {"kind": choice}
    with clock("tokenizer_setup"):  # a fixed cost: train the local BPE, or convert and check Mixtral's
        if choice == "local-bpe":
            train_tokenizer(texts, int(data.tokenizer_vocab_size), tok_dir)
        elif choice in model_tokenizer.MISTRAL_FILES:
            _, compared = model_tokenizer.mistral_directory(choice, tok_dir, texts)
            tokenizer_info["parity_checked_texts"] = compared
        else:
            model_tokenizer.copy_directory(choice, tok_dir)
            tokenizer_info["kind"] = "directory"
        described = describe_tokenizer(backend_tokenizer(tok_dir))
        backend = described.backend
    tokenizer_info["vocab_size"] = described.vocab_size
    ids: List[List[int]] = []
    with clock("tokenization"):
        for start in range(0, len(texts), _ENCODE_CHUNK):
            ids.extend(enc.ids for enc in backend.encode_batch_fast(texts[start:start + _ENCODE_CHUNK],
                                                                    add_special_tokens=False))
    doc_tokens = [len(x) + 1 for x in ids]  # + the EOS the packer appends

    with clock("mixture"):
        copies, shares = mixture.plan_mixture(names, [s.weight for s in sources], [d["source"] for d in docs],
                                              doc_tokens, cfg.seed)
        packed: List[List[int]] = []
        kept_audit: List[dict] = []
        per_source_tokens: Counter = Counter()
        mix_counts: Counter = Counter()
        for doc, tokens, n, row_ids in zip(docs, doc_tokens, copies, ids):
            name = names[doc["source"]]
            for key, value in (("docs_in", 1), ("words_in", doc["words"]), ("tokens_in", tokens),
                               ("docs_out", int(n > 0)), ("words_out", doc["words"] * n),
                               ("tokens_out", tokens * n)):
                mix_counts[name, key] += value
            if n == 0:
                removed.append({"source": name, "doc_id": doc["doc_id"], "step": "mixture", "reason": "mixture",
                                "detail": "down-sampled to the source's share"})
                continue
            packed.extend([row_ids] * n)
            per_source_tokens[name] += tokens * n
            kept_audit.append({"source": name, "doc_id": doc["doc_id"], "tokens": tokens * n, "copies": n})
        stats.extend({"step": "mixture", "source": name, key: value} for (name, key), value in mix_counts.items())

    summary = {
        "mixture": mixture.shares_table(shares),
        "dedup": {"num_perm": dedup.NUM_PERM, "ngram": data.minhash_ngram, "bands": data.minhash_bands,
                  "rows": data.minhash_rows,
                  "recall_curve": dedup.recall_curve(data.minhash_bands, data.minhash_rows)},
        "tokenizer": tokenizer_info,
        "perplexity": {"model": data.kenlm_model, "max": data.max_perplexity} if data.kenlm_model else None,
        "decontamination": {"paths": list(data.decontaminate)} if data.decontaminate else None,
        "cleaning_rule_hits": dict(rule_hits),
    }
    with clock("audit"):
        funnel = audit.write_audit(tmp / "audit", removed, kept_audit, stats, summary)
    metadata = {"inputs": inputs, "tokenizer_dir": TOKENIZER_DIR, "tokenizer": tokenizer_info,
                "source_tokens": dict(per_source_tokens), "steps": funnel, "summary": summary,
                "removed_by_reason": dict(Counter(r["reason"] for r in removed)), "audit": "audit"}
    say(f"prepare: packing {sum(per_source_tokens.values())} tokens")
    with clock("packing"):
        manifest = pack_documents(packed, tokenizer=described, seq_len=int(cfg.train.seq_len), out_dir=tmp,
                                  seed=int(cfg.seed), samples_per_shard=samples_per_shard, metadata=metadata)
    # CPU seconds per step, the shards' summed over ranks. Provenance only (the fingerprint leaves
    # metadata out), so the manifest is rewritten with them: still inside the temporary directory.
    manifest["metadata"]["cpu_seconds"] = {k: round(v, 3) for k, v in (shard_seconds + clock.seconds).items()}
    manifest["metadata"]["shard_cpu_seconds_by_rank"] = {k: round(v, 3) for k, v in sorted(rank_seconds.items())}
    write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return manifest
