"""Prepare-pipeline throughput, measured side by side in one run (one core, one rank).

Prints documents/s and tokens/s for each per-document step and for the whole pipeline on the
raw corpus of saul.data.raw_corpus, next to the ceiling: HF tokenizers' encode_batch on the same
cleaned text. Targets (issue 9): whole pipeline >= 0.3x the tokenizer; MinHash signatures
>= 300 documents/s with 256 permutations on 600-word documents.
Usage: python benchmarks/data_pipeline.py [--docs 96]
"""
import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saul.config.compose import compose  # noqa: E402
from saul.data import clean, dedup  # noqa: E402
from saul.data.extract import extract, files_for, resolve_sources  # noqa: E402
from saul.data.pipeline import run_prepare  # noqa: E402
from saul.data.raw_corpus import write_raw_corpus  # noqa: E402
from saul.data.tokenizer import train_tokenizer  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=96)
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers on one core, like every other step here
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "raw"
        write_raw_corpus(root, seed=0, num_docs=args.docs)
        ov = ["stage=prepare", "model=tiny-mixtral", "site=local", f"data.sources=[{{path:{root}/legal}}]"]
        if (root / "legal.arpa").exists():
            ov.append(f"data.kenlm_model={root}/legal.arpa")
        cfg = compose(ov, env={}).cfg
        files = files_for(resolve_sources(cfg.data))
        docs, t_extract = timed(lambda: [e for f in files for e in extract(f) if not e.skip])
        cleaned, t_clean = timed(lambda: [clean.clean_text(e.text).text for e in docs])
        texts = [t for t in cleaned if t]
        tok_dir = train_tokenizer(texts, 1000, Path(tmp) / "tok")
        from saul.data.tokenizer import backend_tokenizer

        backend = backend_tokenizer(tok_dir)
        enc, t_tok = timed(lambda: backend.encode_batch(texts, add_special_tokens=False))
        tokens = sum(len(e.ids) for e in enc)
        signer = dedup.Signer()
        _, t_sig = timed(lambda: signer.signatures(texts))
        rng = random.Random(0)
        words = [f"w{i}" for i in range(20000)]
        six = [" ".join(rng.choice(words) for _ in range(600)) for _ in range(300)]
        _, t_six = timed(lambda: signer.signatures(six))
        _, t_all = timed(lambda: run_prepare(cfg, Path(tmp) / "out"))
        n = len(texts)
        print(f"corpus: {len(files)} files, {n} documents, {tokens} tokens (local BPE)")
        for name, t in (("extraction", t_extract), ("cleaning", t_clean), ("minhash signatures", t_sig),
                        ("tokenizer encode_batch (ceiling)", t_tok), ("whole pipeline", t_all)):
            print(f"{name:34s} {n / t:9.1f} docs/s  {tokens / t:11.0f} tokens/s")
        print(f"whole pipeline / tokenizer: {t_tok / t_all:.3f}x (target >= 0.3x)")
        print(f"MinHash on 600-word documents, 256 permutations: {300 / t_six:.0f} docs/s (target >= 300)")
        print("recall curve 42x6:", ", ".join(f"J={j:.1f}:{p:.3f}" for j, p in dedup.recall_curve(42, 6)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
