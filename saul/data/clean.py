"""Step 2: normalization and the paper's rule-based cleaning, then the document-level rules.

`clean_text` repairs what extraction leaves behind, in this order, each rule counted:
    nfkc          Unicode NFKC (ligatures, full-width forms, non-breaking spaces), controls dropped
    html_tags     tags left in dumps (<p>, </div>, <br/>) and their entities (&amp; -> &)
    headers       running headers/footers: a line in the first or last two lines of at least half
                  of the pages (digits ignored, so "Page 3 of 9" matches "Page 4 of 9"); pages are
                  the form feeds pdftotext writes
    page_numbers  a line that is only a page number ("12", "- 12 -", "Page 12", "Page 3 of 9")
    line_numbers  transcript line numbers: a run of >= 5 lines starting with consecutive numbers
    hyphenation   "obli-\\ngation" -> "obligation" (a lower-case letter continues the word)
    broken_lines  a line break inside a sentence (next line starts lower-case) -> a space
    repeated_chars  a run of >= 10 identical non-alphanumeric characters (dot leaders, rules)
    whitespace    runs of spaces/tabs -> one space; 3+ line breaks -> a blank line
The paper's "most common 10-grams were repeated characters and whitespace": the last two rules.

`document_verdict` then decides whether a cleaned document stays: `empty` (nothing left),
`rule` (fewer than data.min_words words, or less than half of its characters letters: tables of
numbers, base64, mojibake) or `repetition` (more than 80 % of its words inside word 10-grams
that occur more than once: boilerplate loops, spam). Torch-free, pure Python.
"""
from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Tuple

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\u200b-\u200f\u2028\u2029\ufeff]")
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]{0,500})?/?>")
_ENTITY = re.compile(r"&(?:[A-Za-z]{2,8}|#\d{1,6}|#x[0-9A-Fa-f]{1,6});")
_PAGE_NUMBER = re.compile(r"^\s*(?:(?:page|p\.)\s*)?[-–—]?\s*\d{1,4}\s*[-–—]?\s*(?:(?:of|/)\s*\d{1,4})?\s*$",
                          re.IGNORECASE)
_LINE_NUMBER = re.compile(r"^\s*(\d{1,3})(?:\s+|$)(?=\S|$)")
_HYPHEN = re.compile(r"([A-Za-z])-\n[ \t]*([a-z])")
# Starts with the line break and looks back at the character before it: the regex engine then
# jumps from line break to line break (a literal prefix) instead of trying every character.
_BROKEN = re.compile(r"\n(?<=[^\n.:;!?\"”)\]]\n)[ \t]*(?=[a-z(])")
_PAGE_JOIN = re.compile(r"\n(?<=[^\n.:;!?]\n)\n+(?=[a-z])")
_REPEATED = re.compile(r"([^\w\s])\1{9,}")
_SPACES = re.compile(r"\t[ \t]*| [ \t]+")  # not a lone space: that would match 1000s of times
_BLANKS = re.compile(r"\n{3,}")
_DIGITS = re.compile(r"\d+")
_ASCII_LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))  # the letters among ASCII characters
_ASCII = bytes(range(128))
_RUN_OF_ONES = re.compile(b"\x01+")
_NON_LETTER = re.compile(r"[\W\d_]+")  # the rest are letters (str.isalpha, plus e.g. "½")
_MIN_LINE_RUN = 5  # consecutive numbered lines that make a transcript
_HEADER_ZONE = 2  # lines at each end of a page that may be a running header/footer
_MIN_PAGES_FOR_HEADERS = 2
REPETITION_NGRAM = 10
MAX_REPEATED_SHARE = 0.80  # template-heavy legal text (contracts, codes) repeats a lot; spam is ~100 %
MIN_LETTER_SHARE = 0.5


@dataclass
class Cleaned:
    text: str
    hits: Counter = field(default_factory=Counter)  # rule -> times it fired


