"""Step 5: drop training documents that share a 13-gram with evaluation data.

`data.decontaminate` lists paths: a LegalBench task folder (or a folder of them: every
`test.tsv` below it), an MMLU file (.csv without header: question, 4 choices, answer; .jsonl or
.parquet with `question` and `choices`) or a folder of those. Every input cell of at least 13
words gives its word 13-grams; a shorter item (LegalBench rows are often one sentence) is
matched whole, so a training document quoting a short test item is still caught. Words are the
lower-cased alphanumeric runs, so punctuation, case and line breaks do not hide a match.
Torch-free.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from saul.data.dataset import DatasetError

NGRAM = 13
MIN_WHOLE_ITEM_WORDS = 8  # shorter items ("Yes", "Hearsay") would match everywhere
_WORD = re.compile(r"[a-z0-9]+")
_SKIP_COLUMNS = {"index", "idx", "id", "answer", "label", "slice"}


def normalize_words(text: str) -> List[str]:
    return _WORD.findall(text.lower())


def eval_files(paths: Sequence[str]) -> List[Path]:
    files: List[Path] = []
    for i, p in enumerate(paths):
        path = Path(p)
        if not path.exists():
            raise DatasetError(f"data.decontaminate[{i}]={p}: does not exist")
        if path.is_file():
            files.append(path)
            continue
        found = sorted(f for f in path.rglob("*") if f.is_file() and
                       (f.name == "test.tsv" or f.suffix in (".csv", ".jsonl", ".parquet")))
        if not found:
            raise DatasetError(f"data.decontaminate[{i}]={p}: no test.tsv, .csv, .jsonl or .parquet "
                               f"evaluation files in it")
        files.extend(found)
    return files


def _items(path: Path) -> Iterable[str]:
    if path.suffix == ".tsv":
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                for column, value in row.items():
                    if column and column.lower() not in _SKIP_COLUMNS and value:
                        yield value
    elif path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if len(row) >= 2:
                    yield row[0]
                    yield " ".join(row[1:-1])
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield from _record_items(json.loads(line))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for record in pq.read_table(path).to_pylist():
            yield from _record_items(record)
    else:
        raise DatasetError(f"{path}: unknown evaluation file type (use test.tsv, .csv, .jsonl, .parquet)")


def _record_items(record: dict) -> Iterable[str]:
    for key in ("question", "text", "input", "prompt"):
        if isinstance(record.get(key), str):
            yield record[key]
    choices = record.get("choices")
    if isinstance(choices, list):
        yield " ".join(str(c) for c in choices)


class ContaminationIndex:
    """13-grams of the evaluation data (and whole short items), for `match`."""

    def __init__(self, grams: Set[Tuple[str, ...]], whole: Dict[int, Set[Tuple[str, ...]]],
                 num_items: int):
        self.grams, self.whole, self.num_items = grams, whole, num_items
        # Every indexed n-gram starts with one of these: one set lookup per position of a
        # document, the longer comparisons only where a prefix hits.
        self.prefixes = {g[:MIN_WHOLE_ITEM_WORDS] for g in grams}
        for items in whole.values():
            self.prefixes.update(g[:MIN_WHOLE_ITEM_WORDS] for g in items)

    @classmethod
    def from_paths(cls, paths: Sequence[str]) -> Optional["ContaminationIndex"]:
        if not paths:
            return None
        grams: Set[Tuple[str, ...]] = set()
        whole: Dict[int, Set[Tuple[str, ...]]] = {}
        items = 0
        for path in eval_files(paths):
            try:
                for text in _items(path):
                    words = normalize_words(text)
                    if len(words) >= NGRAM:
                        items += 1
                        grams.update(tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1))
                    elif len(words) >= MIN_WHOLE_ITEM_WORDS:
                        items += 1
                        whole.setdefault(len(words), set()).add(tuple(words))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
                raise DatasetError(f"{path}: cannot read evaluation data ({exc})") from None
        return cls(grams, whole, items)

    def match(self, text: str) -> str:
        """The first evaluation n-gram the text contains (as text), or ""."""
        words = normalize_words(text)
        k = MIN_WHOLE_ITEM_WORDS
        for i, prefix in enumerate(zip(*(words[j:] for j in range(k)))):
            if prefix not in self.prefixes:
                continue
            gram = tuple(words[i:i + NGRAM])
            if len(gram) == NGRAM and gram in self.grams:
                return " ".join(gram)
            for n, items in self.whole.items():
                if gram[:n] in items and len(gram) >= n:
                    return " ".join(gram[:n])
        return ""
