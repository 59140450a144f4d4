"""`final/`: the HF model directory the next stage (and `from_pretrained`) loads, written shard by shard.

Mixtral 8x22B is ~281 GB in bf16 and an ADASTRA node has 256 GiB of host memory, so no rank may
gather the whole model. Every rank plans the same shards from the parameter shapes; then, one
module at a time, ZeRO-3 gathers that module's parameters on every rank (DDP already holds them),
and only the shard's owner (shard j -> rank j mod world) copies them to host memory. An owner writes
its shard in a background thread while the gathering goes on, so a rank holds at most two shards
and the writes of many ranks overlap.

Layout (as `save_pretrained` writes it): config.json, generation_config.json, model.safetensors
or model-0000k-of-0000n.safetensors + model.safetensors.index.json, the tokenizer files. Tensor
names are the checkpoint names transformers converts from on load (e.g. Mixtral's fused experts
are written per expert), via transformers' own reverse conversion.

The swap is atomic at every point: everything goes into `.tmp-final/`; then `final/` is renamed
to `.old-final/`, `.tmp-final/` to `final/`, and `.old-final/` removed. A crash leaves either a
complete `final/` or, between the two renames, none plus the complete previous one, which
`recover_final` (run first by the next export) puts back.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from saul.data.atomic import fsync_dir, write_text_atomic

FINAL, TMP, OLD = "final", ".tmp-final", ".old-final"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass
class Group:
    """The tensors of one module (not its children): gathered and converted together."""

    names: List[str] = field(default_factory=list)
    tensors: List[torch.Tensor] = field(default_factory=list)
    nbytes: int = 0


def _numel(t: torch.Tensor) -> int:
    return int(getattr(t, "ds_numel", t.numel()))  # a ZeRO-3 parameter's own numel is its local partition


def parameter_groups(model: torch.nn.Module) -> List[Group]:
    """Every tensor of the state dict once (tied weights: the first name), grouped by owning module."""
    seen, groups = set(), []
    for prefix, module in model.named_modules():
        group = Group()
        persistent = [(n, b) for n, b in module.named_buffers(recurse=False)
                      if b is not None and n not in module._non_persistent_buffers_set]
        for name, tensor in list(module.named_parameters(recurse=False)) + persistent:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            group.names.append(f"{prefix}.{name}" if prefix else name)
            group.tensors.append(tensor)
            group.nbytes += _numel(tensor) * tensor.element_size()
        if group.names:
            groups.append(group)
    return groups


def plan_shards(groups: List[Group], shard_bytes: int) -> List[List[int]]:
    """Consecutive groups per shard, a new shard once the next group would pass `shard_bytes`
    (a group larger than that gets a shard of its own: groups are never split)."""
    shards: List[List[int]] = []
    size = 0
    for index, group in enumerate(groups):
        if not shards or (size and size + group.nbytes > shard_bytes):
            shards.append([])
            size = 0
        shards[-1].append(index)
        size += group.nbytes
    return shards


def shard_file_names(count: int) -> List[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _gathered(tensors: List[torch.Tensor]):
    """ZeRO-3: the full parameters on every rank for the duration (a collective); DDP: nothing to do."""
    partitioned = [t for t in tensors if hasattr(t, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def _to_checkpoint_names(model, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """In-memory names/layout -> the names `from_pretrained` converts from (save_pretrained's own step)."""
    from transformers.core_model_loading import revert_weight_conversion

    return {name: t.contiguous() for name, t in revert_weight_conversion(model, tensors).items()}


def _write_shard(path: Path, tensors: Dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_shards(model, directory: Path, shard_bytes: int, rank: int, world: int) -> Tuple[Dict[str, str], int]:
    """Collective: every rank gathers, owners write. Returns this rank's {tensor name: file} and bytes."""
    groups = parameter_groups(model)
    plan = plan_shards(groups, shard_bytes)
    files = shard_file_names(len(plan))
    weight_map: Dict[str, str] = {}
    total = 0
    pending: Optional[Future] = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-writer") as writer:
        for shard, members in enumerate(plan):
            mine = shard % world == rank
            buffer: Dict[str, torch.Tensor] = {}
            for index in members:
                group = groups[index]
                with _gathered(group.tensors):
                    if mine:
                        full = {n: t.detach().to("cpu", copy=True) for n, t in zip(group.names, group.tensors)}
                        buffer.update(_to_checkpoint_names(model, full))
            if not mine:
                continue
            if pending is not None:
                pending.result()  # at most one shard being written while the next is filled
            weight_map.update({name: files[shard] for name in buffer})
            total += sum(t.numel() * t.element_size() for t in buffer.values())
            pending = writer.submit(_write_shard, directory / files[shard], buffer)
        if pending is not None:
            pending.result()
    return weight_map, total


def recover_final(root: Path) -> None:
    """Undo what a crash between the two renames of a swap left: put the previous final/ back."""
    final, old = root / FINAL, root / OLD
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)
            fsync_dir(root)


def swap_in(root: Path) -> Path:
    """`.tmp-final/` (complete, fsynced) becomes `final/`; the previous one is removed after."""
    final, tmp, old = root / FINAL, root / TMP, root / OLD
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(root)
    if old.exists():
        shutil.rmtree(old)
    return final


TOKENIZER_EXTRA_FILES = ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                         "vocab.json", "merges.txt")


def is_tokenizer_file(name: str) -> bool:
    """A file of a tokenizer directory (tokenizers, transformers, sentencepiece), as opposed to a model's."""
    return name.startswith("tokenizer") or name in TOKENIZER_EXTRA_FILES


def export_final(model, root: Path, shard_gb: float, rank: int, world: int, tokenizer_dir: Optional[Path],
                 barrier: Callable[[], None], gather_objects: Callable[[object], list]) -> Path:
    """Collective. `root`: the stage directory; returns `root/final`."""
    tmp = root / TMP
    if rank == 0:
        recover_final(root)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    weight_map, total = write_shards(model, tmp, max(1, int(shard_gb * 1e9)), rank, world)
    parts = gather_objects((weight_map, total))
    if rank == 0:
        merged = {name: file for part, _ in parts for name, file in part.items()}
        files = sorted(set(merged.values()))
        if files != [SINGLE_FILE]:
            index = {"metadata": {"total_size": sum(size for _, size in parts)},
                     "weight_map": dict(sorted(merged.items()))}
            write_text_atomic(tmp / INDEX_FILE, json.dumps(index, indent=2) + "\n", sync_dir=False)
        config = model.config
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer_dir is not None and tokenizer_dir.is_dir():
            # The tokenizer often sits in the starting model's final/: take its tokenizer files only,
            # never its weights, config or model card over the ones just written.
            for f in tokenizer_dir.iterdir():
                if f.is_file() and is_tokenizer_file(f.name) and not (tmp / f.name).exists():
                    shutil.copy2(f, tmp / f.name)
        fsync_dir(tmp)
        swap_in(root)
    barrier()
    return root / FINAL
