"""The cleaning rules' edge cases on known text: the rewritten (faster) regexes, the letter count and
the repeated-10-gram share, with answers worked out by hand."""
from saul.data import clean


def test_broken_lines_and_page_joins_respect_sentence_ends_and_quotes():
    text = ("He said “stop”\nand left. The parties (the\n“Buyer”)\nagree.\nSection 2\nreads as\tfollows:  the  sale"
            "\n\n\n\nof goods " + "—" * 11 + " ends")
    out = clean.clean_text(text)
    assert out.text == ("He said “stop”\nand left. The parties (the\n“Buyer”)\nagree.\n"
                        "Section 2 reads as follows: the sale of goods ends")
    assert dict(out.hits) == {"broken_lines": 2, "repeated_chars": 1, "whitespace": 4}


def test_hyphenation_and_a_paragraph_cut_by_a_page_break():
    out = clean.clean_text("the obli-\ngation of the\fseller continues\fAnd then\n\n\nthe next")
    assert out.text == "the obligation of the seller continues\n\nAnd then the next"
    assert dict(out.hits) == {"hyphenation": 1, "broken_lines": 2}
    untouched = "A well-known rule.\nNo change here.\n\nNone."
    assert clean.clean_text(untouched) == clean.Cleaned(untouched)  # no rule fires, no hit counted


def test_letter_count_outside_ascii():
    # Straße: 6, ½ (a \w that is no digit): 1, §: 0, “x”: 1, 12_ab: 2
    assert clean.letter_count("Straße ½ § “x” 12_ab") == 10
    assert clean.letter_count("ab1 c_d!") == 4
    assert clean.letter_count("") == 0
    assert clean.document_verdict(" ".join(["§§ 12–14 ¶ 3"] * 60), 50)[0] == "rule"
    assert clean.document_verdict(" ".join(["Kündigung des Vertrags"] * 5 + ["Straße"] * 50), 50)[0] != "rule"


def test_repeated_share_counts_every_word_of_a_repeated_10_gram_once():
    ten = list("abcdefghij")
    assert clean.repeated_share(ten + ["x"] + ten) == 20 / 21
    eleven = list("abcdefghijk")  # two overlapping repeated 10-grams, each side covers 11 words
    assert clean.repeated_share(eleven + ["1", "2"] + eleven) == 22 / 24
    assert clean.repeated_share(["z"] * 30) == 1.0
    assert clean.repeated_share([str(i) for i in range(40)]) == 0.0
    assert clean.repeated_share(ten + ten[:9] + ["q"] + ten[:9]) == 0.0  # 9 words again is not a 10-gram


def test_repetition_verdict_when_every_word_recurs_but_no_10_gram_does():
    words = [f"clause{i}" for i in range(60)]
    text = " ".join(words + words[::-1])  # every word twice (the cheap bound says 100 %), no 10-gram twice
    assert clean.repeated_share(text.split()) == 0.0
    assert clean.document_verdict(text, 50) == ("", "")
    looped = " ".join(words[:30] * 4)
    assert clean.document_verdict(looped, 50) == ("repetition", "100% of the words are in repeated 10-grams (> 80%)")
