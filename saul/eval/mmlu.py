"""MMLU legal subsets from local files: questions, 5-shot prompts, answer letters.

Layout of `eval.mmlu_dir` (the original MMLU release's, so its files drop in unchanged):
    dev/<subject>_dev.csv     test/<subject>_test.csv     no header: question, A, B, C, D, answer letter
or the same names ending in .jsonl, one {"question", "choices": [4], "answer": 0-3} per line
(the Hugging Face export's fields). The few-shot examples are the first `eval.mmlu_shots`
rows of the dev split; each test question is scored by the log-likelihood of each answer
letter after "Answer:" (the original MMLU protocol), the most likely one is the prediction.

Torch-free: the login side checks the files before anything is submitted.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from saul.config.errors import ConfigError

LETTERS = ("A", "B", "C", "D")
SPLITS = ("dev", "test")


@dataclass(frozen=True)
class Question:
    index: str  # 0-based row number in the test file
    question: str
    choices: Sequence[str]
    answer: int  # 0-3


@dataclass
class Subject:
    name: str
    dev: List[Question]
    test: List[Question]

    @property
    def task_name(self) -> str:
        return f"mmlu_{self.name}"

    def header(self) -> str:
        return f"The following are multiple choice questions (with answers) about {self.name.replace('_', ' ')}.\n\n"

    def prompt(self, question: Question, shots: int) -> str:
        """The dev examples with their answers, then the question; the continuation is ' <letter>'."""
        parts = [format_question(q) + f" {LETTERS[q.answer]}\n\n" for q in self.dev[:shots]]
        return self.header() + "".join(parts) + format_question(question)


def format_question(q: Question) -> str:
    lines = [q.question.strip()] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices)]
    return "\n".join(lines) + "\nAnswer:"


def _parse_answer(value, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 4:
        return value
    if isinstance(value, str) and value.strip().upper() in LETTERS:
        return LETTERS.index(value.strip().upper())
    if isinstance(value, str) and value.strip() in ("0", "1", "2", "3"):
        return int(value)
    raise ConfigError(f"{where}: answer {value!r} is neither A-D nor an index 0-3")


def _read_csv(path: Path) -> List[Question]:
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh)):
            if len(row) != 6:
                raise ConfigError(f"{path} line {n + 1} has {len(row)} fields: MMLU csv rows are question, A, B, C, D, answer")
            out.append(Question(str(n), row[0], tuple(row[1:5]), _parse_answer(row[5], f"{path} line {n + 1}")))
    return out


def _read_jsonl(path: Path) -> List[Question]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n")):
        if not line.strip():
            continue
        where = f"{path} line {n + 1}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not {"question", "choices", "answer"} <= set(row):
            raise ConfigError(f"{where}: an MMLU row needs question, choices and answer")
        if not isinstance(row["choices"], list) or len(row["choices"]) != 4:
            raise ConfigError(f"{where}: choices must be a list of 4 answers")
        out.append(Question(str(len(out)), str(row["question"]), tuple(str(c) for c in row["choices"]),
                            _parse_answer(row["answer"], where)))
    return out


def split_file(root: Path, subject: str, split: str) -> Path:
    for ext in ("csv", "jsonl"):
        path = root / split / f"{subject}_{split}.{ext}"
        if path.is_file():
            return path
    raise ConfigError(f"eval.mmlu_dir={root}: no {split}/{subject}_{split}.csv or .jsonl; "
                      f"put the MMLU {split} split of '{subject}' there or drop it from eval.mmlu_subjects")


def load_subject(root: Path, subject: str, shots: int) -> Subject:
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"eval.mmlu_dir={root} does not exist")
    splits = {}
    for split in SPLITS:
        path = split_file(root, subject, split)
        splits[split] = _read_csv(path) if path.suffix == ".csv" else _read_jsonl(path)
    if not splits["test"]:
        raise ConfigError(f"eval.mmlu_dir={root}: the test split of '{subject}' is empty")
    if len(splits["dev"]) < shots:
        raise ConfigError(f"eval.mmlu_dir={root}: '{subject}' has {len(splits['dev'])} dev examples but "
                          f"eval.mmlu_shots={shots}: lower eval.mmlu_shots or add dev examples")
    return Subject(subject, splits["dev"], splits["test"])
