"""The local byte-level BPE tokenizer: exact round trip, determinism, transformers loading."""
import pytest

from saul.data.synthetic import generate_documents
from saul.data.tokenizer import (EOS, MIN_VOCAB_SIZE, SPECIAL_TOKENS, describe_tokenizer,
                                 load_tokenizer, tokenizer_fingerprint, train_tokenizer)

LEGAL_SAMPLES = [
    "Pursuant to 42 U.S.C. § 1983 and §§ 1331–1332, the court held — in ¶ 14 — that “notice” "
    "was 'adequate'.",
    'Smith v. Jones, 123 F.3d 456, 459 (9th Cir. 1999) ("the parties\' intent controls").',
    "1.1(a) “Affiliate” means … any entity; Müller & Søren, S.à r.l. — €1,000,000.\n\n\tEnd.  ",
    "Emoji and rare bytes still encode: 🙂 ¤ \x00 \u200b ﬁ",
]


@pytest.fixture(scope="module")
def corpus():
    return generate_documents(60, seed=11)


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory):
    return train_tokenizer(corpus, 500, tmp_path_factory.mktemp("tok"))


def test_round_trip_on_legal_text(tokenizer_dir, corpus):
    tok = load_tokenizer(tokenizer_dir)
    for text in LEGAL_SAMPLES + corpus[:10]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids


def test_special_tokens_are_set_and_not_added_by_encode(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    assert [tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token] == list(SPECIAL_TOKENS)
    assert [tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id] == [0, 1, 2, 3]
    assert len(tok) == 500
    ids = tok("a clause")["input_ids"]
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids


def test_auto_tokenizer_loads_the_directory(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert tok.eos_token == EOS and tok.pad_token_id == 3
    assert tok.decode(tok.encode(LEGAL_SAMPLES[0], add_special_tokens=False)) == LEGAL_SAMPLES[0]


def test_training_is_deterministic(corpus, tokenizer_dir, tmp_path):
    again = train_tokenizer(corpus, 500, tmp_path / "again")
    trained = (tokenizer_dir / "tokenizer.json").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == trained
    other = train_tokenizer(corpus[:30], 500, tmp_path / "other")
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer_dir)


def test_fingerprint_is_the_same_for_every_form(tokenizer_dir):
    fp = tokenizer_fingerprint(tokenizer_dir)
    assert tokenizer_fingerprint(tokenizer_dir / "tokenizer.json") == fp
    assert tokenizer_fingerprint(load_tokenizer(tokenizer_dir)) == fp
    info = describe_tokenizer(tokenizer_dir)
    assert (info.fingerprint, info.vocab_size, info.eos_id) == (fp, 500, 1)


def test_vocab_too_small_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be >="):
        train_tokenizer(["text"], MIN_VOCAB_SIZE - 1, tmp_path)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
