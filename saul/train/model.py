"""Build the Mixtral model: random init from a preset, or an HF-format directory on local disk."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Tuple

import torch

log = logging.getLogger("saul.model")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def choose_attention(requested: str, device: torch.device) -> Tuple[str, str]:
    """(implementation, why). FlashAttention-2 only where it can run: importable and on a GPU."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        if has_flash and device.type == "cuda":
            return "flash_attention_2", "flash-attn is installed and a GPU is present"
        why = "flash-attn is not installed" if not has_flash else "no GPU on this rank"
        return "sdpa", f"{why}; using PyTorch SDPA attention"
    if requested == "flash_attention_2" and not (has_flash and device.type == "cuda"):
        raise RuntimeError(
            "model.attn_implementation=flash_attention_2 needs flash-attn and a GPU; "
            "use model.attn_implementation=auto to fall back to SDPA"
        )
    return requested, "requested by model.attn_implementation"


def mixtral_config(model_cfg, attn_impl: str):
    from transformers import MixtralConfig

    m = model_cfg
    return MixtralConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads, num_local_experts=m.num_local_experts,
        num_experts_per_tok=m.num_experts_per_tok, max_position_embeddings=m.max_position_embeddings,
        rope_theta=m.rope_theta, sliding_window=m.sliding_window, router_aux_loss_coef=m.router_aux_loss_coef,
        tie_word_embeddings=m.tie_word_embeddings, output_router_logits=True, use_cache=False,
        bos_token_id=0, eos_token_id=1, pad_token_id=3, attn_implementation=attn_impl,
    )


def build_model(model_cfg, device: torch.device, seed: int, zero3: bool = False, init_path: str = ""):
    """Same seed -> the same initial weights on every rank (DDP also broadcasts them).

    Under ZeRO-3 the caller keeps an HfDeepSpeedConfig alive, so `_from_config`/`from_pretrained`
    build the model partitioned (zero.Init) and DeepSpeed places it.
    """
    from transformers import AutoConfig, MixtralForCausalLM

    attn, why = choose_attention(model_cfg.attn_implementation, device)
    dtype = DTYPES[model_cfg.dtype]
    path = init_path or model_cfg.path
    torch.manual_seed(seed)
    if path:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        config.output_router_logits = True
        config.use_cache = False
        model = MixtralForCausalLM.from_pretrained(
            path, config=config, dtype=dtype, attn_implementation=attn, local_files_only=True
        )
    else:
        model = MixtralForCausalLM._from_config(mixtral_config(model_cfg, attn), dtype=dtype)
    if model_cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    source = f"weights from {Path(path)}" if path else f"random init (seed {seed})"
    return model if zero3 else model.to(device), f"attention: {attn} ({why}); {source}"
