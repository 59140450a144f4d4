"""ZeRO-3 checkpoints on another world size: DeepSpeed's universal checkpoint, made when it is needed.

A ZeRO-3 checkpoint (`step-N/zero3/`, DeepSpeed `save_checkpoint(tag="zero3")`) holds one shard set per
rank: each rank's flat slice of the fp32 master weights and Adam moments. Only the same world size can
load it as saved. To resume on another one (resilience.allow_shrink: fewer nodes after a loss, the
configured size again after a requeue), DeepSpeed 0.19.8's `ds_to_universal` merges the shards into one
file per parameter and state (fp32 weights, exp_avg, exp_avg_sq, plus the common optimizer state with
Adam's step) and `"checkpoint": {"load_universal": true}` re-slices them for any world size.

Why this and not PyTorch's distributed checkpoint (DCP) resharding: DeepSpeed's ZeRO-3 engine neither
saves nor loads DCP, so DCP would mean our own gather/scatter of DeepSpeed's flat optimizer partitions;
the universal format is the one DeepSpeed itself supports for stage 3, and its conversion runs on CPU.

The conversion is written next to the shards it comes from, `step-N/universal-from-W/` (W: the world
size of the shards), built under a temporary name and renamed when complete: a crash mid-way leaves only
a `.tmp-universal-*` directory that is removed and redone, never read. A later elastic resume of the same
checkpoint reuses it; retention removes it with its checkpoint. It is not part of the manifest (made
after the commit); it is derived from files the manifest verified just before (saul.train.loop).
Cost: one read of every shard and about the checkpoint's optimizer state again on disk (fp32 weights and
two moments per parameter), on rank 0 while the others wait (numbers: README, elastic resume).
"""
from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from argparse import Namespace
from pathlib import Path
from typing import Callable

from saul.data.atomic import fsync_dir, write_text_atomic

SHARD = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")
FAILED = ".universal-failed-"  # + this call's token: rank 0's reason, for the ranks waiting on it
DONE = "universal"  # the tag (sub-directory) DeepSpeed loads, inside the finished conversion directory
PARALLEL_ABOVE_BYTES = 1 << 30  # below this, worker processes cost more to start than they save


def saved_world_size(tag_dir: Path) -> int:
    """How many ranks wrote these ZeRO-3 shards (one optimizer-state file each)."""
    ranks = {int(m.group(1)) for p in tag_dir.iterdir() if (m := SHARD.match(p.name))} if tag_dir.is_dir() else set()
    if not ranks or ranks != set(range(len(ranks))):
        raise FileNotFoundError(f"{tag_dir} holds no complete set of ZeRO-3 optimizer shards (ranks found: {sorted(ranks)})")
    return len(ranks)


def conversion_dir(step_dir: Path, world: int) -> Path:
    return step_dir / f"universal-from-{world}"


def _workers(tag_dir: Path) -> int:
    size = sum(p.stat().st_size for p in tag_dir.iterdir() if p.is_file())
    if size < PARALLEL_ABOVE_BYTES:
        return 1
    return max(1, min(8, len(os.sched_getaffinity(0))))


def convert(step_dir: Path, tag: str) -> Path:
    """The universal form of `step_dir/tag`, made once: returns the directory DeepSpeed loads with
    load_dir=<it>, tag=DONE. One process only (rank 0); the others wait for it (`ensure`)."""
    tag_dir = step_dir / tag
    world = saved_world_size(tag_dir)
    final = conversion_dir(step_dir, world)
    if (final / DONE).is_dir():
        return final
    for leftover in step_dir.glob(".tmp-universal-*"):  # a conversion that crashed half-way
        shutil.rmtree(leftover, ignore_errors=True)
    from deepspeed.checkpoint import ds_to_universal

    tmp = step_dir / f".tmp-universal-from-{world}-{os.getpid()}"
    workers = _workers(tag_dir)
    t0 = time.time()
    try:
        # main() writes `latest_universal` next to its output folder: inside tmp, so nothing outside changes.
        ds_to_universal.main(Namespace(input_folder=str(tag_dir), output_folder=str(tmp / DONE),
                                       num_extract_workers=workers, num_merge_workers=max(1, workers // 2),
                                       keep_temp_folder=False, strict=True, inject_missing_state=False))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for path in sorted(tmp.rglob("*"), reverse=True):  # files, then their directories: durable before the rename
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        else:
            fsync_dir(path)
    fsync_dir(tmp)
    os.replace(tmp, final)
    fsync_dir(step_dir)
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    print(f"universal checkpoint of {step_dir.name} (ZeRO-3 shards of {world} ranks) made in {time.time() - t0:.2f}s, "
          f"{size / 1e6:.1f} MB", flush=True)  # in the rank's log, where the resume time is read
    return final


def ensure(step_dir: Path, tag: str, rank: int, broadcast: Callable[[object], object], poll_s: float = 1.0) -> Path:
    """Collective entry, file-system wait: rank 0 converts (or finds the conversion of an earlier attempt) while
    the other ranks poll for it, outside any collective, so a conversion of hours (an 8x22B checkpoint) never
    trips the process group's timeout. A failed conversion fails every rank with rank 0's reason, through a
    marker file named for this call (`broadcast`: rank 0's token to all), so no rank waits for nothing; a rank 0
    that dies mid-way ends the ranks' step (srun --kill-on-bad-exit; the local launcher does the same)."""
    token = broadcast(uuid.uuid4().hex if rank == 0 else None)
    failed = step_dir / f"{FAILED}{token}"
    if rank == 0:
        for stale in step_dir.glob(f"{FAILED}*"):
            stale.unlink(missing_ok=True)
        try:
            return convert(step_dir, tag)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            write_text_atomic(failed, reason)
            raise RuntimeError(f"converting {step_dir.name}/{tag} to a universal checkpoint failed: {reason}") from exc
    final = conversion_dir(step_dir, saved_world_size(step_dir / tag))
    while not (final / DONE).is_dir():
        if failed.is_file():
            raise RuntimeError(f"converting {step_dir.name}/{tag} to a universal checkpoint failed: "
                               f"{failed.read_text()}")
        time.sleep(poll_s)
    return final
