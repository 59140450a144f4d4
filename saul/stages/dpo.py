"""stage=dpo: direct preference optimization (SaulLM paper, section 4.3) with trl's DPO loss run in
our step loop (saul/posttrain/dpo_loss.py; why not trl's DPOTrainer: saul/posttrain/__init__.py).

Policy: the starting weights (model.init_from_stage=ift, or model.path). Reference: the same
weights, frozen. The reference is only ever needed through its log-probabilities of each pair's
chosen and rejected completion, so they are computed once, by the policy itself on its starting
weights before the newest checkpoint is loaded, and stored in the stage directory
(reference_logps.safetensors, saul/posttrain/reference_logps.py); every later attempt reloads
them. No second model is held while training.

Data: `dpo.data` JSONL {"prompt", "chosen", "rejected"} (strings or conversations), or with none
given our generated demo pairs (chosen = the grounded answer, rejected = a wrong citation, a wrong
conclusion or needless verbosity). Pairs are padded per micro-batch by trl's collator, not packed.

Defaults (presets/stage/dpo.yaml): AdamW lr 1e-6, beta 0.1, sigmoid loss (dpo.loss_type: any of
trl's), one epoch (train.max_steps=0). metrics.jsonl carries trl's figures per step, averaged
over micro-batches and ranks: rewards/chosen, rewards/rejected, rewards/accuracies,
rewards/margins, logps/chosen, logps/rejected, next to loss, lr and tokens/s.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from saul.config.errors import ConfigError
from saul.stages.base import StageContext
from saul.stages.training import TrainingStage
from saul.train.loop import StepWork

_PROBE = 1 << 20  # bytes read from each end of a weight file for the reference's identity


def reference_identity(cfg, init_path: str) -> str:
    """Names the reference weights: the starting directory, its config and, per weight file, its
    size and a hash of its first and last MiB (a re-trained final/ differs there; hashing all of a
    281 GB model on every attempt would cost minutes). Random init: the preset and the seed."""
    if not init_path:
        return f"random init of {cfg.model.name} (seed {cfg.seed})"
    root = Path(init_path)
    digest = hashlib.sha256((root / "config.json").read_bytes())
    for path in sorted(root.glob("*.safetensors")):
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(_PROBE)
            fh.seek(max(0, size - _PROBE))
            tail = fh.read(_PROBE)
        digest.update(f"{path.name}:{size}:".encode() + hashlib.sha256(head + tail).digest())
    return f"{root.resolve()} {digest.hexdigest()[:32]}"


class PreferenceWork(StepWork):
    def __init__(self, dataset, seq_len: int, tokenizer_dir, reference: str):
        super().__init__(dataset, seq_len, tokenizer_dir)
        self.reference = reference
        self.data_report = dataset.counts.as_dict()
        self.loss = None  # DpoLoss, once the engine holds the policy
        self.ref_chosen = self.ref_rejected = None  # float32 tables indexed by example
        self._figures = []
        lengths = [(len(e["prompt_ids"]), len(e["chosen_ids"]), len(e["rejected_ids"])) for e in dataset.examples]
        self._pair_tokens = np.array([2 * p + c + r for p, c, r in lengths], dtype=np.int64)

    def batch(self, ids: np.ndarray, device: torch.device):
        return self.dataset.get_batch(ids, self.ref_chosen, self.ref_rejected)  # DpoLoss moves it to the device

    def loss_of(self, batch, global_ids: np.ndarray):
        def loss(model):
            value, figures = self.loss(model, batch)
            self._figures.append(figures)
            return value

        return loss

    def figures(self) -> dict:
        from saul.posttrain.dpo_loss import REPORTED, summarize

        out = {k: v for k, v in summarize(self._figures).items() if k in REPORTED}
        self._figures = []
        return out

    def tokens(self, global_ids: np.ndarray) -> int:
        return int(self._pair_tokens[np.asarray(global_ids)].sum())

    def state(self) -> dict:
        return {"reference": self.reference}


class DpoStage(TrainingStage):
    name = "dpo"

    def build_work(self, ctx: StageContext, init_path: str):
        from saul.posttrain.demo_data import demo_preference_pairs
        from saul.posttrain.dpo_loss import DpoLossSettings
        from saul.posttrain.preference_data import build_preference_dataset, read_preference_files
        from saul.stages.posttrain_inputs import demo_records, epoch_steps, file_records, find_tokenizer

        cfg, dpo = ctx.cfg, ctx.cfg.dpo
        try:
            self.settings = DpoLossSettings.from_config(dpo)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        tokenizer, tokenizer_dir = find_tokenizer(cfg, ctx.rundir, init_path)
        if dpo.data:
            records, source = file_records(dpo.data, read_preference_files)
        else:
            records, source = demo_records(lambda: demo_preference_pairs(dpo.demo_pairs, cfg.seed), "pairs",
                                           ctx.rundir, ctx.info.is_main)
        dataset = build_preference_dataset(records, tokenizer, cfg.train.seq_len, source)
        ctx.say(dataset.counts.describe(cfg.train.seq_len))
        epoch_steps(cfg, len(dataset), ctx.info.world_size, dpo.epochs, ctx.say)
        return PreferenceWork(dataset, cfg.train.seq_len, tokenizer_dir, reference_identity(cfg, init_path))

    def prepare_module(self, module) -> None:
        from saul.posttrain.dpo_loss import prepare_policy

        prepare_policy(module)  # trl's fused LM head: per-token log-probs without [batch, seq, vocab] logits

    def before_resume(self, ctx: StageContext, loop) -> None:
        """The reference log-probabilities: reloaded when stored, else computed now, on the starting weights."""
        import time

        from saul.posttrain.dpo_loss import DpoLoss, reference_logps
        from saul.posttrain.reference_logps import (FILE_NAME, ReferenceLogpsMismatch, load_reference_logps,
                                                    save_reference_logps)
        from saul.train.distributed import barrier, broadcast_object

        work, engine, info = loop.work, loop.engine, ctx.info
        work.loss = DpoLoss(self.settings, engine.module, ctx.device)
        path = ctx.rundir.root / FILE_NAME
        loop.heartbeat.beat(0, "load")
        if broadcast_object(path.is_file()):
            try:
                chosen, rejected = load_reference_logps(path, work.dataset.fingerprint, work.reference,
                                                        len(work.dataset))
            except ReferenceLogpsMismatch as exc:
                raise ConfigError(str(exc)) from None
            ctx.say(f"reference log-probabilities reloaded from {path.name} ({len(chosen)} pairs)")
        else:
            t0 = time.time()
            model = engine.engine if hasattr(engine, "engine") else engine.model
            chosen, rejected = reference_logps(work.loss, model, work.dataset, ctx.cfg.train.micro_batch,
                                               info.rank, info.world_size)
            if info.is_main:
                save_reference_logps(path, chosen, rejected, work.dataset.fingerprint, work.reference)
            barrier()
            ctx.say(f"reference log-probabilities of {len(chosen)} pairs computed in {time.time() - t0:.1f}s, "
                    f"stored in {path.name}")
        work.ref_chosen, work.ref_rejected = chosen.numpy(), rejected.numpy()


STAGE = DpoStage
