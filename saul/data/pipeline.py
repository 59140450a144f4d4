"""The real prepare stage: data.sources -> cleaned, filtered, deduplicated, mixed, packed dataset.

Three phases, on the stage's N ranks (no process group: ranks meet through the filesystem):
  1. per piece (about data.piece_mb of input: small files grouped, a big JSONL cut into byte
     ranges at line starts, a big Parquet file into row groups; saul.data.pieces; dealt onto
     ranks by size): extraction -> cleaning -> perplexity -> decontamination -> MinHash
     signatures and exact-dedup keys. A piece's results go to <work>/piece-NNNNN/ and its
     `done.json` marker (counters, record counts of its parts, CPU seconds per step) is written
     last, so a killed or requeued prepare redoes only the pieces without one, on any rank count.
  2. once every marker is there, on every rank: near-dedup buckets, band by band (rank r takes
     bands r, r+N, ...): each band's clusters as a spanning forest in <work>/bands/band-BBB.i8.
  3. on rank 0, once every band is there: exact dedup, clusters and filter over the bands'
     forests, the model's tokenizer, tokenization, mixture, packing and the audit files, all in a
     temporary directory renamed onto the dataset path (saul.data.prepare).
Records are numbered in their whole file at the merge (a part counts its records; the part's
first record number is the sum over the file's earlier parts), and documents go back to input
order, so 1 or N ranks and any piece size give the same dataset and audit. The work directory
is named after the inputs' fingerprint and the piece size; rank 0 removes any other work
directory of the same dataset (other inputs or another piece size: nothing there can be used).
Every step's CPU seconds (with pdftotext's) go into the manifest's metadata, per step
(`cpu_seconds`) and per rank for phases 1 and 2, which is what benchmarks/data_pipeline.py
reads. Torch-free.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from saul.data import audit, clean, dedup, extract, mixture, model_tokenizer, pdf_worker
from saul.data.atomic import write_bytes_atomic, write_json_atomic
from saul.data.buckets import Survivors, band_file, bands_of_rank, run_bands
from saul.data.dataset import DatasetError
from saul.data.packing import DEFAULT_SAMPLES_PER_SHARD, FORMAT_VERSION, MANIFEST_FILE, pack_documents
from saul.data.pieces import DONE_MARKER, Piece, deal, piece_bytes, piece_dir, plan_pieces
from saul.data.prepare import TOKENIZER_DIR, existing_dataset, install_atomically
from saul.data.tokenizer import backend_tokenizer, describe_tokenizer, train_tokenizer

PIPELINE_VERSION = 3  # 3: pieces of files, per-source perplexity, tokens in every funnel step
_ENCODE_CHUNK = 512
_WAIT_POLL_S = 1.0
_PHASE1_STEPS = ("extraction", "cleaning", "perplexity", "decontamination")


def cpu_seconds() -> float:
    """CPU time of this process, its finished children and its live PDF worker (Poppler's work, as
    it last reported it): what a step costs a core."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system + pdf_worker.live_cpu_seconds()


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
    shards_run: int = 0  # pieces run by this rank in this call
    shards_total: int = 0  # pieces in the plan


