"""Small evaluation data made by our own code: an MMLU-format legal quiz and a LegalBench-format task.

For tests and the demo, where the real MMLU files and LegalBench tasks are not on disk. The
questions are generated from templates (a term and its definition, a rule and its holder), so
they have one right answer by construction. Deterministic for a given seed.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Iterable, List, Tuple

from saul.data.atomic import write_text_atomic
from saul.eval.mmlu import LETTERS

LEGAL_SUBJECTS = ("international_law", "professional_law", "jurisprudence")

_FACTS: List[Tuple[str, str]] = [
    ("pacta sunt servanda", "treaties in force bind the parties and must be performed in good faith"),
    ("res judicata", "a matter finally decided by a competent court cannot be litigated again"),
    ("habeas corpus", "a detained person may have a court examine the lawfulness of the detention"),
    ("stare decisis", "courts follow the precedents set by earlier decisions"),
    ("mens rea", "the mental element of a crime"),
    ("actus reus", "the physical act of a crime"),
    ("force majeure", "an unforeseeable event beyond the parties' control excuses performance"),
    ("jus cogens", "peremptory norms of international law from which no derogation is permitted"),
    ("estoppel", "a party may not deny what its own words or conduct led another to rely on"),
    ("consideration", "something of value exchanged that makes a promise enforceable"),
    ("hearsay", "an out-of-court statement offered to prove the truth of the matter asserted"),
    ("tort", "a civil wrong, other than a breach of contract, that causes harm"),
]


def _questions(rng: random.Random, n: int) -> Iterable[Tuple[str, List[str], int]]:
    for _ in range(n):
        term, meaning = _FACTS[rng.randrange(len(_FACTS))]
        wrong = rng.sample([m for t, m in _FACTS if t != term], 3)
        choices = wrong + [meaning]
        rng.shuffle(choices)
        yield f"Which statement best describes the doctrine of {term}?", choices, choices.index(meaning)


def write_mmlu(root: Path, subjects: Iterable[str] = LEGAL_SUBJECTS, n_dev: int = 5, n_test: int = 12,
               fmt: str = "jsonl", seed: int = 0) -> Path:
    """`root/dev/<subject>_dev.<fmt>` and `root/test/<subject>_test.<fmt>` in MMLU's layout."""
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"fmt must be jsonl or csv, got {fmt!r}")
    root = Path(root)
    for s_idx, subject in enumerate(subjects):
        rng = random.Random(seed * 1000 + s_idx)
        for split, n in (("dev", n_dev), ("test", n_test)):
            rows = list(_questions(rng, n))
            (root / split).mkdir(parents=True, exist_ok=True)
            path = root / split / f"{subject}_{split}.{fmt}"
            if fmt == "jsonl":
                text = "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in rows)
            else:
                import io

                buf = io.StringIO()
                writer = csv.writer(buf, lineterminator="\n")
                for q, c, a in rows:
                    writer.writerow([q, *c, LETTERS[a]])
                text = buf.getvalue()
            write_text_atomic(path, text)
    return root


def write_legalbench_task(root: Path, name: str = "contract_clause", n_test: int = 12, n_train: int = 4,
                          label_column: str = "answer", with_index: bool = True, seed: int = 0) -> Path:
    """A binary Yes/No task folder in LegalBench's format: is the clause an indemnity clause?"""
    rng = random.Random(seed)
    clauses = [
        ("The Supplier shall indemnify the Buyer against all losses arising from any breach of this Agreement.", "Yes"),
        ("Each party shall hold the other harmless from third-party claims caused by its negligence.", "Yes"),
        ("The Licensee shall defend and indemnify the Licensor against claims of infringement.", "Yes"),
        ("This Agreement is governed by the laws of the State of New York.", "No"),
        ("Either party may terminate this Agreement on thirty days' written notice.", "No"),
        ("All notices shall be delivered in writing to the addresses set out above.", "No"),
    ]
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "base_prompt.txt",
                      "Does the clause oblige one party to indemnify the other? Answer Yes or No.\n\n"
                      "Clause: {{text}}\nA:")
    for split, n in (("train", n_train), ("test", n_test)):
        header = ([("index")] if with_index else []) + [label_column, "text"]
        lines = ["\t".join(header)]
        for i in range(n):
            text, label = clauses[rng.randrange(len(clauses))]
            lines.append("\t".join(([str(100 + i)] if with_index else []) + [label, text]))
        write_text_atomic(folder / f"{split}.tsv", "\n".join(lines) + "\n")
    return folder
