"""The synthetic legal corpus: deterministic, legal-shaped, with documents long enough to chunk."""
import re

from saul.data.synthetic import (KINDS, generate_corpus, generate_documents, read_corpus_jsonl,
                                 write_corpus_jsonl)


def test_same_seed_same_documents_different_seed_different():
    assert generate_documents(30, seed=7) == generate_documents(30, seed=7)
    assert generate_documents(30, seed=7) != generate_documents(30, seed=8)


def test_document_i_does_not_depend_on_corpus_size():
    assert generate_documents(40, seed=3)[:10] == generate_documents(10, seed=3)


def test_corpus_has_every_kind_and_legal_structure():
    corpus = generate_corpus(120, seed=1)
    assert {doc.kind for doc in corpus} == set(KINDS)
    text = {kind: "\n".join(d.text for d in corpus if d.kind == kind) for kind in KINDS}
    assert re.search(r"^\d+\.\d+ ", text["contract"], re.M)  # 1.1 clauses
    assert re.search(r"^\s+\([a-d]\) ", text["contract"], re.M)  # (a) sub-clauses
    assert "GOVERNING LAW" in text["contract"] and "means" in text["contract"]
    assert re.search(r"^§ \d+-\d+\. ", text["statute"], re.M)
    assert re.search(r"^TITLE \d+ — ", text["statute"], re.M)
    reporter = r"(U\.S\.|F\.[234]d|F\.4th|S\. Ct\.|F\. Supp\. [23]d)"
    assert re.search(rf"\d+ {reporter} \d+", text["opinion"])
    assert re.search(r"\d+ U\.S\.C\. § \d+", text["opinion"])
    assert " v. " in text["opinion"] and "¶ " in text["opinion"]


def test_lengths_vary_and_some_documents_are_long():
    lengths = sorted(len(t) for t in generate_documents(200, seed=5))
    assert lengths[0] < 2000 and lengths[-1] > 5 * lengths[0]
    assert sum(n > 10000 for n in lengths) >= 5  # several seq_len=64 samples' worth and more


def test_jsonl_round_trip(tmp_path):
    corpus = generate_corpus(5, seed=2)
    path = write_corpus_jsonl(tmp_path / "corpus.jsonl", corpus)
    assert read_corpus_jsonl(path) == corpus
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed into place
    plain = read_corpus_jsonl(write_corpus_jsonl(tmp_path / "plain.jsonl", ["a § b", "c"]))
    assert [(d.kind, d.text) for d in plain] == [("text", "a § b"), ("text", "c")]
