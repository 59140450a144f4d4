"""LegalBench-format tasks: read a task folder, build prompts, normalize answers, parse labels.

A task folder holds
    base_prompt.txt   the prompt, with `{{column}}` placeholders filled from a test row
    train.tsv         few-shot examples (optional; `eval.few_shot` > 0 needs it)
    test.tsv          the examples: a gold label column (`answer` in LegalBench's repository,
                      `label` in some exports), an optional `index` column (else the 0-based
                      row number) and the input columns the placeholders name.
Files are tab-separated with a header, read like LegalBench reads them (pandas' `read_csv(sep="\t")`
quoting: a field that starts with a quote is quoted, a quote inside a field is literal).

Scoring follows LegalBench: strip, lowercase, drop punctuation, then exact match. Verbose
outputs (the paper's DPO model) are parsed by taking the first valid label found in the
output; an output holding none is a parse failure, counted wrong and reported per task.

Torch-free: the login side checks task folders before anything is submitted.
"""
from __future__ import annotations

import csv
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from saul.config.errors import ConfigError

PROMPT_FILE, TRAIN_FILE, TEST_FILE = "base_prompt.txt", "train.tsv", "test.tsv"
LABEL_COLUMNS = ("answer", "label")  # LegalBench's repository says answer; some exports say label
INDEX_COLUMN = "index"
PLACEHOLDER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class TaskError(ConfigError):
    """A task folder that cannot be evaluated: one line naming the file and the fix."""


@dataclass(frozen=True)
class Example:
    index: str  # the `index` column, else the 0-based row number (as text: LegalBench indexes are ints)
    answer: str  # gold label as written in the file
    fields: Dict[str, str]


@dataclass
class Task:
    name: str
    path: Path
    template: str
    examples: List[Example]
    train: List[Example] = field(default_factory=list)
    labels: List[str] = field(default_factory=list)  # the valid labels, normalized, in first-seen order

    def prompt(self, example: Example, few_shot: int = 0) -> str:
        """base_prompt.txt filled from the row; with few_shot > 0, that many train.tsv rows first,
        each written with the prompt's last block (the query) followed by its answer."""
        if few_shot <= 0:
            return fill(self.template, example.fields)
        head, sep, query = self.template.rpartition("\n\n")
        shots = [fill(query, ex.fields) + " " + ex.answer for ex in self.train[:few_shot]]
        return head + sep + "\n\n".join(shots + [fill(query, example.fields)])


def fill(template: str, row: Dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: row[m.group(1)], template)


def normalize(text: str) -> str:
    """LegalBench's normalization: drop punctuation, strip, lowercase."""
    return str(text).translate(_PUNCTUATION).strip().lower()


def parse_label(output: str, labels: Sequence[str]) -> Optional[str]:
    """The first valid label in a (possibly verbose) output, as a whole word or phrase; at one
    position the longest label wins ("no action" over "no"). None when no label occurs."""
    text = " ".join(normalize(output).split())
    best = None  # (start, -length, label)
    for label in labels:
        if not label:
            continue
        m = re.search(r"(?<!\w)" + re.escape(label) + r"(?!\w)", text)
        if m and (best is None or (m.start(), -len(label)) < best[:2]):
            best = (m.start(), -len(label), label)
    return best[2] if best else None


def _read_tsv(path: Path) -> List[Dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            header = reader.fieldnames or []
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): re-save it as UTF-8") from None
    if not header:
        raise TaskError(f"{path} is empty: it needs a header line and one row per example")
    for n, row in enumerate(rows):
        if None in row or any(v is None for v in row.values()):
            raise TaskError(f"{path} line {n + 2} does not have the header's {len(header)} tab-separated fields: "
                            "check the tabs in that line")
    return rows


def _examples(path: Path, rows: List[Dict[str, str]], needed: Sequence[str]) -> List[Example]:
    header = list(rows[0]) if rows else []
    label_col = next((c for c in LABEL_COLUMNS if c in header), None)
    if label_col is None:
        raise TaskError(f"{path} has no gold label column: name it 'answer' or 'label' (columns: {', '.join(header)})")
    missing = [c for c in needed if c not in header]
    if missing:
        raise TaskError(f"{path.parent / PROMPT_FILE} uses placeholder {{{{{missing[0]}}}}} but {path.name} has no such "
                        f"column (columns: {', '.join(header)}): rename the placeholder or add the column")
    has_index = INDEX_COLUMN in header
    return [Example(str(r[INDEX_COLUMN]).strip() if has_index else str(n), r[label_col].strip(), dict(r))
            for n, r in enumerate(rows)]


def load_task(path: Path) -> Task:
    """Read and check one task folder; every problem is one TaskError line."""
    path = Path(path)
    if not path.is_dir():
        raise TaskError(f"eval.tasks: task folder {path} does not exist")
    for name in (PROMPT_FILE, TEST_FILE):
        if not (path / name).is_file():
            raise TaskError(f"task folder {path} has no {name}: a LegalBench task needs {PROMPT_FILE} and {TEST_FILE}")
    template = (path / PROMPT_FILE).read_text(encoding="utf-8")
    needed = list(dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(template)))
    if not needed:
        raise TaskError(f"{path / PROMPT_FILE} has no {{{{column}}}} placeholder: nothing of a test row would reach the model")
    rows = _read_tsv(path / TEST_FILE)
    if not rows:
        raise TaskError(f"{path / TEST_FILE} has a header but no examples")
    examples = _examples(path / TEST_FILE, rows, needed)
    indexes = [e.index for e in examples]
    if len(set(indexes)) != len(indexes):
        dup = next(i for i in indexes if indexes.count(i) > 1)
        raise TaskError(f"{path / TEST_FILE}: index {dup} appears more than once; indexes must be unique")
    train: List[Example] = []
    if (path / TRAIN_FILE).is_file():
        train_rows = _read_tsv(path / TRAIN_FILE)
        train = _examples(path / TRAIN_FILE, train_rows, needed) if train_rows else []
    labels = list(dict.fromkeys(normalize(e.answer) for e in examples + train))
    return Task(path.name, path, template, examples, train, labels)


def task_folders(entries: Sequence[str]) -> List[Path]:
    """`eval.tasks` entries: a task folder, or a folder of task folders (a suite: every subfolder
    holding base_prompt.txt, in name order)."""
    out: List[Path] = []
    for entry in entries:
        path = Path(entry)
        if not path.is_dir():
            raise TaskError(f"eval.tasks: {path} does not exist (give a task folder or a folder of task folders)")
        if (path / PROMPT_FILE).is_file() or (path / TEST_FILE).is_file():
            out.append(path)
            continue
        found = sorted(p for p in path.iterdir() if p.is_dir() and (p / PROMPT_FILE).is_file())
        if not found:
            raise TaskError(f"eval.tasks: {path} is neither a task folder ({PROMPT_FILE} + {TEST_FILE}) nor a folder of them")
        out.extend(found)
    names = [p.name for p in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise TaskError(f"eval.tasks: two task folders are named '{dup}': predictions/{dup}.jsonl would be shared; rename one")
    return out
