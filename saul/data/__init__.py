"""Data for the compute side: synthetic legal corpus -> byte-level BPE tokenizer -> packed shards.

    synthetic.py   deterministic legal-style documents (contracts, statutes, opinions)
    tokenizer.py   train / load / fingerprint the byte-level BPE tokenizer
    packing.py     documents -> fixed-length token samples in shards + manifest.json
    dataset.py     PackedDataset: validated, memory-mapped, read-only view of a packed directory
    sampler.py     deterministic global order of samples, global batches, per-rank slices
    prepare.py     the `prepare` stage body: all of the above, idempotent and crash-safe
    atomic.py      write-temp-then-rename helpers every writer here uses

Everything here is torch-free (numpy + tokenizers; transformers only to load the tokenizer for
trl), so the login side and the tests can import it cheaply.
"""
