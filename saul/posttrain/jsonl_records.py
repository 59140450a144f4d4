"""Strict reading of user-supplied JSONL (instruction and preference data).

Unlike the ledger reader (saul.resilience.ledger.read), which skips a line cut by a crash, user
data is never skipped silently: the first line that is not a JSON object stops the stage with
one error naming the file, the line and the fix.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

from saul.config.errors import ConfigError


class PostTrainDataError(ConfigError):
    """Instruction or preference data that cannot be used (exit code 2, never retried)."""


def read_jsonl(path: os.PathLike) -> List[Tuple[int, dict]]:
    """(line number, object) for every non-blank line of `path`."""
    path = Path(path)
    if not path.is_file():
        raise PostTrainDataError(f"{path}: no such file (give a JSONL file, or leave the data "
                                 "list empty to use the generated demo data)")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PostTrainDataError(f"{path}:{number}: not valid JSON ({exc.msg} at column "
                                         f"{exc.colno}); each line must be one JSON object") from None
            if not isinstance(obj, dict):
                raise PostTrainDataError(f"{path}:{number}: expected a JSON object, found "
                                         f"{type(obj).__name__}")
            records.append((number, obj))
    if not records:
        raise PostTrainDataError(f"{path}: no records (the file is empty)")
    return records


def read_many(paths: Sequence[os.PathLike]) -> Iterator[Tuple[str, dict]]:
    """('file:line', object) over several files, in order."""
    for path in paths:
        for number, obj in read_jsonl(path):
            yield f"{path}:{number}", obj


ROLES = ("system", "user", "assistant")


def check_messages(messages, where: str, field: str = "messages") -> list:
    """A list of {"role", "content"} dicts with known roles and string content."""
    if not isinstance(messages, list) or not messages:
        raise PostTrainDataError(f"{where}: '{field}' must be a non-empty list of "
                                 "{\"role\": ..., \"content\": ...} objects")
    out = []
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise PostTrainDataError(f"{where}: {field}[{k}] must be an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise PostTrainDataError(f"{where}: {field}[{k}] has role {role!r}; use one of "
                                     f"{', '.join(ROLES)}")
        if not isinstance(content, str):
            raise PostTrainDataError(f"{where}: {field}[{k}].content must be a string, found "
                                     f"{type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def check_turn_order(messages: list, where: str) -> None:
    """Mixtral's template: an optional leading system message, then user/assistant alternating."""
    body = messages[1:] if messages[0]["role"] == "system" else messages
    for k, message in enumerate(body):
        expected = "user" if k % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise PostTrainDataError(
                f"{where}: turn {k + 1} after the optional system message is {message['role']!r}, "
                f"expected {expected!r} (turns must alternate user/assistant, starting with user)")
