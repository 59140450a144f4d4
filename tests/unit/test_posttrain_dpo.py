"""trl's DPO loss in our loop: hand computation, a real DPOTrainer, stored reference
log-probabilities, and real optimisation steps on the tiny Mixtral and the demo pairs."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from transformers import PretrainedConfig
from trl.trainer.utils import FusedCausalLMOutput

from saul.config.schema import DPO_LOSS_TYPES as LOSS_TYPES, DpoConfig
from saul.posttrain.demo_data import demo_preference_pairs
from saul.posttrain.dpo_loss import DpoLoss, DpoLossSettings, prepare_policy, reference_logps
from saul.posttrain.preference_data import build_preference_dataset
from saul.posttrain.reference_logps import (ReferenceLogpsMismatch, load_reference_logps,
                                            save_reference_logps)
from tests.unit.posttrain_fixtures import tiny_model, tokenizer

# Known sequence log-probabilities of 2 pairs: policy chosen / rejected, reference chosen / rejected.
PC, PR = torch.tensor([-4.0, -7.5]), torch.tensor([-6.0, -5.0])
RC, RR = torch.tensor([-5.0, -6.5]), torch.tensor([-5.5, -5.25])


class KnownLogps(torch.nn.Module):
    """Stands in for a fused-LM-head forward: each completion's log-prob on its one token."""

    def __init__(self):
        super().__init__()
        self.config = PretrainedConfig()  # no router: no MoE auxiliary loss
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, input_ids, attention_mask, labels, fused_lm_head, **_):
        per_token = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1)
        per_token[:, -1] = torch.cat([PC, PR]) * self.scale
        zeros = torch.zeros_like(per_token)
        return FusedCausalLMOutput(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                                   is_top1=zeros.bool())


def _known_batch():
    # 2 pairs -> rows [chosen0, chosen1, rejected0, rejected1]; one prompt token, one completion token.
    return {"input_ids": torch.tensor([[5, 6]] * 4), "attention_mask": torch.ones(4, 2, dtype=torch.long),
            "completion_mask": torch.tensor([[0, 1]] * 4), "ref_chosen_logps": RC, "ref_rejected_logps": RR}


@pytest.mark.parametrize("loss_type, per_pair", [
    ("sigmoid", lambda d, b: -math.log(1 / (1 + math.exp(-b * d)))),
    ("hinge", lambda d, b: max(0.0, 1 - b * d)),
    ("ipo", lambda d, b: (d - 1 / (2 * b)) ** 2),  # one completion token: length-normalised = plain
])
def test_loss_and_figures_equal_a_hand_computation(loss_type, per_pair):
    beta = 0.1
    module = KnownLogps()
    loss, figures = DpoLoss(DpoLossSettings(beta=beta, loss_type=(loss_type,)), module)(module, _known_batch())
    deltas = [(PC[i] - RC[i] - (PR[i] - RR[i])).item() for i in range(2)]  # [1.5, -2.75]
    assert loss.item() == pytest.approx(sum(per_pair(d, beta) for d in deltas) / 2, rel=1e-6)
    chosen, rejected = beta * (PC - RC), beta * (PR - RR)
    assert figures["rewards/chosen"] == pytest.approx(chosen.mean().item(), rel=1e-6)
    assert figures["rewards/rejected"] == pytest.approx(rejected.mean().item(), rel=1e-6)
    assert figures["rewards/accuracies"] == 0.5  # pair 0 right, pair 1 wrong
    assert figures["rewards/margins"] == pytest.approx((chosen - rejected).mean().item(), rel=1e-6)
    loss.backward()  # a real graph back to the "model"
    assert module.scale.grad is not None


def test_every_trl_loss_type_runs_and_unknown_ones_are_refused():
    module = KnownLogps()
    for loss_type in LOSS_TYPES:
        smoothing = 0.1 if loss_type == "exo_pair" else 0.0
        loss, _ = DpoLoss(DpoLossSettings(loss_type=(loss_type,), label_smoothing=smoothing), module)(
            module, _known_batch())
        assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="unknown \\['sigmod'\\]"):
        DpoLossSettings(loss_type=("sigmod",))
    with pytest.raises(ValueError, match="one weight per type"):
        DpoLossSettings(loss_type=("sigmoid", "sft"), loss_weights=(1.0,))
    with pytest.raises(ValueError, match="no reference log-probabilities"):
        DpoLoss(DpoLossSettings(), module)(module, {k: v for k, v in _known_batch().items() if "ref" not in k})


