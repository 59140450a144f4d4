"""The one error type of configuration problems: a single line that says what is wrong and how to fix it."""
from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(Exception):
    """Bad user input. The CLI prints `error: <message>` on one line and exits with code 2."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close candidate exists, else ''."""
    candidates = list(candidates)
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not close:
        # A misspelt leaf of a dotted key ('optim.lrr') is closer to the leaf than to the whole path.
        leaf = word.rsplit(".", 1)[-1]
        leaves = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.75)]
    return f" (did you mean '{close[0]}'?)" if close else ""
