"""Extraction, cleaning, dedup, decontamination, mixture and the Mixtral tokenizer on known inputs."""
import json
import random

import numpy as np
import pytest

from saul.config.schema import DataConfig, SourceConfig
from saul.data import clean, dedup, mixture
from saul.data.dataset import DatasetError
from saul.data.decontaminate import ContaminationIndex
from saul.data.extract import InputFile, extract, resolve_sources
from saul.data.synthetic import generate_corpus

from tests.data_fixtures import LEGALBENCH, raw_corpus  # noqa: F401 (fixture)
LEGALBENCH = str(LEGALBENCH)


def test_pdf_artefacts_removed_and_nothing_else(raw_corpus):
    root, planted = raw_corpus
    for name, original in planted["pdf_sources"].items():
        ex = next(extract(InputFile(0, root / "legal/pdf" / name, name, "pdf", 0, 0)))
        assert "Page 1 of" in ex.text and "UNITED STATES DISTRICT COURT" in ex.text  # artefacts were there
        cleaned = clean.clean_text(ex.text)
        assert cleaned.text.split() == original.split(), name  # every word back, in order, nothing added
    transcript = clean.clean_text(next(extract(InputFile(0, root / "legal/pdf/opinion-00.pdf", "x", "pdf", 0, 0))).text)
    assert transcript.hits["line_numbers"] >= 20


def test_rules_on_known_text():
    text = ("<p>The parties agree that the obli-\ngation survives termination &amp; expiry.</p>\n"
            "12\nThe court held that the\nclause was void.\n" + "." * 20 + " Section 2\n\n\n\nEnd of the ﬁle.")
    out = clean.clean_text(text)
    assert out.text == ("The parties agree that the obligation survives termination & expiry.\n"
                        "The court held that the clause was void.\nSection 2\n\nEnd of the file.")
    for rule in ("html_tags", "hyphenation", "page_numbers", "broken_lines", "repeated_chars", "nfkc"):
        assert out.hits[rule] >= 1, rule


def test_document_verdicts():
    good = " ".join(generate_corpus(1, 3)[0].text.split()[:120])
    assert clean.document_verdict(good, 50) == ("", "")
    assert clean.document_verdict("", 50)[0] == "empty"
    assert clean.document_verdict("too short", 50)[0] == "rule"
    assert clean.document_verdict(" ".join(["1234 5678"] * 60), 50)[0] == "rule"
    assert clean.document_verdict(" ".join(["buy cheap watches online now"] * 40), 50)[0] == "repetition"


def test_bad_files_are_counted_skips(raw_corpus, tmp_path):
    root, _ = raw_corpus
    cases = {"legal/pdf/corrupt.pdf": "corrupt", "legal/dumps/binary.txt": "binary",
             "legal/dumps/latin1.txt": "not UTF-8"}
    for rel, words in cases.items():
        fmt = "pdf" if rel.endswith(".pdf") else "txt"
        [ex] = list(extract(InputFile(0, root / rel, rel, fmt, 0, 0)))
        assert ex.skip == "extraction_failed" and words in ex.detail, (rel, ex.detail)
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"PAR1 not really")
    [ex] = list(extract(InputFile(0, garbage, "g.parquet", "parquet", 0, 0)))
    assert ex.skip == "extraction_failed" and "Parquet" in ex.detail
    jsonl = [e for e in extract(InputFile(0, root / "legal/dumps/dump.jsonl", "dump.jsonl", "jsonl", 0, 0)) if e.skip]
    assert [e.detail.split(":")[0] for e in jsonl] == ["bad JSON", "no field 'text' (set the source's text_field)"]


def test_html_boilerplate_dropped(raw_corpus):
    root, _ = raw_corpus
    path = sorted((root / "legal/html").iterdir())[0]
    ex = next(extract(InputFile(0, path, path.name, "html", 0, 0)))
    assert not ex.skip and "cookies" not in ex.text and "All rights reserved" not in ex.text
    assert len(ex.text.split()) > 50


def test_source_errors_are_one_line(tmp_path):
    def cfg(**kw):
        return DataConfig(sources=[SourceConfig(**kw)])

    with pytest.raises(DatasetError, match="does not exist"):
        resolve_sources(cfg(path=str(tmp_path / "missing")))
    with pytest.raises(DatasetError, match="format='docx' is unknown"):
        resolve_sources(cfg(path=str(tmp_path), format="docx"))
    from saul.data.extract import list_files

    with pytest.raises(DatasetError, match="no files in"):
        list_files(resolve_sources(cfg(path=str(tmp_path)))[0])
    with pytest.raises(DatasetError, match="at least one"):
        resolve_sources(DataConfig(sources=[SourceConfig(path=str(tmp_path), weight=0.5)]))


def _planted_pairs(n_pairs, rng, keep_words):
    """Pairs of 600-word documents sharing about `keep_words` of their words (a known similarity)."""
    vocab = [f"w{i}" for i in range(5000)]
    docs, pairs = [], []
    for _ in range(n_pairs):
        a = [rng.choice(vocab) for _ in range(600)]
        b = list(a)
        for i in rng.sample(range(600), int(600 * (1 - keep_words))):
            b[i] = rng.choice(vocab)
        pairs.append((len(docs), len(docs) + 1))
        docs += [" ".join(a), " ".join(b)]
    return docs, pairs