def _file_id(path: Path) -> Dict:
    st = path.stat()
    return {"path": str(path.absolute()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def pipeline_inputs(cfg_data, model_name: str, model_path: str, seq_len: int, seed: int,
                    files: Sequence[extract.InputFile], sources: Sequence[extract.Source]) -> dict:
    """Everything that decides the dataset's bytes (a dataset made from equal inputs is reused).
    Neither the rank count nor the piece size is in it: documents are merged in input order, so
    any split gives the same dataset, and a re-run on another rank count reuses it."""
    settings = {k: cfg_data[k] for k in ("tokenizer", "max_perplexity", "min_words", "minhash_ngram",
                                         "minhash_bands", "minhash_rows", "tokenizer_vocab_size",
                                         "num_documents")}
    return {
        "pipeline_version": PIPELINE_VERSION,
        "format_version": FORMAT_VERSION,
        "sources": [{"name": s.name, "root": str(s.root.absolute()), "pattern": s.pattern, "role": s.role,
                     "weight": s.weight, "format": s.format, "text_field": s.text_field,
                     "perplexity": s.perplexity} for s in sources],
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


def _work_prefix(out: Path) -> str:
    return f".{out.name}.work-"


def work_dir_for(out: Path, inputs: dict, size_limit: int) -> Path:
    """Pieces of other inputs or another piece size are never mixed: both are in the name. The
    rank count is not: pieces do not depend on it."""
    return out.with_name(_work_prefix(out) + fingerprint({**inputs, "piece_bytes": size_limit})[:16])


def remove_stale_work(out: Path, keep: Path) -> List[Path]:
    """Other work directories of this dataset: made for other inputs or another piece size (or by
    an older pipeline), no piece of theirs can be part of this build."""
    stale = [p for p in out.parent.glob(_work_prefix(out) + "*") if p.is_dir() and p != keep]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


class _PieceRunner:
    """Phase 1 for one piece; all the per-document steps with their counters."""

    def __init__(self, cfg_data, sources: Sequence[extract.Source], files: Sequence[extract.InputFile], seed: int):
        from saul.data.decontaminate import ContaminationIndex
        from saul.data.perplexity import PerplexityScorer

        self.cfg, self.sources, self.files, self.seed = cfg_data, sources, files, seed
        # Plain values: an OmegaConf attribute read costs ~0.1 ms, several per document.
        self.min_words, self.max_perplexity = int(cfg_data.min_words), float(cfg_data.max_perplexity)
        self.num_documents = int(cfg_data.num_documents)
        self.pdf_timeout_s = float(cfg_data.pdf_timeout_s)
        self.clock = StepClock()
        with self.clock("filter_setup"):  # once per rank: load the KenLM model, index the eval data
            if any(f.format == "pdf" for f in files):  # a fixed cost, not the first PDF's
                extract.start_pdf_worker()
            self.scorer = PerplexityScorer(cfg_data.kenlm_model) if cfg_data.kenlm_model else None
            self.index = ContaminationIndex.from_paths(list(cfg_data.decontaminate))
            self.signer = dedup.Signer(cfg_data.minhash_ngram)

    def run(self, piece: Piece, out: Path, should_stop: Callable[[], bool], rank: int = 0) -> bool:
        kept, removed, dropped = [], [], []
        stats: Counter = Counter()
        rule_hits: Counter = Counter()
        records = []  # [file, part start, records in the part]: numbers records in their whole file
        clock = self.clock
        for part in piece.parts:
            if should_stop():
                return False
            f = self.files[part.file]
            src = self.sources[f.source]
            reader = extract.extract(f, src.text_field, self.num_documents, self.seed,
                                     None if part.start == 0 and part.end is None else (part.start, part.end),
                                     self.pdf_timeout_s)
            seq = 0
            while True:
                try:
                    with clock("extraction"):
                        ex = next(reader)
                except StopIteration as done:
                    records.append([part.file, part.start, int(done.value or 0)])
                    break
                where = {"o": [part.file, part.start, seq], "r": ex.record}
                doc = self._one(src, ex, where, stats, rule_hits, removed, dropped, clock)
                if doc is not None:
                    kept.append(doc)
                seq += 1
        with clock("minhash_signatures"):  # one batched numpy product per ~4k shingles
            sig = self.signer.signatures(d["text"] for d in kept)
        with clock("exact_dedup"):  # the hashes here, the comparison at the merge
            exact = b"".join(bytes.fromhex(dedup.exact_key(d["text"])) for d in kept)
        out.mkdir(parents=True, exist_ok=True)
        # Texts go apart from their JSON records: raw UTF-8 plus offsets reads back ~10x faster
        # than JSON strings full of escaped line breaks.
        _write_texts(out / "texts", [d.pop("text") for d in kept])
        _write_texts(out / "dropped", dropped)  # removed documents' cleaned text: their tokens in the funnel
        write_bytes_atomic(out / "order.i8", np.array([d["o"] for d in kept], dtype="<i8").reshape(-1, 3).tobytes(),
                           sync_dir=False)
        write_bytes_atomic(out / "exact.bin", exact, sync_dir=False)
        write_bytes_atomic(out / "docs.jsonl", audit.jsonl_bytes(kept), sync_dir=False)
        write_bytes_atomic(out / "removed.jsonl", audit.jsonl_bytes(removed), sync_dir=False)
        # Permutation-major: a bucket task reads its band's rows of every piece as one slice.
        write_bytes_atomic(out / "signatures.u32", np.ascontiguousarray(sig.T).astype("<u4").tobytes(),
                           sync_dir=False)
        rows = [{"step": step, "source": source, key: value}
                for (step, source, key), value in stats.items()]
        write_json_atomic(out / DONE_MARKER, {"docs": len(kept), "stats": rows, "rule_hits": dict(rule_hits),
                                              "records": records, "cpu_seconds": dict(clock.seconds),
                                              "rank": rank})
        clock.seconds.clear()
        return True

    def _one(self, src, ex, where: dict, stats: Counter, rule_hits: Counter, removed: list, dropped: list,
             clock: StepClock) -> Optional[dict]:
        name = src.name
        entered: List[str] = []  # the steps this document went through: its tokens in the funnel

        def step(step_name: str, words_in: int, reason: str = "", detail: str = "", words_out: int = 0,
                 text: Optional[str] = None):
            entered.append(step_name)
            stats[(step_name, name, "docs_in")] += 1
            stats[(step_name, name, "words_in")] += words_in
            if reason:
                t = -1
                if text:
                    t = len(dropped)
                    dropped.append(text)
                removed.append({"source": name, "doc_id": ex.doc_id, "step": step_name, "reason": reason,
                                "detail": detail, **where, "s": entered, "t": t})
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
        if not step("cleaning", raw_words, reason, detail, words, cleaned.text):
            return None
        if self.scorer is not None and src.perplexity:
            with clock("perplexity"):
                ppl = self.scorer.perplexity(cleaned.text)
            bad = ppl > self.max_perplexity
            if not step("perplexity", words, "perplexity" if bad else "",
                        f"perplexity {ppl:.1f} > {self.max_perplexity:g}", words, cleaned.text):
                return None
        if self.index is not None:
            with clock("decontamination"):
                gram = self.index.match(cleaned.text)
            if not step("decontamination", words, "decontaminated" if gram else "",
                        f"shares an evaluation n-gram: {gram!r}", words, cleaned.text):
                return None
        return {"source": src.index, "doc_id": ex.doc_id, "text": cleaned.text, "words": words, **where,
                "s": entered}


def _write_texts(stem: Path, texts: Sequence[str]) -> None:
    blobs = [t.encode("utf-8") for t in texts]
    offsets = np.concatenate(([0], np.cumsum([len(b) for b in blobs], dtype=np.int64)))
    write_bytes_atomic(stem.with_suffix(".bin"), b"".join(blobs), sync_dir=False)
    write_bytes_atomic(stem.with_suffix(".idx"), offsets.astype("<i8").tobytes(), sync_dir=False)


def _read_texts(stem: Path) -> List[str]:
    blob = stem.with_suffix(".bin").read_bytes()
    offsets = np.frombuffer(stem.with_suffix(".idx").read_bytes(), dtype="<i8").tolist()
    if offsets[-1] != len(blob):
        raise DatasetError(f"{stem}: texts and offsets disagree; delete {stem.parent.parent} and re-run")
    return [blob[a:b].decode("utf-8") for a, b in zip(offsets, offsets[1:])]


def _read_jsonl(path: Path) -> List[dict]:
    from saul.resilience.ledger import read

    return list(read(path))


def _wait_for(paths: Callable[[], bool], what: str, out: Path, inputs: dict, should_stop, beat, step: int,
              timeout_s: float) -> str:
    """Poll until `paths()` holds: "ready", "stopped", or "built" (another attempt finished the
    dataset meanwhile)."""
    deadline = time.time() + timeout_s
    while not paths():
        if should_stop():
            return "stopped"
        if existing_dataset(out, inputs) is not None:
            return "built"
        if time.time() > deadline:
            raise DatasetError(f"prepare: {what} still unfinished after {timeout_s:.0f} s")
        beat(step, "train")
        time.sleep(_WAIT_POLL_S)
    return "ready"


def run_prepare(cfg, out_dir: os.PathLike, rank: int = 0, world: int = 1,
                should_stop: Callable[[], bool] = lambda: False,
                beat: Callable[[int, str], None] = lambda step, phase: None,
                say: Callable[[str], None] = lambda msg: None,
                samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
                wait_timeout_s: float = 7 * 24 * 3600.0) -> Outcome:
    """Run this rank's part of the prepare pipeline for `cfg` (a RunConfig)."""
    data = cfg.data
    out = Path(out_dir).absolute()
    world = max(world, 1)
    sources = extract.resolve_sources(data)
    files = extract.files_for(sources)
    if any(f.format == "pdf" for f in files):
        extract.require_pdftotext()
    size_limit = piece_bytes(float(data.piece_mb))
    pieces = plan_pieces(files, size_limit)
    inputs = pipeline_inputs(data, cfg.model.name, cfg.model.path, cfg.train.seq_len, cfg.seed, files, sources)
    work = work_dir_for(out, inputs, size_limit)
    if rank == 0:  # also when the dataset is there: an aborted build for other inputs leaves one
        for stale in remove_stale_work(out, work):
            say(f"prepare: removed {stale.name} (made for other inputs or another data.piece_mb)")
    found = existing_dataset(out, inputs)
    if found is not None:
        return Outcome("done" if rank == 0 else "shards_done", found, 0, len(pieces))
    work.mkdir(parents=True, exist_ok=True)
    runner = _PieceRunner(data, sources, files, cfg.seed)
    ran = 0
    for p in deal(pieces, world)[rank]:
        target = piece_dir(work, p)
        if (target / DONE_MARKER).is_file():
            continue
        beat(p, "train")
        if not runner.run(pieces[p], target, should_stop, rank):
            return Outcome("stopped", None, ran, len(pieces))
        ran += 1
        say(f"prepare: piece {p + 1}/{len(pieces)} done ({len(pieces[p].parts)} parts)")
    extract.stop_pdf_worker()  # this rank's last PDF is behind it (it also ends at exit, or with the rank)
    wait = _wait_for(lambda: all((piece_dir(work, p) / DONE_MARKER).is_file() for p in range(len(pieces))),
                     "pieces", out, inputs, should_stop, beat, len(pieces), wait_timeout_s)
    if wait != "ready":
        return Outcome("stopped" if wait == "stopped" else "shards_done", existing_dataset(out, inputs),
                       ran, len(pieces))
    bands, rows = int(data.minhash_bands), int(data.minhash_rows)
    t0 = cpu_seconds()
    done_bands = run_bands(work, len(pieces), bands, rows, bands_of_rank(rank, world, bands), should_stop,
                           lambda: beat(len(pieces), "train"))
    band_seconds = cpu_seconds() - t0
    if done_bands:  # provenance: how many bands this rank ran, in how many CPU seconds (over attempts)
        mark = work / "bands" / f"rank-{rank:05d}.json"
        before = json.loads(mark.read_text(encoding="utf-8")) if mark.is_file() else {"bands": 0, "cpu_seconds": 0.0}
        write_json_atomic(mark, {"rank": rank, "bands": before["bands"] + done_bands,
                                 "cpu_seconds": before["cpu_seconds"] + band_seconds}, sync_dir=False)
    if should_stop():
        return Outcome("stopped", None, ran, len(pieces))
    if rank != 0:
        return Outcome("shards_done", None, ran, len(pieces))
    wait = _wait_for(lambda: all(band_file(work, b).is_file() for b in range(bands)), "near-dedup bands",
                     out, inputs, should_stop, beat, len(pieces), wait_timeout_s)
    if wait != "ready":
        return Outcome("stopped", None, ran, len(pieces)) if wait == "stopped" else \
            Outcome("done", existing_dataset(out, inputs), ran, len(pieces))
    beat(len(pieces), "save")
    manifest = install_atomically(out, inputs, lambda tmp: _merge(tmp, cfg, inputs, sources, files, work,
                                                                   len(pieces), samples_per_shard, say))
    shutil.rmtree(work, ignore_errors=True)
    return Outcome("done", manifest, ran, len(pieces))


def _record_bases(markers: Sequence[dict]) -> Dict[tuple, int]:
    """(file, part start) -> the number of the part's first record in its whole file."""
    by_file: Dict[int, List[tuple]] = {}
    for marker in markers:
        for f, start, count in marker["records"]:
            by_file.setdefault(f, []).append((start, count))
    bases = {}
    for f, parts in by_file.items():
        total = 0
        for start, count in sorted(parts):
            bases[f, start] = total
            total += count
    return bases


def _whole_file_ids(entries: List[dict], files: Sequence[extract.InputFile], bases: Dict[tuple, int]) -> None:
    """Record doc_ids numbered within a part become `relpath#N` with N the record's position in the file."""
    for e in entries:
        if e.get("r") is not None:
            f, start, _ = e["o"]
            e["doc_id"] = f"{files[f].rel}#{bases[f, start] + e['r']}"


def _merge(tmp: Path, cfg, inputs: dict, sources, files, work: Path, num_pieces: int,
           samples_per_shard: int, say) -> dict:
    data = cfg.data
    clock = StepClock()
    docs: List[dict] = []
    removed: List[dict] = []  # phase 1's, then each later step's
    dropped_texts: List[str] = []
    markers: List[dict] = []
    stats: List[dict] = []
    rule_hits: Counter = Counter()
    piece_seconds: Counter = Counter()
    rank_seconds: Counter = Counter()  # phase-1 and bucket CPU seconds per rank
    with clock("merge_read"):
        for p in range(num_pieces):
            d = piece_dir(work, p)
            marker = json.loads((d / DONE_MARKER).read_text(encoding="utf-8"))
            piece_docs = _read_jsonl(d / "docs.jsonl")
            texts = _read_texts(d / "texts")
            if not (len(texts) == len(piece_docs) == marker["docs"]):
                raise DatasetError(f"{d}: documents and texts disagree; delete {work} and re-run")
            for doc, text in zip(piece_docs, texts):
                doc["text"] = text
            docs.extend(piece_docs)
            base = len(dropped_texts)
            dropped_texts.extend(_read_texts(d / "dropped"))
            for r in _read_jsonl(d / "removed.jsonl"):
                r["t"] = base + r["t"] if r["t"] >= 0 else -1
                removed.append(r)
            markers.append(marker)
            stats.extend(marker["stats"])
            rule_hits.update(marker["rule_hits"])
            piece_seconds.update(marker.get("cpu_seconds", {}))
            rank_seconds[str(marker.get("rank", 0))] += sum(marker.get("cpu_seconds", {}).values())
        bands_by_rank: Dict[str, int] = {}
        for f in sorted((work / "bands").glob("rank-*.json")):
            band = json.loads(f.read_text(encoding="utf-8"))
            rank_seconds[str(band["rank"])] += band["cpu_seconds"]
            piece_seconds["near_dedup_buckets"] += band["cpu_seconds"]
            bands_by_rank[str(band["rank"])] = band["bands"]
        bases = _record_bases(markers)
        _whole_file_ids(docs, files, bases)
        _whole_file_ids(removed, files, bases)
        removed.sort(key=lambda r: r["o"])  # input order, whatever the split
        survivors = Survivors(work, num_pieces)
        docs = [docs[i] for i in survivors.perm]  # input order
    names = [s.name for s in sources]

    def global_step(step: str, dup_of: Sequence[int], pool: List[dict], reason: str, label: str) -> List[int]:
        keep = []
        counts: Counter = Counter()
        for i, (doc, j) in enumerate(zip(pool, dup_of)):
            name = names[doc["source"]]
            doc["s"] = doc["s"] + [step]
            counts[name, "docs_in"] += 1
            counts[name, "words_in"] += doc["words"]
            if j < 0:
                keep.append(i)
                counts[name, "docs_out"] += 1
                counts[name, "words_out"] += doc["words"]
            else:
                removed.append({"source": name, "doc_id": doc["doc_id"], "step": step, "reason": reason,
                                "detail": f"{label} of {pool[j]['doc_id']}", "s": doc["s"], "text": doc["text"]})
        stats.extend({"step": step, "source": name, key: value} for (name, key), value in counts.items())
        return keep

    with clock("exact_dedup"):
        keep = global_step("exact_dedup", survivors.exact_dup_of.tolist(), docs, "exact_duplicate", "duplicate")
        docs = [docs[i] for i in keep]
    with clock("near_dedup"):  # clusters and filter over the bands' forests (buckets: phase 2)
        edges = [np.frombuffer(band_file(work, b).read_bytes(), dtype="<i8").reshape(-1, 2)
                 for b in range(int(data.minhash_bands))]
        keep = global_step("near_dedup", dedup.clusters_from_edges(len(docs), edges), docs,
                           "near_duplicate", "near-duplicate")
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

    def encode(batch: Sequence[str]) -> List[List[int]]:
        ids: List[List[int]] = []
        for start in range(0, len(batch), _ENCODE_CHUNK):
            ids.extend(enc.ids for enc in backend.encode_batch_fast(list(batch[start:start + _ENCODE_CHUNK]),
                                                                    add_special_tokens=False))
        return ids

    with clock("tokenization"):
        ids = encode(texts)
    doc_tokens = [len(x) + 1 for x in ids]  # + the EOS the packer appends
    with clock("funnel_tokens"):  # the removed documents' tokens, for the funnel (never packed)
        removed_texts = [r.pop("text", None) or (dropped_texts[r["t"]] if r.get("t", -1) >= 0 else "")
                         for r in removed]
        removed_tokens = [len(x) + 1 if text else 0 for x, text in zip(encode(removed_texts), removed_texts)]
        stats.extend(_token_stats(names, docs, doc_tokens, removed, removed_tokens))

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
    removed = [{k: r[k] for k in ("source", "doc_id", "step", "reason", "detail")} for r in removed]

    summary = {
        "mixture": mixture.shares_table(shares),
        "dedup": {"num_perm": dedup.NUM_PERM, "ngram": data.minhash_ngram, "bands": data.minhash_bands,
                  "rows": data.minhash_rows,
                  "recall_curve": dedup.recall_curve(data.minhash_bands, data.minhash_rows)},
        "tokenizer": tokenizer_info,
        "perplexity": {"model": data.kenlm_model, "max": data.max_perplexity,
                       "sources": [s.name for s in sources if s.perplexity]} if data.kenlm_model else None,
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
    # CPU seconds per step, the pieces' and bands' summed over ranks. Provenance only (the
    # fingerprint leaves metadata out), so the manifest is rewritten with them: still inside the
    # temporary directory.
    manifest["metadata"]["cpu_seconds"] = {k: round(v, 3) for k, v in (piece_seconds + clock.seconds).items()}
    manifest["metadata"]["shard_cpu_seconds_by_rank"] = {k: round(v, 3) for k, v in sorted(rank_seconds.items())}
    manifest["metadata"]["near_dedup_bands_by_rank"] = bands_by_rank
    write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return manifest


def _token_stats(names: Sequence[str], kept: Sequence[dict], kept_tokens: Sequence[int],
                 removed: Sequence[dict], removed_tokens: Sequence[int]) -> List[dict]:
    """tokens_in / tokens_out of every step before the mixture, per source: each document's tokens
    (its cleaned text in the model's tokenizer, + EOS; 0 without text) go into every step it
    entered (`s`), and out of every step it passed."""
    counts: Counter = Counter()
    for doc, tokens in zip(kept, kept_tokens):
        for step in doc["s"]:
            counts[step, names[doc["source"]], "tokens_in"] += tokens
            counts[step, names[doc["source"]], "tokens_out"] += tokens
    for r, tokens in zip(removed, removed_tokens):
        for k, step in enumerate(r["s"]):
            counts[step, r["source"], "tokens_in"] += tokens
            if k < len(r["s"]) - 1:
                counts[step, r["source"], "tokens_out"] += tokens
    return [{"step": step, "source": source, key: value} for (step, source, key), value in counts.items()]
