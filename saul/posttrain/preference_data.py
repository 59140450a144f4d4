"""Preference data for DPO: JSONL {"prompt", "chosen", "rejected"} -> tokenized pairs.

Each of prompt / chosen / rejected is a string or a list of messages (trl's conversational
form); a record with only "chosen" and "rejected" conversations gets its prompt extracted by
trl's `extract_prompt` (their common leading turns). Strings become one user turn and one
assistant turn each, rendered with the model's chat template, for the same reason as in
`instruct_data`: the policy comes out of IFT trained on `[INST] ... [/INST]`.

Tokenization follows trl's DPOTrainer exactly: prompt rendered alone, prompt+chosen and
prompt+rejected rendered whole, and the completions start where the tokens diverge
(`common_prefix_length`). Pairs are padded, not packed: DPO compares the chosen and rejected
completion of one prompt, and trl's `DataCollatorForPreference` lays a micro-batch out as
[chosen rows; rejected rows], right-padded to the longest.

Length (max_length = train.seq_len): a pair whose prompt alone fills the sequence is dropped
(trl's rule: no completion token would remain); a completion that runs past it is cut at the end
and the pair counted as truncated. Cutting here rather than in the collator keeps the stored
reference log-probabilities and the policy's on exactly the same tokens.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from saul.posttrain.chat_template import training_chat_template
from saul.posttrain.jsonl_records import (PostTrainDataError, check_messages, check_turn_order,
                                          read_many)

FORMAT_VERSION = 1


@dataclass
class PreferenceCounts:
    read: int = 0
    kept: int = 0
    truncated: int = 0  # kept, with a completion cut to max_length (included in kept)
    dropped: int = 0  # the prompt alone fills max_length

    def as_dict(self) -> Dict[str, int]:
        return asdict(self)

    def describe(self, max_length: int) -> str:
        return (f"preference data: {self.read} pairs read, {self.kept} kept ({self.truncated} "
                f"truncated to {max_length} tokens), {self.dropped} dropped (prompt alone fills "
                f"{max_length} tokens)")


def _as_turns(value, role: str, where: str, field: str) -> List[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return check_messages(value, where, field)


def to_conversations(obj: dict, where: str) -> Tuple[List[dict], List[dict], List[dict]]:
    """(prompt, chosen, rejected) message lists from one record."""
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise PostTrainDataError(f"{where}: missing '{key}'; a preference record needs "
                                     "'prompt', 'chosen' and 'rejected'")
    if "prompt" not in obj:
        if not (isinstance(obj["chosen"], list) and isinstance(obj["rejected"], list)):
            raise PostTrainDataError(f"{where}: missing 'prompt' (it can be left out only when "
                                     "'chosen' and 'rejected' are conversations sharing their prompt turns)")
        from trl.data_utils import extract_prompt

        obj = extract_prompt({"chosen": check_messages(obj["chosen"], where, "chosen"),
                              "rejected": check_messages(obj["rejected"], where, "rejected")})
        if not obj["prompt"]:
            raise PostTrainDataError(f"{where}: 'chosen' and 'rejected' share no leading turn, so "
                                     "there is no prompt; give 'prompt' explicitly")
    kinds = {type(obj[k]).__name__ for k in ("prompt", "chosen", "rejected")}
    if not kinds <= {"str", "list"} or len(kinds) != 1:
        raise PostTrainDataError(f"{where}: 'prompt', 'chosen' and 'rejected' must all be strings "
                                 "or all be lists of messages")
    prompt = _as_turns(obj["prompt"], "user", where, "prompt")
    chosen = _as_turns(obj["chosen"], "assistant", where, "chosen")
    rejected = _as_turns(obj["rejected"], "assistant", where, "rejected")
    check_turn_order(prompt + chosen, where)
    check_turn_order(prompt + rejected, where)
    if prompt[-1]["role"] != "user":
        raise PostTrainDataError(f"{where}: the prompt must end with a user turn (the chosen and "
                                 "rejected answers are the assistant's reply to it)")
    return prompt, chosen, rejected


def tokenize_pair(tokenizer, template: str, prompt, chosen, rejected) -> Dict[str, List[int]]:
    """trl DPOTrainer's tokenization: {"prompt_ids", "chosen_ids", "rejected_ids"}."""
    from trl.data_utils import common_prefix_length

    def render(messages, **kwargs):
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            chat_template=template, **kwargs)
        return [int(t) for t in out["input_ids"]]

    prompt_ids = render(prompt, add_generation_prompt=True)
    with_chosen, with_rejected = render(prompt + chosen), render(prompt + rejected)
    cut = min(common_prefix_length(prompt_ids, with_chosen),
              common_prefix_length(prompt_ids, with_rejected))
    return {"prompt_ids": prompt_ids[:cut], "chosen_ids": with_chosen[cut:],
            "rejected_ids": with_rejected[cut:]}


