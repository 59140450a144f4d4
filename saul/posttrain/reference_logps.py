"""The reference log-probabilities of a DPO stage: computed once, stored, reloaded on resume.

One safetensors file in the stage directory holds, for every example index i of the preference
dataset, the summed completion log-probability of chosen[i] and rejected[i] under the frozen
reference model (float32, bit for bit as computed), plus metadata naming what they belong to:
the dataset fingerprint (which examples, tokenized how) and the reference model (the stage it
came from and its weights' hash). A resumed attempt reloads the file instead of recomputing;
a file made for other data or another reference model is refused, never reused. Written with the
toolkit's atomic writer: a kill during the write leaves no file, and the next attempt recomputes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import torch

from saul.data.atomic import write_bytes_atomic

FORMAT = "saul-dpo-reference-logps"
FORMAT_VERSION = "1"
FILE_NAME = "reference_logps.safetensors"


class ReferenceLogpsMismatch(Exception):
    """The stored table belongs to other data or another reference model."""


def save_reference_logps(path: os.PathLike, chosen: torch.Tensor, rejected: torch.Tensor,
                         dataset_fingerprint: str, reference: str) -> Path:
    from safetensors.torch import save

    if chosen.shape != rejected.shape or chosen.ndim != 1:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must "
                         "be equal 1-D tables indexed by example")
    tensors = {"index": torch.arange(chosen.shape[0], dtype=torch.int64),
               "chosen": chosen.detach().cpu().contiguous(),
               "rejected": rejected.detach().cpu().contiguous()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "dataset_fingerprint": dataset_fingerprint, "reference": reference,
                "num_examples": str(chosen.shape[0])}
    return write_bytes_atomic(path, save(tensors, metadata=metadata))


def load_reference_logps(path: os.PathLike, dataset_fingerprint: str, reference: str,
                         num_examples: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) indexed by example; raises ReferenceLogpsMismatch when the file was
    made for other data, another reference model or is not such a file."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise ReferenceLogpsMismatch(f"{path}: unreadable ({exc}); delete it to recompute") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ReferenceLogpsMismatch(f"{path}: not a reference log-prob table of format "
                                     f"{FORMAT} v{FORMAT_VERSION}")
    for key, want in (("dataset_fingerprint", dataset_fingerprint), ("reference", reference)):
        if meta.get(key) != want:
            raise ReferenceLogpsMismatch(f"{path}: made for {key} {meta.get(key)!r}, this stage has "
                                         f"{want!r}; delete it to recompute")
    index = tensors.get("index")
    if index is None or index.shape != (num_examples,) or not torch.equal(
            index, torch.arange(num_examples, dtype=torch.int64)):
        raise ReferenceLogpsMismatch(f"{path}: does not cover examples 0..{num_examples - 1}")
    return tensors["chosen"], tensors["rejected"]
