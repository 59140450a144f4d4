"""Shared, built-once inputs of the post-training tests: a tokenizer trained on the synthetic
corpus (as stage=prepare makes it) and the tiny Mixtral."""
from __future__ import annotations

import functools
import tempfile

import torch
from omegaconf import OmegaConf

from saul.config.schema import RunConfig
from saul.data.synthetic import generate_documents
from saul.data.tokenizer import load_tokenizer, train_tokenizer


@functools.lru_cache(maxsize=1)
def tokenizer_dir() -> str:
    out = tempfile.mkdtemp(prefix="posttrain-tok-")
    train_tokenizer(generate_documents(200, 1234), 1000, out)
    return out


def tokenizer():
    """A fresh tokenizer object each call (tests may set attributes on it)."""
    return load_tokenizer(tokenizer_dir())


def tiny_model(seed: int = 1):
    from saul.train.model import build_model

    cfg = OmegaConf.structured(RunConfig)
    model, _ = build_model(cfg.model, torch.device("cpu"), seed)
    return model
