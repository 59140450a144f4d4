"""Realistic raw inputs for the prepare pipeline's demo, tests and benchmark, with known answers.

`write_raw_corpus(root, seed)` writes, from saul.data.synthetic's legal documents:
    legal/pdf/      multi-page PDFs (fpdf2, DejaVu font) with a running header, "Page N of M"
                    footers, words hyphenated at line ends, one line-numbered court transcript,
                    plus a corrupt PDF
    legal/html/     pages with navigation, cookie banner and footer boilerplate around the text
    legal/dumps/    JSONL with exact duplicates, near duplicates (~1 word in 40 changed), junk
                    (keyboard mash, number tables), documents quoting LegalBench test rows, a bad
                    JSON line; a binary file and a Latin-1 text file
    replay/         general-domain JSONL;  math/  a Parquet file in row groups of 4 rows
    lm-train.txt    cleaned legal text (other seed) for training the KenLM model with lmplz
    planted.json    the answers: which doc_ids are duplicates, junk, contaminated, unreadable
`python -m saul.data.raw_corpus ROOT [--legalbench DIR] [--kenlm]` does the same from the shell.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path
from typing import Dict, List, Optional

from saul.data.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from saul.data.synthetic import generate_corpus

HEADER = "UNITED STATES DISTRICT COURT - Case No. 1:23-cv-04512 - Document 42"
_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
_LINE_CHARS = 78
_LINES_PER_PAGE = 34
_SUBJECTS = ("The river", "A small orchestra", "The village library", "Every hiker", "The old mill",
             "A young botanist", "The city council", "Our neighbour", "The museum guide", "A fisherman")
_VERBS = ("quietly visited", "carefully painted", "slowly repaired", "happily described", "often watched",
          "briefly studied", "proudly showed", "suddenly noticed", "gently cleaned", "eagerly explored")
_OBJECTS = ("the wooden bridge", "a field of sunflowers", "the autumn festival", "the mountain trail",
            "an ancient map", "the harbour lights", "a flock of geese", "the glass greenhouse")
_PLACES = ("near the valley", "after the storm", "before sunrise", "during the summer", "in the north",
           "beside the lake", "on a quiet morning", "under the bridge")


def _wrap(text: str, width: int, rng: random.Random) -> List[str]:
    """Lines of at most `width` characters; a long lower-case word at a line end is hyphenated."""
    lines: List[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            if len(line) + 1 + len(word) <= width or not line:
                line = f"{line} {word}" if line else word
                continue
            room = width - len(line) - 2
            if word.isalpha() and word.islower() and len(word) >= 8 and room >= 3 and rng.random() < 0.7:
                cut = min(room, len(word) - 3)
                lines.append(f"{line} {word[:cut]}-")
                line = word[cut:]
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def _pdf(path: Path, lines: List[str], numbered: bool) -> None:
    from fpdf import FPDF

    pages = [lines[i:i + _LINES_PER_PAGE] for i in range(0, len(lines), _LINES_PER_PAGE)]
    pdf = FPDF(format="A4")
    pdf.add_font("DejaVu", "", _FONT)
    pdf.set_auto_page_break(False)
    for p, page in enumerate(pages, 1):
        pdf.add_page()
        pdf.set_font("DejaVu", size=8)
        pdf.text(20, 12, HEADER)
        pdf.set_font("DejaVu", size=9)
        for k, line in enumerate(page):
            prefix = f"{k + 1:>2}  " if numbered else ""
            pdf.text(15, 24 + 7.5 * k, prefix + line)
        pdf.set_font("DejaVu", size=8)
        pdf.text(95, 290, f"Page {p} of {len(pages)}")
    write_bytes_atomic(path, bytes(pdf.output()), sync_dir=False)


def _html(title: str, text: str) -> str:
    paras = "".join(f"<p>{p}</p>\n" for p in text.split("\n") if p.strip())
    nav = "".join(f'<li><a href="/{x}">{x.title()}</a></li>' for x in ("home", "statutes", "opinions", "contact"))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
            f"<div class='cookie-banner'>We use cookies to improve your experience. Accept all cookies.</div>"
            f"<nav><ul>{nav}</ul></nav><main><article><h1>{title}</h1>\n{paras}</article></main>"
            f"<footer><p>Copyright 2024 Legal Information Portal. All rights reserved. Privacy policy. "
            f"Terms of use.</p></footer></body></html>")


def _near_copy(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for i in range(0, len(words), 40):
        j = min(len(words) - 1, i + rng.randrange(40))
        words[j] = rng.choice(("notwithstanding", "hereinafter", "aforesaid", "pursuant"))
    return " ".join(words)


def _legalbench_rows(legalbench: Optional[Path]) -> List[str]:
    rows: List[str] = []
    if legalbench is None or not legalbench.is_dir():
        return rows
    for test in sorted(legalbench.rglob("test.tsv")):
        with open(test, newline="", encoding="utf-8") as f:
            rows.extend(r["text"] for r in csv.DictReader(f, delimiter="\t") if r.get("text"))
    return rows


def write_raw_corpus(root: Path, seed: int = 0, num_docs: int = 48,
                     legalbench: Optional[Path] = None) -> Dict:
    """Write the raw inputs under `root`; returns (and writes) planted.json."""
    rng = random.Random(seed)
    docs = [d.text for d in generate_corpus(num_docs, seed)]
    planted: Dict[str, list] = {"exact": [], "near": [], "junk": [], "contaminated": [],
                                "unreadable": [], "pdf_sources": {}}
    pdf_dir, html_dir, dump_dir = root / "legal/pdf", root / "legal/html", root / "legal/dumps"
    for d in (pdf_dir, html_dir, dump_dir, root / "replay", root / "math"):
        d.mkdir(parents=True, exist_ok=True)
    n_pdf = max(2, num_docs // 8)
    for i in range(n_pdf):
        name = f"opinion-{i:02d}.pdf"
        _pdf(pdf_dir / name, _wrap(docs[i], _LINE_CHARS, rng), numbered=(i == 0))
        planted["pdf_sources"][name] = docs[i]
    write_bytes_atomic(pdf_dir / "corrupt.pdf", b"%PDF-1.4\n" + bytes(rng.randrange(256) for _ in range(2000)),
                       sync_dir=False)
    planted["unreadable"].append("corrupt.pdf")
    n_html = max(2, num_docs // 8)
    for i in range(n_pdf, n_pdf + n_html):
        write_text_atomic(html_dir / f"statute-{i:02d}.html", _html(f"Statute {i}", docs[i]), sync_dir=False)

    records: List[str] = []
    dump = "dump.jsonl"
    for text in docs[n_pdf + n_html:]:
        records.append(json.dumps({"text": text}))
    base = n_pdf + n_html
    for k in range(3):  # exact copies of the first dump documents (whitespace changed)
        planted["exact"].append([f"{dump}#{len(records)}", f"{dump}#{k}"])
        records.append(json.dumps({"text": docs[base + k].replace(". ", ".  ")}))
    for k in range(3, 9):
        planted["near"].append([f"{dump}#{len(records)}", f"{dump}#{k}"])
        records.append(json.dumps({"text": _near_copy(docs[base + k], rng)}))
    junk = [" ".join("".join(rng.choice("qwrtzpsdfghjklxcvbnm") for _ in range(rng.randrange(3, 9)))
                     for _ in range(200)),
            "\n".join(" ".join(f"{rng.randrange(10**6):>8}" for _ in range(8)) for _ in range(30)),
            " ".join(["buy cheap watches online best prices click here now"] * 30)]
    for text in junk:
        planted["junk"].append(f"{dump}#{len(records)}")
        records.append(json.dumps({"text": text}))
    rows = _legalbench_rows(legalbench)
    for k, row in enumerate(rows[:3]):
        planted["contaminated"].append(f"{dump}#{len(records)}")
        host = docs[(base + 10 + k) % len(docs)].split("\n\n")
        host.insert(1, row)
        records.append(json.dumps({"text": "\n\n".join(host)}))
    planted["unreadable"] += [f"{dump}#{len(records)}", f"{dump}#{len(records) + 1}"]
    records.append('{"text": "cut off mid-rec')
    records.append(json.dumps({"body": "no text field"}))
    write_text_atomic(dump_dir / dump, "\n".join(records) + "\n", sync_dir=False)
    write_bytes_atomic(dump_dir / "binary.txt", bytes(rng.randrange(256) for _ in range(4096)), sync_dir=False)
    write_bytes_atomic(dump_dir / "latin1.txt", ("Le tribunal a jugé que " * 20).encode("latin-1"), sync_dir=False)
    planted["unreadable"] += ["binary.txt", "latin1.txt"]

    general = [" ".join(f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
                        f"{rng.choice(_PLACES)}." for _ in range(14)) for _ in range(20)]
    write_text_atomic(root / "replay/wiki.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in general),
                      sync_dir=False)
    import pyarrow as pa
    import pyarrow.parquet as pq

    maths = [" ".join(f"Let x = {a} and y = {a + 3}. Then x plus y equals {2 * a + 3}, and the product "
                      f"x times y equals {a * (a + 3)}." for a in range(s, s + 8)) for s in range(0, 120, 8)]
    # Row groups of 4 problems: a small data.piece_mb cuts the file between them (saul.data.pieces).
    pq.write_table(pa.table({"text": maths}), root / "math/problems.parquet", row_group_size=4)
    lm_text = "\n".join(d.text for d in generate_corpus(200, seed + 1000))
    write_text_atomic(root / "lm-train.txt", lm_text, sync_dir=False)
    write_json_atomic(root / "planted.json", planted)
    return planted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", type=int, default=48)
    parser.add_argument("--legalbench", type=Path, default=None)
    parser.add_argument("--kenlm", action="store_true", help="also build <root>/legal.arpa with lmplz")
    args = parser.parse_args(argv)
    write_raw_corpus(args.root, args.seed, args.docs, args.legalbench)
    if args.kenlm:
        from saul.data.perplexity import build_model

        build_model([(args.root / "lm-train.txt").read_text(encoding="utf-8")], args.root / "legal.arpa")
    print(f"raw inputs in {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
