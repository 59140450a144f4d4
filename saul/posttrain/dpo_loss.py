"""trl's DPO loss, run inside our own step loop.

trl keeps its DPO loss in `DPOTrainer._compute_loss`, a method of a transformers Trainer. We
call that very code (every loss type, the f-divergence variants, `ld_alpha`, the MoE auxiliary
loss and the `rewards/*` figures come from trl, not from a copy) on a small host object that
carries exactly the attributes the method reads, instead of a Trainer (see the package docstring
for why the Trainer itself does not run our stages). Its two model-side requirements:
  - the policy is patched with trl's fused LM head (`prepare_policy`): the forward then returns
    per-token log-probabilities of the labels without materializing [batch, seq, vocab] logits;
  - the batch comes from trl's `DataCollatorForPreference` (`PreferenceDataset.get_batch`):
    [chosen rows; rejected rows] with a completion mask, plus the stored reference
    log-probabilities (`ref_chosen_logps`, `ref_rejected_logps`) so no reference model is kept.

Figures are per rank (trl's gathers are the identity here); the loop averages them over ranks
together with the loss, which is the global mean when every rank has the same micro-batch.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Dict, List, Sequence, Tuple

import torch

from saul.config.validate import dpo_loss_problem

# What metrics.jsonl carries, by trl's names.
REPORTED = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
            "logps/chosen", "logps/rejected")
# The per-token outputs trl's DPOTrainer asks the fused LM head for (its metrics need them).
FUSED_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


@dataclass(frozen=True)
class DpoLossSettings:
    """trl DPOConfig's loss fields (same names and defaults)."""

    beta: float = 0.1
    loss_type: Tuple[str, ...] = ("sigmoid",)
    loss_weights: Tuple[float, ...] = ()  # empty = 1.0 each
    label_smoothing: float = 0.0
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 1.0
    ld_alpha: float | None = None
    discopop_tau: float = 0.05

    def __post_init__(self):
        problem = dpo_loss_problem(self.loss_type, self.loss_weights)
        if problem:
            raise ValueError(problem)
        if self.beta <= 0:
            raise ValueError(f"dpo.beta={self.beta} is out of range: it must be > 0")

    @classmethod
    def from_config(cls, dpo_cfg) -> "DpoLossSettings":
        return cls(beta=float(dpo_cfg.beta), loss_type=tuple(dpo_cfg.loss_type),
                   loss_weights=tuple(float(w) for w in dpo_cfg.loss_weights),
                   label_smoothing=float(dpo_cfg.label_smoothing))


def prepare_policy(module) -> None:
    """Patch the HF model with trl's fused LM head (before DDP / DeepSpeed wrap it)."""
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(module, outputs=FUSED_OUTPUTS)


class _LocalGather:
    """The part of an accelerate Accelerator that trl's loss touches, for one process."""

    def __init__(self, device):
        self.device = device

    @staticmethod
    def gather(tensor):
        return tensor

    gather_for_metrics = gather

    @staticmethod
    def autocast():
        return nullcontext()


@dataclass
class DpoLoss:
    """`loss, figures = DpoLoss(settings, module)(model, batch)`.

    `module` is the unwrapped HF model (trl reads its `.training` and checkpointing flags),
    `model` the callable that runs it (the same module, or its DDP / DeepSpeed wrapper).
    """

    settings: DpoLossSettings
    module: torch.nn.Module
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self):
        s, text_config = self.settings, self.module.config.get_text_config()
        self._host = SimpleNamespace(
            beta=s.beta, loss_types=list(s.loss_type),
            loss_weights=list(s.loss_weights) or [1.0] * len(s.loss_type),
            label_smoothing=s.label_smoothing, f_divergence_type=s.f_divergence_type,
            f_alpha_divergence_coef=s.f_alpha_divergence_coef, ld_alpha=s.ld_alpha,
            use_weighting=False, precompute_ref_logps=True, ref_model=None, model=self.module,
            router_aux_loss_coef=getattr(text_config, "router_aux_loss_coef", 0.0),
            aux_loss_enabled=(hasattr(text_config, "output_router_logits")
                              and getattr(text_config, "router_aux_loss_coef", 0.0) != 0.0),
            args=SimpleNamespace(discopop_tau=s.discopop_tau, gradient_checkpointing_kwargs=None),
            accelerator=_LocalGather(self.device), _tp_size=1, _total_train_tokens=0,
            _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        )

    def __call__(self, model, batch: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Loss of one micro-batch (with `ref_chosen_logps` / `ref_rejected_logps`) and trl's figures."""
        from trl import DPOTrainer

        if "ref_chosen_logps" not in batch:
            raise ValueError("the batch has no reference log-probabilities: compute them once with "
                             "reference_logps() and pass them to PreferenceDataset.get_batch")
        host = self._host
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss = DPOTrainer._compute_loss(host, model, batch, return_outputs=False)
        mode = "train" if self.module.training else "eval"
        figures = {name: float(values[-1]) for name, values in host._metrics[mode].items()
                   if name != "num_tokens" and values}
        host._metrics[mode].clear()
        return loss, figures

    @torch.no_grad()
    def reference_logps(self, model, batch: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probabilities (chosen, rejected) of the frozen model, by trl's
        `DPOTrainer.compute_ref_log_probs`. Run in eval mode; the caller's mode is restored."""
        from trl import DPOTrainer

        batch = {k: v.to(self.device) for k, v in batch.items()
                 if k not in ("ref_chosen_logps", "ref_rejected_logps")}
        was_training = self.module.training
        self.module.eval()
        try:
            with warnings.catch_warnings():  # trl reads transformers' deprecated checkpointing flag
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                chosen, rejected = DPOTrainer.compute_ref_log_probs(self._host, model, batch)
        finally:
            self.module.train(was_training)
        return chosen.detach().cpu(), rejected.detach().cpu()


def reference_logps(loss: DpoLoss, model, dataset, micro_batch: int, rank: int = 0,
                    world_size: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probabilities of every example of `dataset` (float32, indexed by example).

    Ranks split the examples in fixed batches of `micro_batch`; every rank runs the same number
    of forwards (the last rank repeats an example where the split is uneven) because ZeRO-3
    gathers parameters collectively in every forward. Results are all-gathered, so each rank
    returns the whole table.
    """
    import torch.distributed as dist

    n = len(dataset)
    per_rank = -(-n // world_size)
    per_rank = -(-per_rank // micro_batch) * micro_batch
    mine = [min(i, n - 1) for i in range(rank * per_rank, (rank + 1) * per_rank)]
    chosen, rejected = [], []
    for start in range(0, per_rank, micro_batch):
        c, r = loss.reference_logps(model, dataset.get_batch(mine[start:start + micro_batch]))
        chosen.append(c.float())
        rejected.append(r.float())
    local = (mine, torch.cat(chosen), torch.cat(rejected))
    parts: List[tuple] = [local]
    if world_size > 1 and dist.is_initialized():
        parts = [None] * world_size  # objects, not tensors: works on gloo and on NCCL alike
        dist.all_gather_object(parts, local)
    table_c, table_r = torch.empty(n, dtype=torch.float32), torch.empty(n, dtype=torch.float32)
    for idx, c, r in parts:
        table_c[idx], table_r[idx] = c, r
    return table_c, table_r


def summarize(figures: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Mean of each trl figure over micro-batches (and, by the caller, over ranks)."""
    names = sorted({k for f in figures for k in f})
    return {k: sum(f[k] for f in figures if k in f) / sum(1 for f in figures if k in f) for k in names}