def test_schema_defaults_are_trls():
    from trl import DPOConfig

    trl_defaults = {f.name: f.default for f in dataclasses.fields(DPOConfig)}
    ours = DpoConfig()
    assert ours.beta == trl_defaults["beta"] == 0.1
    assert trl_defaults["learning_rate"] == 1e-6  # what the dpo preset sets too
    settings = DpoLossSettings.from_config(ours)
    assert list(settings.loss_type) == ["sigmoid"] and settings == DpoLossSettings()


def _pairs(n: int, max_length: int = 512):
    return build_preference_dataset([(f"demo:{i}", r) for i, r in enumerate(demo_preference_pairs(n, 7))],
                                    tokenizer(), max_length)


def test_matches_a_real_trl_dpo_trainer_on_the_same_batch(tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    records = demo_preference_pairs(2, 7)
    ours_data = _pairs(2)
    policy = tiny_model()
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_length=512,
                     per_device_train_batch_size=2, disable_dropout=True)
    trl_data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(policy), args=args,
                         train_dataset=trl_data, processing_class=tokenizer())
    # Same tokens as trl's own preparation of the same records.
    assert [{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for row in trainer.train_dataset] \
        == ours_data.examples
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, trl_batch)
    trl_figures = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    prepare_policy(policy)
    dpo = DpoLoss(DpoLossSettings(), policy)
    ref_c, ref_r = reference_logps(dpo, policy, ours_data, micro_batch=2)
    policy.train()
    loss, figures = dpo(policy, ours_data.get_batch(range(2), ref_c.numpy(), ref_r.numpy()))
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert figures[name] == pytest.approx(trl_figures[name], rel=1e-4, abs=1e-5), name


def test_reference_logps_are_stored_and_reloaded_bitwise_and_refused_for_other_data(tmp_path):
    data = _pairs(3, max_length=320)
    policy = tiny_model()
    prepare_policy(policy)
    dpo = DpoLoss(DpoLossSettings(), policy)
    chosen, rejected = reference_logps(dpo, policy, data, micro_batch=2)  # 3 = one full + one padded batch
    assert chosen.shape == rejected.shape == (3,) and bool((chosen < 0).all())
    alone = dpo.reference_logps(policy, data.get_batch([2]))
    torch.testing.assert_close(chosen[2:], alone[0], rtol=1e-5, atol=1e-4)
    path = tmp_path / "reference_logps.safetensors"
    save_reference_logps(path, chosen, rejected, data.fingerprint, "ift/final sha256:abc")
    c2, r2 = load_reference_logps(path, data.fingerprint, "ift/final sha256:abc", len(data))
    assert c2.dtype == torch.float32 and torch.equal(c2, chosen) and torch.equal(r2, rejected)
    assert c2.numpy().tobytes() == chosen.numpy().tobytes()
    with pytest.raises(ReferenceLogpsMismatch, match="dataset_fingerprint"):
        load_reference_logps(path, "other", "ift/final sha256:abc", len(data))
    with pytest.raises(ReferenceLogpsMismatch, match="reference"):
        load_reference_logps(path, data.fingerprint, "cpt/final sha256:def", len(data))
    with pytest.raises(ReferenceLogpsMismatch, match="does not cover"):
        load_reference_logps(path, data.fingerprint, "ift/final sha256:abc", len(data) + 1)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ReferenceLogpsMismatch, match="unreadable"):
        load_reference_logps(path, data.fingerprint, "ift/final sha256:abc", len(data))


def test_a_few_dpo_steps_on_the_tiny_model_raise_reward_accuracy_on_the_demo_pairs():
    data = _pairs(8, max_length=320)
    torch.manual_seed(0)
    policy = tiny_model(seed=3)
    prepare_policy(policy)
    dpo = DpoLoss(DpoLossSettings(), policy)
    ref_c, ref_r = reference_logps(dpo, policy, data, micro_batch=4)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=2e-3)

    def evaluate():
        policy.eval()
        with torch.no_grad():
            _, figures = dpo(policy, data.get_batch(range(len(data)), ref_c.numpy(), ref_r.numpy()))
        policy.train()
        return figures

    before = evaluate()
    # policy == reference: every reward is 0 up to the float noise of other batch shapes
    assert before["rewards/accuracies"] <= 0.25 and abs(before["rewards/margins"]) < 1e-3
    for step in range(5):
        ids = [(step * 4 + k) % len(data) for k in range(4)]
        loss, _ = dpo(policy, data.get_batch(ids, ref_c.numpy(), ref_r.numpy()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert after["rewards/accuracies"] >= before["rewards/accuracies"] + 0.5
    assert after["rewards/margins"] > 0.05
