"""Demo post-training data written by our own code, grounded in the synthetic legal corpus.

Instruction conversations follow SaulLM's three-turn recipe (paper section 4.3): the user shows
an excerpt of a legal document (saul.data.synthetic) and asks what it is; the assistant
reformulates it with its metadata (document type, date, parties or court, the identifier one
would cite it by); the user asks for the reasoning; the assistant explains it from the text.
General instructions (arithmetic, sorting, counting, date formats), computed so the answers are
right, are mixed in, as the paper mixes general and legal instructions.

Preference pairs share the first user turn as prompt: chosen = the grounded reformulation,
rejected = a flawed one, in turn (by example index) with a wrong citation (the identifier
altered), a wrong conclusion (another document type, date or outcome) or needless verbosity (the
right answer buried in filler). The flaws are visible in the text, so a policy trained by DPO
on them raises its reward accuracy.

Everything depends only on (seed, index): example i is the same whatever the count, and string
seeding of `random.Random` is stable across processes and Python versions.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from saul.data.atomic import write_text_atomic
from saul.data.synthetic import LegalDocument, generate_document

# Bump whenever the generated text changes (stages key their data fingerprint on it).
DEMO_VERSION = 1
FLAWS = ("wrong citation", "wrong conclusion", "needless verbosity")


@dataclass(frozen=True)
class DocumentFacts:
    """What the assistant states about a document, read back from its text."""

    kind: str  # contract | statute | opinion
    label: str  # e.g. "a supply agreement", "a statute", "an appellate opinion"
    date: str  # "" when the text gives none
    parties: str  # "A and B", or the caption
    identifier: str  # what one cites it by: "No. 08-67151", "§ 25-1230", "Section 7"
    detail: str  # governing law / title subject / disposition
    excerpt: str  # the lines the user quotes


def _first(pattern: str, text: str, default: str = "") -> str:
    match = re.search(pattern, text, flags=re.MULTILINE)
    return match.group(1).strip() if match else default


def _clip_intro(intro: str) -> str:
    """The contract's first sentence without the address and the defined-terms sentence, the
    cuts marked [...] (the excerpt has to fit the tiny model's short sequences)."""
    intro = re.sub(r" with its principal place of business at [^(]+", " [...] ", intro)
    first_sentence = re.match(r"(.+?\)\.)(\s|$)", intro)
    return first_sentence.group(1) if first_sentence else intro


def document_facts(doc: LegalDocument) -> DocumentFacts:
    lines = doc.text.splitlines()
    text = doc.text
    if doc.kind == "contract":
        title = lines[0].strip()
        intro = lines[2].strip()
        governing = next(line for line in lines if "shall be governed by" in line)
        a = _first(r"by and between (.+?), an? ", intro)
        b = _first(r"\), and (.+?), an? ", intro)
        return DocumentFacts(
            kind="contract", label=f"a {title.lower()}",
            date=_first(r"entered into as of (\w+ \d+, \d{4})", intro),
            parties=f"{a} and {b}", identifier=f"Section {governing.split()[0]}",
            detail="the laws of the State of "
                   + _first(r"laws of the State of ([A-Z][a-z]+(?: [A-Z][a-z]+)?)", governing),
            excerpt="\n".join([title, _clip_intro(intro), "[...]", governing.split(", without")[0] + "."]))
    if doc.kind == "statute":
        first_section = next(line for line in lines if line.startswith("§ "))
        # No date: the quoted sections carry none, and the answer states only what it shows.
        return DocumentFacts(
            kind="statute", label="a statute", date="", parties="",
            identifier=_first(r"^(§ [\d-]+)\.", first_section),
            detail=f"{lines[0].strip().title()}, {lines[1].strip().title()}",
            excerpt="\n".join(lines[:2] + [first_section] + [lines[lines.index(first_section) + 1]]))
    caption_end = next(k for k, line in enumerate(lines) if line.startswith("Before:"))
    plaintiff = _first(r"^(.+), Plaintiff-Appellant", text)
    defendant = _first(r"^(.+), Defendant-Appellee", text)
    return DocumentFacts(
        kind="opinion", label="an appellate opinion",
        date=_first(r"Filed (\w+ \d+, \d{4})", text), parties=f"{plaintiff} v. {defendant}",
        identifier=_first(r"^(No\. [\d-]+)", text),
        detail=lines[-1].strip().rstrip("."),
        excerpt="\n".join([line for line in lines[:caption_end] if line.strip()
                           and not line.startswith(("Appeal from", "Argued"))]
                          + [f"Filed {_first(r'Filed (.+)$', text)}", "[...]", lines[-1]]))


_ASK = ("What is this document?", "Can you tell me what this legal text is?",
        "Please summarize what kind of document this is.", "What am I looking at here?")
_WHY = ("Explain your reasoning.", "How can you tell?", "Why do you say that?",
        "What in the text supports your answer?")


def _sentence(text: str) -> str:
    # "... Realty L.P." already ends its sentence.
    return text if text.endswith(".") else text + "."


def reformulation(f: DocumentFacts) -> str:
    if f.kind == "contract":
        return (f"This is {f.label}, a contract dated {f.date} between {_sentence(f.parties)} It "
                f"is governed by {f.detail} ({f.identifier}).")
    if f.kind == "statute":
        return f"This is {f.label}: {f.detail}, beginning with {f.identifier}."
    return (f"This is {f.label} of a federal court of appeals in {f.parties}, {f.identifier}, "
            f"filed {f.date}. The judgment was {f.detail.lower()}.")


def reasoning(f: DocumentFacts) -> str:
    if f.kind == "contract":
        return ("It names two parties with their roles and says it is “entered into as of” a "
                "date, which is how contracts open; that date is the Effective Date. The "
                f"governing law clause, {f.identifier}, chooses {f.detail}.")
    if f.kind == "statute":
        return ("It is organized into a title, a chapter and numbered sections (§), and its "
                "first section defines terms for the chapter, which is how legislation is written.")
    return ("The caption names an appellant and an appellee and gives a docket number, and the "
            "court is a court of appeals; the date follows “Filed”, and the last line states "
            "the disposition.")


def _flawed(f: DocumentFacts, flaw: str, r: random.Random) -> str:
    right = reformulation(f)
    if flaw == "wrong citation":
        digits = re.findall(r"\d+", f.identifier)
        wrong_digit = str(int(digits[-1]) + r.randint(1, 9))
        wrong = f.identifier[::-1].replace(digits[-1][::-1], wrong_digit[::-1], 1)[::-1]
        return right.replace(f.identifier, wrong)
    if flaw == "wrong conclusion":
        if f.kind == "opinion":
            outcome = "REVERSED" if "AFFIRMED" not in f.detail else "REVERSED and REMANDED"
            return right.replace(f.detail.lower(), outcome.lower())
        if f.kind == "contract":
            return right.replace("a contract", "a court opinion")
        return right.replace("a statute", "a private contract")
    filler = ("It is important to note that this is a legal document. As a general matter, legal "
              "documents can be of many kinds. ")
    return (filler * r.randint(1, 2) + right + " In conclusion, as stated above, " + right[0].lower()
            + right[1:] + " I hope this helps, and please let me know if you need anything else.")


def _legal_conversation(index: int, seed: int) -> List[Dict[str, str]]:
    r = random.Random(f"saul-demo-v{DEMO_VERSION}:{seed}:legal:{index}")
    f = document_facts(generate_document(index, seed))
    return [{"role": "user", "content": f"{r.choice(_ASK)}\n\n{f.excerpt}"},
            {"role": "assistant", "content": reformulation(f)},
            {"role": "user", "content": r.choice(_WHY)},
            {"role": "assistant", "content": reasoning(f)}]


_WORDS = ("contract", "statute", "court", "appeal", "party", "clause", "section", "notice",
          "damages", "tenant", "license", "verdict", "witness", "remedy", "judge", "record")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def _general_conversation(index: int, seed: int) -> List[Dict[str, str]]:
    r = random.Random(f"saul-demo-v{DEMO_VERSION}:{seed}:general:{index}")
    task = r.randrange(5)
    if task == 0:
        a, b = r.randint(2, 99), r.randint(2, 99)
        op, value = r.choice((("+", a + b), ("-", a - b), ("*", a * b)))
        q, ans = f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}."
    elif task == 1:
        words = r.sample(_WORDS, k=r.randint(3, 6))
        q, ans = (f"Sort these words alphabetically: {', '.join(words)}.",
                  ", ".join(sorted(words)) + ".")
    elif task == 2:
        words = [r.choice(_WORDS) for _ in range(r.randint(3, 9))]
        q, ans = (f"How many words are in this sentence: “{' '.join(words)}”?",
                  f"It has {len(words)} words.")
    elif task == 3:
        y, m, d = r.randint(1990, 2024), r.randint(1, 12), r.randint(1, 28)
        q, ans = (f"Write {_MONTHS[m - 1]} {d}, {y} in ISO 8601 format.", f"{y:04d}-{m:02d}-{d:02d}")
    else:
        words = r.sample(_WORDS, k=r.randint(2, 5))
        q, ans = f"Write in capital letters: {' '.join(words)}", " ".join(words).upper()
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]