class PreferenceDataset:
    """Tokenized pairs; `get_batch` lays them out the way trl's DPO loss reads them."""

    def __init__(self, examples: List[Dict[str, List[int]]], counts: PreferenceCounts,
                 pad_id: int, source_fingerprint: str = ""):
        self.examples, self.counts, self.pad_id = examples, counts, pad_id
        digest = hashlib.sha256(f"saul-preference-v{FORMAT_VERSION}:{source_fingerprint}".encode())
        for example in examples:
            digest.update(json.dumps(example, separators=(",", ":")).encode())
        self.fingerprint = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.examples)

    def get_batch(self, ids, ref_chosen: Optional[np.ndarray] = None,
                  ref_rejected: Optional[np.ndarray] = None) -> dict:
        """trl's `DataCollatorForPreference` over examples `ids`: input_ids / attention_mask /
        completion_mask of shape [2 x len(ids), longest], chosen rows first; with the stored
        reference log-probabilities of those examples when given (arrays indexed by example)."""
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        rows = [dict(self.examples[i]) for i in ids]
        if ref_chosen is not None:
            for row, i in zip(rows, ids):
                row["ref_chosen_logps"] = float(ref_chosen[i])
                row["ref_rejected_logps"] = float(ref_rejected[i])
        batch = DataCollatorForPreference(pad_token_id=self.pad_id)(rows)
        if ref_chosen is not None:  # keep the stored dtype bitwise (the collator builds float32)
            import torch

            batch["ref_chosen_logps"] = torch.from_numpy(np.asarray(ref_chosen)[ids].copy())
            batch["ref_rejected_logps"] = torch.from_numpy(np.asarray(ref_rejected)[ids].copy())
        return batch


def build_preference_dataset(records: Iterable[Tuple[str, dict]], tokenizer, max_length: int,
                             source: str = "") -> PreferenceDataset:
    from saul.data.tokenizer import tokenizer_fingerprint

    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    template = training_chat_template(tokenizer)
    counts = PreferenceCounts()
    examples = []
    for where, obj in records:
        counts.read += 1
        pair = tokenize_pair(tokenizer, template, *to_conversations(obj, where))
        room = max_length - len(pair["prompt_ids"])
        if room <= 0:
            counts.dropped += 1
            continue
        if len(pair["chosen_ids"]) > room or len(pair["rejected_ids"]) > room:
            pair["chosen_ids"], pair["rejected_ids"] = pair["chosen_ids"][:room], pair["rejected_ids"][:room]
            counts.truncated += 1
        counts.kept += 1
        examples.append(pair)
    if not examples:
        raise PostTrainDataError(f"no preference pair fits in max_length={max_length} tokens "
                                 f"({counts.read} read, {counts.dropped} dropped): raise "
                                 "train.seq_len or shorten the prompts")
    fingerprint = hashlib.sha256("\n".join(
        [source, tokenizer_fingerprint(tokenizer), template, str(max_length)]).encode()).hexdigest()
    return PreferenceDataset(examples, counts, tokenizer.pad_token_id, fingerprint)


def read_preference_files(paths: Sequence[str]) -> List[Tuple[str, dict]]:
    return list(read_many(paths))
