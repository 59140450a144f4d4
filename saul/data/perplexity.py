"""Step 3: the KenLM perplexity filter, and building its model with KenLM's own `lmplz`.

Scoring (the CCNet recipe the paper follows): the document is normalized for the language model
(lower case, digits -> 0, punctuation split from words), every line is scored with sentence
boundaries, and the document's perplexity is 10 ** (-sum(log10 p) / (words + one </s> per
line)): "normalized" by length, so long and short documents compare. Documents above
data.max_perplexity (the paper: 1500) are dropped as `perplexity`.

The model: `data.kenlm_model` (ARPA or KenLM binary, loaded by the `kenlm` query module).
`build_model` trains one with `lmplz` (scripts/install-kenlm.sh compiles it from the kenlm
sdist) on cleaned legal text normalized the same way: the tests and the demo build theirs so.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, List

from saul.data.atomic import fsync_dir
from saul.data.dataset import DatasetError

_TOKEN = re.compile(r"\w+|[^\w\s]")
_DIGIT = re.compile(r"\d")


def lm_lines(text: str) -> List[str]:
    """The text as the language model sees it: one normalized line per non-empty line."""
    out = []
    for line in _DIGIT.sub("0", text.lower()).split("\n"):  # one pass over the text, not one per line
        tokens = _TOKEN.findall(line)
        if tokens:
            out.append(" ".join(tokens))
    return out


class PerplexityScorer:
    def __init__(self, model_path: os.PathLike):
        path = Path(model_path)
        if not path.is_file():
            raise DatasetError(f"data.kenlm_model={model_path}: no such file (an ARPA or KenLM binary "
                               f"model; build one with lmplz, see README)")
        try:
            import kenlm
        except ImportError:
            raise DatasetError("data.kenlm_model is set but the kenlm module is missing: "
                               "run scripts/install-kenlm.sh (or pip install kenlm)") from None
        try:
            self.model = kenlm.Model(str(path))
        except (OSError, RuntimeError) as exc:
            raise DatasetError(f"data.kenlm_model={model_path}: KenLM cannot load it "
                               f"({str(exc).splitlines()[0][:160]})") from None

    def perplexity(self, text: str) -> float:
        log10, count = 0.0, 0
        for line in lm_lines(text):
            log10 += self.model.score(line, bos=True, eos=True)
            count += line.count(" ") + 2  # words + </s>
        if count == 0:
            return float("inf")
        return 10.0 ** (-log10 / count)


def find_lmplz() -> str:
    exe = shutil.which("lmplz")
    if exe is None:
        raise DatasetError("lmplz not found: run scripts/install-kenlm.sh (builds KenLM's model "
                           "builder from the kenlm sdist)")
    return exe


def build_model(texts: Iterable[str], out_path: os.PathLike, order: int = 3,
                memory: str = "256M") -> Path:
    """Train an ARPA model with lmplz on `texts`; written atomically to `out_path`."""
    exe = find_lmplz()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lmplz-", dir=out.parent) as tmp:
        corpus = Path(tmp) / "corpus.txt"
        with open(corpus, "w", encoding="utf-8") as f:
            for text in texts:
                for line in lm_lines(text):
                    f.write(line + "\n")
        arpa = Path(tmp) / "model.arpa"
        # --discount_fallback: small corpora lack the counts-of-counts Kneser-Ney estimation needs.
        with open(corpus, "rb") as stdin, open(arpa, "wb") as stdout:
            proc = subprocess.run([exe, "-o", str(order), "-S", memory, "-T", tmp,
                                   "--discount_fallback"], stdin=stdin, stdout=stdout,
                                  stderr=subprocess.PIPE)
        if proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise DatasetError(f"lmplz failed (exit {proc.returncode}): {' | '.join(tail)}")
        os.replace(arpa, out)
    fsync_dir(out.parent)
    return out
