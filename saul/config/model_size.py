"""Parameter counts and training-memory estimates of a Mixtral config, without building the model.

Used by validation (refuse a 47B model on a laptop before anything is written) and by the
dry-run plan (tokens per step, FLOPs per token for MFU).
"""
from __future__ import annotations

from dataclasses import dataclass

# bf16 weights + bf16 grads + fp32 master weights, Adam m and v = 2+2+4+4+4 (ZeRO paper's K=12 + 4)
MIXED_PRECISION_BYTES_PER_PARAM = 16
FP32_BYTES_PER_PARAM = 16  # fp32 weights, grads, Adam m and v


@dataclass(frozen=True)
class ModelSize:
    total: int
    active: int  # parameters touched per token (top-k experts)

    def flops_per_token(self, seq_len: int, hidden: int, layers: int) -> float:
        """6N for forward+backward of active params plus the attention term (PaLM appendix B)."""
        return 6.0 * self.active + 12.0 * layers * hidden * seq_len


def count_parameters(model) -> ModelSize:
    h, f, v = model.hidden_size, model.intermediate_size, model.vocab_size
    head_dim = h // model.num_attention_heads
    attention = h * head_dim * (model.num_attention_heads * 2 + model.num_key_value_heads * 2)
    expert = 3 * h * f
    router = h * model.num_local_experts
    norms = 2 * h
    per_layer_total = attention + model.num_local_experts * expert + router + norms
    per_layer_active = attention + model.num_experts_per_tok * expert + router + norms
    embeddings = v * h * (1 if model.tie_word_embeddings else 2) + h
    layers = model.num_hidden_layers
    return ModelSize(layers * per_layer_total + embeddings, layers * per_layer_active + embeddings)


def training_state_gb_per_rank(model, world_size: int, zero3: bool) -> float:
    """Weights + grads + optimizer state per rank (activations excluded): ZeRO-3 shards it all."""
    n = count_parameters(model).total
    per_param = MIXED_PRECISION_BYTES_PER_PARAM if model.dtype == "bfloat16" else FP32_BYTES_PER_PARAM
    total = n * per_param
    return total / (world_size if zero3 else 1) / 1e9


def reference_gb_per_rank(model, world_size: int, zero3: bool) -> float:
    """DPO's reference: one frozen copy of the weights (no gradients, no optimizer state), sharded like
    the policy under ZeRO-3. Our DPO stores the reference's log-probabilities, computed by the policy
    on its starting weights before step 1, so it never holds this copy: the fit check counts it anyway,
    as an upper bound that also holds for a DPO that keeps the reference model (trl's default)."""
    n = count_parameters(model).total
    per_param = 2 if model.dtype == "bfloat16" else 4
    return n * per_param / (world_size if zero3 else 1) / 1e9