def clean_text(text: str) -> Cleaned:
    hits: Counter = Counter()
    out = unicodedata.normalize("NFKC", text)
    if out != text:
        hits["nfkc"] += 1
    out, n = _CONTROL.subn("", out)
    hits["nfkc"] += n
    out, n = _TAG.subn(" ", out)
    hits["html_tags"] += n
    if n or _ENTITY.search(out):
        unescaped = html.unescape(out)
        hits["html_tags"] += unescaped != out
        out = unescaped
    pages = out.split("\f")
    if sum(1 for page in pages if page.strip()) >= _MIN_PAGES_FOR_HEADERS:
        pages, n = _drop_running_lines(pages)
        hits["headers"] += n
    lines: List[str] = []
    for page in pages:
        # Line numbers first: a numbered blank line ("7") is not a page number.
        page_lines, n = _strip_line_numbers(page.split("\n"))
        hits["line_numbers"] += n
        if any(map(_PAGE_NUMBER.match, page_lines)):  # map: the usual no-match scan at C speed
            kept = [line for line in page_lines if not _PAGE_NUMBER.match(line) or not line.strip()]
            hits["page_numbers"] += len(page_lines) - len(kept)
            page_lines = kept
        lines.extend(page_lines)
        lines.append("")  # a page break ends a paragraph only if the text says so (below)
    out = "\n".join(map(str.rstrip, lines))
    out = _join_across_page_breaks(out)
    if "-\n" in out:
        out, n = _HYPHEN.subn(r"\1\2", out)
        hits["hyphenation"] += n
    out, n = _BROKEN.subn(" ", out)
    hits["broken_lines"] += n
    out, n = _REPEATED.subn(" ", out)
    hits["repeated_chars"] += n
    if "\t" in out or "  " in out:  # what _SPACES needs; `in` is a fast C search, the regex is not
        out, n = _SPACES.subn(" ", out)
        hits["whitespace"] += n
    out = "\n".join(map(str.strip, out.split("\n")))
    if "\n\n\n" in out:
        out, n = _BLANKS.subn("\n\n", out)
        hits["whitespace"] += n
    return Cleaned(out.strip(), +hits)


def _header_key(line: str) -> str:
    return _DIGITS.sub("#", line.strip().lower())


