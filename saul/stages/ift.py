"""stage=ift: instruction fine-tuning (SaulLM paper, section 4.3), loss on assistant tokens only.

Data: `ift.data` JSONL files (conversations or prompt/completion pairs, saul/posttrain/
instruct_data.py), or with none given our generated demo mix (three-turn legal conversations
grounded in the synthetic corpus + general instructions, saul/posttrain/demo_data.py).
Conversations are tokenized with the model's chat template (Mixtral's [INST] format) and packed
into rows of train.seq_len with trl's best-fit-decreasing packer (why packed: instruct_data.py).
Kept / truncated / dropped counts go to metrics.jsonl (an "event": "data" record) and to the
attempt_end ("data").

Defaults (presets/stage/ift.yaml): AdamW lr 1e-5 with a fresh optimizer (the starting point is a
stage's final/ model, which carries no optimizer state), one epoch: train.max_steps=0 means
ceil(epochs x rows / global batch) steps. Every rank builds the same rows from the same input (a
pure function of the files or the demo seed, checked by fingerprint on every resume).

Loss: the mean over every assistant token of the global batch (not a mean of micro-batch means,
which would weigh a token of a short-answer micro-batch more): each micro-batch divides its token
sum by the global count / (ranks x accumulation steps), which the engine's 1/accumulation and
DDP's 1/ranks turn back into the global mean.
"""
from __future__ import annotations

import numpy as np
import torch

from saul.stages.base import StageContext
from saul.stages.training import TrainingStage
from saul.train.loop import StepWork


class InstructWork(StepWork):
    def __init__(self, dataset, seq_len: int, tokenizer_dir, shares: int):
        super().__init__(dataset, seq_len, tokenizer_dir)
        self.shares = shares  # ranks x accumulation steps: micro-batches per optimizer step
        self.data_report = dataset.counts.as_dict()

    def batch(self, ids: np.ndarray, device: torch.device):
        return {k: v.to(device) for k, v in self.dataset.get_batch(ids).items()}

    def loss_of(self, batch, global_ids: np.ndarray):
        per_share = max(1, self.dataset.loss_tokens(global_ids)) / self.shares
        return lambda model: model(**batch, num_items_in_batch=per_share).loss


class IftStage(TrainingStage):
    name = "ift"

    def build_work(self, ctx: StageContext, init_path: str):
        from saul.posttrain.demo_data import demo_conversations
        from saul.posttrain.instruct_data import build_instruct_dataset, read_instruct_files
        from saul.stages.posttrain_inputs import demo_records, epoch_steps, file_records, find_tokenizer

        cfg, ift = ctx.cfg, ctx.cfg.ift
        tokenizer, tokenizer_dir = find_tokenizer(cfg, ctx.rundir, init_path)
        if ift.data:
            records, source = file_records(ift.data, read_instruct_files)
        else:
            records, source = demo_records(
                lambda: demo_conversations(ift.demo_conversations, cfg.seed, ift.demo_general_fraction),
                "conversations", ctx.rundir, ctx.info.is_main)
        dataset = build_instruct_dataset(records, tokenizer, cfg.train.seq_len, source)
        ctx.say(dataset.counts.describe(cfg.train.seq_len))
        epoch_steps(cfg, len(dataset), ctx.info.world_size, ift.epochs, ctx.say)
        return InstructWork(dataset, cfg.train.seq_len, tokenizer_dir, ctx.info.world_size * cfg.train.grad_accum)


STAGE = IftStage
