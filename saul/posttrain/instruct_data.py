"""Instruction data for IFT: JSONL conversations -> Mixtral chat format -> packed training rows.

Input, one JSON object per line (several files are read in order):
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   multi-turn
    {"prompt": "...", "completion": "..."}                                           a pair
    {"prompt": [messages], "completion": [messages]}                                 a pair as turns
    {"conversations": [{"from": "user"|"assistant", "value": "..."}, ...]}          from/value keys (trl renames them)
A string pair becomes one user turn and one assistant turn: the model is then trained in the
`[INST] ... [/INST]` format it is prompted with at inference (trl would instead train a raw
prompt+completion string without the template).

Tokenization is the tokenizer's chat template with `return_assistant_tokens_mask` (what trl's
SFTTrainer does with `assistant_only_loss=True`); labels are the token ids on assistant tokens
(' ' + content + '</s>' of every assistant turn) and -100 everywhere else.

Length: a conversation longer than the sequence is cut at its end (trl's `keep_start`) and
counted as truncated; if no assistant token is left it is dropped (trl's rule: it would carry no
loss). Both counts are reported.

Packed, not padded: trl's best-fit-decreasing packer (`pack_dataset(strategy="bfd")`) fills
rows of exactly `seq_len` tokens with whole conversations. Why: instruction conversations are
far shorter than the 8192-token sequence of the mixtral presets, so padding would spend most of
every step on pad tokens; and fixed rows keep IFT in the same shape as CPT (one row = one sample
for the sampler's exact data position, constant tokens per step for the step time and tokens/s).
Conversations stay separate inside a row through `position_ids` that restart at 0 for each one,
with no attention mask: transformers then builds a block-diagonal causal mask under SDPA and runs
flash-attention's varlen kernel on GPUs, so no token attends across a conversation boundary (a
test checks a packed row gives the same loss as its conversations run alone). The unused tail of
a row is padding in its own position run, with labels -100.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from saul.posttrain.chat_template import training_chat_template
from saul.posttrain.jsonl_records import (PostTrainDataError, check_messages, check_turn_order,
                                          read_many)

IGNORE = -100  # label of a token that carries no loss (torch's cross-entropy ignore_index)
FORMAT_VERSION = 1  # bump when the rows built from the same input change


@dataclass
class InstructCounts:
    """What happened to each conversation read."""

    read: int = 0
    kept: int = 0
    truncated: int = 0  # kept, but cut to seq_len (included in kept)
    dropped: int = 0  # no assistant token within seq_len
    rows: int = 0  # packed rows of seq_len tokens
    loss_tokens: int = 0  # assistant tokens kept (label != -100)
    tokens: int = 0  # real (non-pad) tokens kept

    def as_dict(self) -> Dict[str, int]:
        return asdict(self)

    def describe(self, seq_len: int) -> str:
        fill = self.tokens / max(1, self.rows * seq_len)
        return (f"instruction data: {self.read} conversations read, {self.kept} kept "
                f"({self.truncated} truncated to {seq_len} tokens), {self.dropped} dropped (no "
                f"assistant token within {seq_len} tokens); packed into {self.rows} rows of "
                f"{seq_len} tokens ({fill:.0%} filled), {self.loss_tokens} assistant tokens")


def to_messages(obj: dict, where: str) -> List[dict]:
    """One record in any accepted shape -> a checked message list (Mixtral's turn order)."""
    if "conversations" in obj and "messages" not in obj:
        from trl.data_utils import maybe_convert_to_chatml

        try:
            obj = maybe_convert_to_chatml(copy.deepcopy(obj))  # it renames keys in place
        except (KeyError, TypeError, AttributeError):
            raise PostTrainDataError(f"{where}: 'conversations' must be a list of "
                                     "{\"from\": ..., \"value\": ...} objects") from None
    if "messages" in obj:
        messages = check_messages(obj["messages"], where)
    elif "prompt" in obj and "completion" in obj:
        prompt, completion = obj["prompt"], obj["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            messages = [{"role": "user", "content": prompt},
                        {"role": "assistant", "content": completion}]
        elif isinstance(prompt, list) and isinstance(completion, list):
            messages = (check_messages(prompt, where, "prompt")
                        + check_messages(completion, where, "completion"))
        else:
            raise PostTrainDataError(f"{where}: 'prompt' and 'completion' must both be strings or "
                                     "both be lists of messages")
    else:
        raise PostTrainDataError(f"{where}: found keys {sorted(obj)}; an instruction record needs "
                                 "'messages', or 'prompt' and 'completion'")
    check_turn_order(messages, where)
    if not any(m["role"] == "assistant" for m in messages):
        raise PostTrainDataError(f"{where}: no assistant turn, so nothing to learn from; add the "
                                 "assistant's answer")
    return messages


def tokenize_conversation(tokenizer, messages: List[dict], template: str) -> Tuple[List[int], List[int]]:
    """(input_ids, labels): labels are the ids of assistant tokens and -100 elsewhere."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, chat_template=template)
    ids = [int(t) for t in out["input_ids"]]
    labels = [t if m else IGNORE for t, m in zip(ids, out["assistant_masks"])]
    return ids, labels


def build_examples(records: Iterable[Tuple[str, dict]], tokenizer, seq_len: int
                   ) -> Tuple[List[Tuple[List[int], List[int]]], InstructCounts]:
    """Tokenized, truncated examples (unpacked) and the counts."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    template = training_chat_template(tokenizer)
    counts = InstructCounts()
    examples = []
    for where, obj in records:
        counts.read += 1
        ids, labels = tokenize_conversation(tokenizer, to_messages(obj, where), template)
        if len(ids) > seq_len:
            ids, labels = ids[:seq_len], labels[:seq_len]
            if all(label == IGNORE for label in labels[1:]):
                counts.dropped += 1
                continue
            counts.truncated += 1
        counts.kept += 1
        examples.append((ids, labels))
    return examples, counts


def _pack_rows(examples: Sequence[Tuple[List[int], List[int]]], seq_len: int) -> List[dict]:
    """trl's best-fit-decreasing packing over the whole set (one batch: the best fill)."""
    import datasets
    from datasets import Dataset
    from trl import pack_dataset

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        table = Dataset.from_dict({"input_ids": [e[0] for e in examples],
                                   "labels": [e[1] for e in examples]})
        packed = pack_dataset(table, seq_len, strategy="bfd", map_kwargs={"batch_size": None})
        return packed.to_list()
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


class InstructDataset:
    """Packed IFT rows: `input_ids`, `labels`, `position_ids`, each [rows, seq_len] int32."""

    def __init__(self, input_ids: np.ndarray, labels: np.ndarray, position_ids: np.ndarray,
                 counts: InstructCounts, source_fingerprint: str):
        self.input_ids, self.labels, self.position_ids = input_ids, labels, position_ids
        self.counts = counts
        self.seq_len = int(input_ids.shape[1])
        digest = hashlib.sha256(f"saul-instruct-v{FORMAT_VERSION}:{source_fingerprint}".encode())
        for array in (input_ids, labels, position_ids):
            digest.update(np.ascontiguousarray(array).tobytes())
        self.fingerprint = digest.hexdigest()

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def get_batch(self, ids) -> dict:
        """Rows `ids` as int64 tensors for the model: no attention mask, so that the packed
        conversations are kept apart by their position ids."""
        import torch

        ids = np.asarray(ids, dtype=np.int64)
        return {key: torch.from_numpy(getattr(self, key)[ids].astype(np.int64))
                for key in ("input_ids", "labels", "position_ids")}

    def loss_tokens(self, ids) -> int:
        """Assistant tokens in rows `ids`: the divisor of a global per-token mean."""
        return int((self.labels[np.asarray(ids, dtype=np.int64)][:, 1:] != IGNORE).sum())


def pack_examples(examples, counts: InstructCounts, seq_len: int, pad_id: int,
                  source_fingerprint: str = "") -> InstructDataset:
    if not examples:
        raise PostTrainDataError(f"no instruction example fits in seq_len={seq_len} tokens "
                                 f"({counts.read} read, {counts.dropped} dropped): raise "
                                 "train.seq_len or shorten the prompts")
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = _pack_rows(examples, seq_len)
    n = len(rows)
    input_ids = np.full((n, seq_len), pad_id, dtype=np.int32)
    labels = np.full((n, seq_len), IGNORE, dtype=np.int32)
    lengths = []
    for r, row in enumerate(rows):
        used = len(row["input_ids"])
        input_ids[r, :used] = row["input_ids"]
        labels[r, :used] = row["labels"]
        # The unused tail is one more "sequence" of padding with its own positions.
        lengths.append(list(row["seq_lengths"]) + ([seq_len - used] if used < seq_len else []))
    positions = DataCollatorForLanguageModeling.get_position_ids_from_packed_seq_lengths(lengths)
    position_ids = np.stack([p.numpy() for p in positions]).astype(np.int32)
    # The first token of each conversation is never a target (trl's padding-free rule): its
    # prediction would come from the previous conversation's last token.
    labels[position_ids == 0] = IGNORE
    counts.rows = n
    counts.loss_tokens = int((labels != IGNORE).sum())
    counts.tokens = int(sum(len(e[0]) for e in examples))
    return InstructDataset(input_ids, labels, position_ids, counts, source_fingerprint)


def build_instruct_dataset(records: Iterable[Tuple[str, dict]], tokenizer, seq_len: int,
                           source: str = "") -> InstructDataset:
    """Records -> packed dataset. `source` names the input (file hashes, generator version) in
    the fingerprint, together with the tokenizer's and the chat template's."""
    from saul.data.tokenizer import tokenizer_fingerprint

    examples, counts = build_examples(records, tokenizer, seq_len)
    template = training_chat_template(tokenizer)
    fingerprint = hashlib.sha256("\n".join(
        [source, tokenizer_fingerprint(tokenizer), template, str(seq_len)]).encode()).hexdigest()
    return pack_examples(examples, counts, seq_len, tokenizer.pad_token_id, fingerprint)


def read_instruct_files(paths: Sequence[str]) -> List[Tuple[str, dict]]:
    return list(read_many(paths))