def _drop_running_lines(pages: List[str]) -> Tuple[List[str], int]:
    """Remove lines that repeat at the top or bottom of at least half of the pages."""
    zones = []
    for page in pages:
        lines = [line for line in page.split("\n") if line.strip()]
        zones.append({_header_key(l) for l in lines[:_HEADER_ZONE] + lines[-_HEADER_ZONE:]})
    counts = Counter(key for zone in zones for key in zone)
    real_pages = sum(1 for page in pages if page.strip())
    running = {key for key, c in counts.items()
               if c >= max(_MIN_PAGES_FOR_HEADERS, (real_pages + 1) // 2) and key.strip("# ")}
    if not running:
        return pages, 0
    removed = 0
    out = []
    for page in pages:
        lines = page.split("\n")
        idx = [i for i, line in enumerate(lines) if line.strip()]
        zone = set(idx[:_HEADER_ZONE] + idx[-_HEADER_ZONE:])
        keep = []
        for i, line in enumerate(lines):
            if i in zone and _header_key(line) in running:
                removed += 1
            else:
                keep.append(line)
        out.append("\n".join(keep))
    return out, removed


def _strip_line_numbers(lines: List[str]) -> Tuple[List[str], int]:
    """Strip leading numbers from runs of >= 5 lines numbered n, n+1, n+2, ..."""
    matches = list(map(_LINE_NUMBER.match, lines))
    numbered = [i for i, m in enumerate(matches) if m is not None]  # few: the loop below is over these
    if len(numbered) < _MIN_LINE_RUN:
        return lines, 0
    strip: set = set()
    run = [numbered[0]]
    for i in numbered[1:]:
        if i == run[-1] + 1 and int(matches[i].group(1)) == int(matches[run[-1]].group(1)) + 1:
            run.append(i)
            continue
        if len(run) >= _MIN_LINE_RUN:
            strip.update(run)
        run = [i]
    if len(run) >= _MIN_LINE_RUN:
        strip.update(run)
    if not strip:
        return lines, 0
    out = [_LINE_NUMBER.sub("", line, count=1) if k in strip else line for k, line in enumerate(lines)]
    return out, len(strip)


def _join_across_page_breaks(text: str) -> str:
    """A paragraph cut by a page break continues when the next page starts lower-case."""
    return _PAGE_JOIN.sub("\n", text)


def words(text: str) -> List[str]:
    return text.split()


def letter_count(text: str) -> int:
    """Letters in `text` (str.isalpha, plus e.g. "½"): the ASCII ones counted at C speed, the
    few others (legal text has quotes, § and dashes, little else) by the regex."""
    data = text.encode("utf-8")
    letters = len(data) - len(data.translate(None, _ASCII_LETTERS))
    others = data.translate(None, _ASCII)  # what is left: the UTF-8 of the non-ASCII characters
    if others:
        letters += len(_NON_LETTER.sub("", others.decode("utf-8")))
    return letters


def repeated_share(tokens: List[str], n: int = REPETITION_NGRAM) -> float:
    """Share of words that lie inside a word n-gram occurring more than once."""
    if len(tokens) < 2 * n:
        return 0.0
    grams = list(zip(*(tokens[k:] for k in range(n))))
    counts = Counter(grams)
    if len(counts) == len(grams):  # no n-gram repeats
        return 0.0
    # 1 where a repeated n-gram starts, built at C speed; each run of starts s..e-1 covers words
    # s..e-2+n, and the runs come in order, so overlapping covers merge on the fly.
    starts = bytes(map((1).__lt__, map(counts.__getitem__, grams)))
    covered = end = 0
    for run in _RUN_OF_ONES.finditer(starts):
        lo, hi = max(run.start(), end), run.end() - 1 + n
        covered += hi - lo
        end = hi
    return covered / len(tokens)


def _repeated_share_bound(tokens: List[str], n: int = REPETITION_NGRAM) -> float:
    """An upper bound of repeated_share at a third of its cost: a repeated n-gram holds no word
    that occurs once, so its words lie in runs of >= n words that each occur twice or more."""
    if len(tokens) < 2 * n:
        return 0.0
    counts = Counter(tokens)
    again = bytes(map((1).__lt__, map(counts.__getitem__, tokens)))  # 1: the word occurs again
    return sum(run.end() - run.start() for run in _run_of_ones(n).finditer(again)) / len(tokens)


@functools.lru_cache(maxsize=None)
def _run_of_ones(n: int) -> "re.Pattern[bytes]":
    return re.compile(b"\x01{%d,}" % n)


def document_verdict(text: str, min_words: int) -> Tuple[str, str]:
    """("", "") to keep the cleaned document, else (reason, detail)."""
    if not text:
        return "empty", "no text left after cleaning"
    tokens = words(text)
    if len(tokens) < min_words:
        return "rule", f"{len(tokens)} words < data.min_words={min_words}"
    visible = len("".join(tokens))
    letters = letter_count(text)
    if visible and letters / visible < MIN_LETTER_SHARE:
        return "rule", f"letters are {letters / visible:.0%} of the characters (< {MIN_LETTER_SHARE:.0%})"
    if _repeated_share_bound(tokens) <= MAX_REPEATED_SHARE:  # most documents: no n-gram needed
        return "", ""
    share = repeated_share(tokens)
    if share > MAX_REPEATED_SHARE:
        return "repetition", (f"{share:.0%} of the words are in repeated {REPETITION_NGRAM}-grams "
                              f"(> {MAX_REPEATED_SHARE:.0%})")
    return "", ""