def demo_conversations(num: int, seed: int, general_fraction: float = 0.25) -> List[dict]:
    """`num` records {"messages": [...]}: legal three-turn ones and general ones, interleaved
    by a fixed rule (example i is general when its draw falls under `general_fraction`)."""
    if num < 0 or not 0.0 <= general_fraction <= 1.0:
        raise ValueError(f"need num >= 0 and 0 <= general_fraction <= 1, got {num}, {general_fraction}")
    out = []
    for i in range(num):
        general = random.Random(f"saul-demo-v{DEMO_VERSION}:{seed}:mix:{i}").random() < general_fraction
        out.append({"messages": (_general_conversation if general else _legal_conversation)(i, seed)})
    return out


def demo_preference_pairs(num: int, seed: int) -> List[dict]:
    """`num` records {"prompt", "chosen", "rejected", "flaw"} as conversations (trl's form)."""
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    out = []
    for i in range(num):
        r = random.Random(f"saul-demo-v{DEMO_VERSION}:{seed}:pair:{i}")
        f = document_facts(generate_document(i, seed))
        flaw = FLAWS[i % len(FLAWS)]
        out.append({"prompt": [{"role": "user", "content": f"{r.choice(_ASK)}\n\n{f.excerpt}"}],
                    "chosen": [{"role": "assistant", "content": reformulation(f)}],
                    "rejected": [{"role": "assistant", "content": _flawed(f, flaw, r)}],
                    "flaw": flaw})
    return out


def write_jsonl(path: os.PathLike, records: List[dict]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