def _jaccard(a, b, n=5):
    sa, sb = set(dedup.shingles(a, n)), set(dedup.shingles(b, n))
    return len(sa & sb) / len(sa | sb)


def test_near_dedup_recall_and_false_positives_follow_the_s_curve():
    rng = random.Random(0)
    signer = dedup.Signer()
    measured = {}
    for keep in (0.97, 0.9, 0.8):  # Jaccard of 5-gram sets ~0.86, ~0.6, ~0.38
        docs, pairs = _planted_pairs(30, rng, keep)
        dup_of = dedup.near_duplicate_of(signer.signatures(docs), 42, 6)
        found = sum(dup_of[b] == a for a, b in pairs)
        false = sum(1 for i, j in enumerate(dup_of) if j >= 0 and (j, i) not in pairs)
        jac = float(np.mean([_jaccard(docs[a], docs[b]) for a, b in pairs]))
        measured[keep] = (found / len(pairs), jac, false)
        expected = dedup.duplicate_probability(jac, 42, 6)
        assert abs(found / len(pairs) - expected) < 0.3, (keep, found, jac, expected)
        assert false == 0  # unrelated documents never collide
    assert measured[0.97][0] == 1.0 and measured[0.8][0] <= 0.2


def test_exact_dedup_keeps_the_first():
    keys = [dedup.exact_key(t) for t in ("A b", "c", "a  B", "c")]
    assert dedup.exact_duplicate_of(keys) == [-1, -1, 0, 1]


@pytest.mark.skipif(not __import__("os").path.isdir(LEGALBENCH), reason="../shared/data/legalbench absent")
def test_decontamination_catches_quoted_test_rows():
    index = ContaminationIndex.from_paths([LEGALBENCH])
    assert index.num_items > 100
    row = open(f"{LEGALBENCH}/hearsay/test.tsv", encoding="utf-8").read().splitlines()[5].split("\t")[1]
    host = generate_corpus(1, 5)[0].text
    assert index.match(host) == ""
    assert index.match(host + "\n" + row.upper().replace(" ", "\n")) != ""  # case and line breaks do not hide it
    with pytest.raises(DatasetError, match="does not exist"):
        ContaminationIndex.from_paths(["/nonexistent/legalbench"])


def test_mixture_meets_shares_deterministically():
    rng = random.Random(1)
    sources = [0] * 200 + [1] * 100 + [2] * 10
    tokens = [rng.randrange(50, 150) for _ in sources]
    copies, shares = mixture.plan_mixture(["legal", "replay", "math"], [None, 0.02, 0.05], sources, tokens, seed=3)
    assert copies == mixture.plan_mixture(["legal", "replay", "math"], [None, 0.02, 0.05], sources, tokens, seed=3)[0]
    by = {s.name: s for s in shares}
    assert abs(by["replay"].actual_share - 0.02) < 0.005 and by["replay"].factor < 1  # down-sampled
    assert abs(by["math"].actual_share - 0.05) < 0.005 and by["math"].factor > 1  # up-sampled
    assert all(c == 1 for c, s in zip(copies, sources) if s == 0)  # legal kept whole
    with pytest.raises(DatasetError, match="no legal"):
        mixture.plan_mixture(["replay"], [0.1], [0], [10], seed=0)


def test_mixtral_tokenizer_matches_sentencepiece(tmp_path):
    import mistral_common  # noqa: F401  (a dependency of [train]: missing is a failure, not a skip)
    import sentencepiece

    from saul.data.model_tokenizer import mistral_directory, mistral_model_file
    from saul.data.tokenizer import backend_tokenizer, load_tokenizer

    texts = [d.text for d in generate_corpus(40, 2)]
    out, compared = mistral_directory("mistral-v1", tmp_path / "tok", texts)
    assert compared == len(texts) + 1
    backend = backend_tokenizer(out)
    assert backend.get_vocab_size() == 32000
    assert backend.encode("The court held that the contract was void.", add_special_tokens=False).ids == \
        [415, 5484, 3336, 369, 272, 5001, 403, 1066, 28723]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_model_file("mistral-v1")))
    odd = ["x  y   z", " leading", "tab\there\n\nnew ¶ 12,3 🙂 中文"]
    assert [backend.encode(t, add_special_tokens=False).ids for t in odd] == [sp.encode(t) for t in odd]
    hf = load_tokenizer(out)
    assert hf.eos_token_id == 2 and hf.pad_token == "<unk>" and len(hf) == 32000
    # The directory itself carries Mixtral's chat template (IFT/DPO with the mixtral presets).
    from transformers import AutoTokenizer

    from saul.posttrain.chat_template import MIXTRAL_CHAT_TEMPLATE

    auto = AutoTokenizer.from_pretrained(str(out))
    assert auto.chat_template == MIXTRAL_CHAT_TEMPLATE
    chat = [{"role": "user", "content": "Is this hearsay?"}, {"role": "assistant", "content": "No."}]
    assert auto.apply_chat_template(chat, tokenize=False) == "<s> [INST] Is this hearsay? [/INST] No.</s>"
