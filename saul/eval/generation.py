"""The model side of evaluation: load an HF-format model, greedy generation, choice log-likelihoods.

Generation is greedy (`do_sample=False`), stops at the first newline or after `max_new_tokens`,
and prompts are left-padded in a batch. Prompts longer than the model's context are cut from
the left (the task description and the first demonstrations go first, the query stays); the
caller counts them. Log-likelihood scoring follows lm-evaluation-harness's recipe: the
continuation's tokens are those of `encode(context + continuation)` after `encode(context)`, so a
merge across the boundary is scored as the model would see it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from saul.train.model import DTYPES, choose_attention


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    device: torch.device
    max_length: int
    describe: str

    def encode(self, text: str) -> List[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def load_model(path: Path, device: torch.device, dtype: str, attn_implementation: str) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    attn, why = choose_attention(attn_implementation, device)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    # Training saves router logits on and the KV cache off; generation wants the opposite.
    config.output_router_logits = False
    config.use_cache = True
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=DTYPES[dtype], attn_implementation=attn,
                                                 local_files_only=True).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_length = int(getattr(config, "max_position_embeddings", 0) or 4096)
    return LoadedModel(model, tokenizer, device, max_length, f"attention: {attn} ({why}); weights from {path}")


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate(lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int) -> Tuple[List[str], List[bool]]:
    """(greedy outputs cut at the first newline, per prompt whether it was cut to fit the context)."""
    budget = lm.max_length - max_new_tokens
    encoded = [lm.encode(p) for p in prompts]
    truncated = [len(ids) > budget for ids in encoded]
    encoded = [ids[-budget:] for ids in encoded]
    ids, mask = _left_pad(encoded, lm.tokenizer.pad_token_id, lm.device)
    out = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                            stop_strings=["\n"], tokenizer=lm.tokenizer, pad_token_id=lm.tokenizer.pad_token_id,
                            use_cache=True, temperature=None, top_p=None, top_k=None)
    texts = lm.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [t.split("\n", 1)[0] for t in texts], truncated


@torch.no_grad()
def choice_loglikelihoods(lm: LoadedModel, context: str, continuations: Sequence[str]) -> Tuple[List[float], bool]:
    """(sum of log-probabilities of each continuation's tokens after the context, whether the
    context was cut from the left to fit). One forward pass for all continuations."""
    ctx = lm.encode(context)
    conts = [lm.encode(context + c)[len(ctx):] or lm.encode(c) for c in continuations]
    room = lm.max_length - max(len(c) for c in conts)
    cut = len(ctx) > room
    ctx = ctx[-room:] if cut else ctx
    rows = [ctx + c for c in conts]
    ids, mask = _left_pad(rows, lm.tokenizer.pad_token_id, lm.device)
    logits = lm.model(input_ids=ids, attention_mask=mask).logits.float()
    logprobs = F.log_softmax(logits, dim=-1)
    width = ids.shape[1]
    scores = []
    for i, c in enumerate(conts):
        # Token at position t is predicted by the logits at t-1; the continuation fills the last len(c) slots.
        positions = torch.arange(width - len(c), width, device=ids.device)
        scores.append(float(logprobs[i, positions - 1, ids[i, positions]].sum()))
    return scores, cut


def materialize_random_init(model_cfg, seed: int, tokenizer_dir: Path, out: Path) -> Path:
    """Save the weights a run started from when it started from random init (same preset, same
    seed -> the same tensors `build_model` gave the first training stage) with its tokenizer."""
    import shutil

    from saul.train.model import build_model

    model, _ = build_model(model_cfg, torch.device("cpu"), seed)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
