"""Data for the compute side: raw corpora -> cleaned, filtered, deduplicated, mixed, tokenized, packed.

The real prepare pipeline (stage=prepare with data.sources), in its order:
    pipeline.py        the stage: pieces per rank, then the cross-piece steps and the merge on rank 0
    pieces.py          the unit of work and of resume: ~data.piece_mb of input (files grouped, dumps cut)
    extract.py         step 1: find a source's files, turn each into documents (pdf_text.py for PDFs,
                       run in the rank's extraction worker, pdf_worker.py: per-file timeout, crash isolation)
    clean.py           step 2: NFKC, page/line numbers, headers, hyphenation, repetition rules
    perplexity.py      step 3: the KenLM filter and building its model with lmplz
    dedup.py           step 4: exact and MinHash-LSH near-duplicates (buckets.py: bands spread over ranks)
    decontaminate.py   step 5: 13-grams shared with evaluation data
    mixture.py         step 6: sample the sources to their token shares
    model_tokenizer.py step 7: the model's own tokenizer (Mixtral's SentencePiece, model.path's, local BPE)
    audit.py           removed.jsonl / kept.jsonl / funnel report
    raw_corpus.py      realistic raw inputs with known answers (demo, tests, benchmark)
The synthetic demo path and what every training stage reads:
    synthetic.py       deterministic legal-style documents (contracts, statutes, opinions)
    tokenizer.py       train / load / fingerprint the byte-level BPE tokenizer
    packing.py         documents -> fixed-length token samples in shards + manifest.json
    dataset.py         PackedDataset: validated, memory-mapped, read-only view of a packed directory
    sampler.py         deterministic global order of samples, global batches, per-rank slices
    prepare.py         the synthetic prepare body, idempotent and crash-safe
    atomic.py          write-temp-then-rename helpers every writer here uses

Everything here is torch-free (numpy + tokenizers; transformers only to load the tokenizer for
trl), so the login side and the tests can import it cheaply.
"""
