"""Atomic, verified checkpoints: `checkpoints/step-N/` + `manifest.json`; the newest valid one wins.

Protocol (every rank takes part):
  1. rank 0 clears leftovers of crashed saves and creates `checkpoints/.tmp-step-N/`;
  2. every rank writes its own files there (the engine decides which);
  3. every rank fsyncs and hashes a 1/world share of the files (hashing a 700 GB ZeRO-3
     checkpoint on one rank would take longer than training between checkpoints);
  4. rank 0 writes manifest.json (sizes, sha256, training state), fsyncs, and renames the
     directory to `step-N`: a crash before the rename leaves only a `.tmp-` directory that no
     reader ever picks; after it, the checkpoint is complete.
There is no `latest` pointer that could outlive its target: readers list `step-*` directories,
newest first, and take the first whose manifest and files verify.

Asynchronous saves (checkpoint.async_save, saul/train/async_checkpoint.py) keep steps 1 and 4 and
replace the collectives of 2-3 by files: each rank's background thread writes, fsyncs and hashes
its own files, then writes a done marker `.done-rankR.json` (its hashes) into the temporary
directory; rank 0's thread waits for all markers, merges them into the manifest and renames. A
crash at any point before the rename again leaves only a `.tmp-` directory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from saul.data.atomic import fsync_dir, write_json_atomic

log = logging.getLogger("saul.checkpoint")

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step-(\d{8,})$")
HASH_CHUNK = 8 << 20


class CheckpointMismatch(Exception):
    """The newest checkpoint cannot continue this run as configured (other data, other batch)."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_step_dirs(root: Path) -> List[Tuple[int, Path]]:
    """Finished checkpoint directories, newest first (temporary ones are never listed)."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def relative_files(directory: Path) -> List[str]:
    return sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST
    )


def hash_share(directory: Path, files: List[str], rank: int, world: int) -> Dict[str, dict]:
    """fsync + size + sha256 of this rank's share of the files (round-robin by sorted name)."""
    out = {}
    for name in files[rank::world]:
        path = directory / name
        fsync_file(path)
        out[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def read_manifest(step_dir: Path) -> dict:
    path = step_dir / MANIFEST
    if not path.is_file():
        raise ValueError("manifest.json is missing")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"manifest.json is unreadable ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"manifest format {manifest.get('format_version')} is not {FORMAT_VERSION}")
    return manifest


def verify_share(step_dir: Path, manifest: dict, rank: int, world: int, full: bool = True) -> Optional[str]:
    """None when this rank's share of files is intact, else the reason (first problem found)."""
    names = sorted(manifest["files"])
    for name in names[rank::world]:
        want = manifest["files"][name]
        path = step_dir / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, manifest says {want['size']}"
        if full and sha256_file(path) != want["sha256"]:
            return f"{name} fails its sha256 check"
    return None


def begin_save(root: Path, step: int) -> Path:
    """Rank 0 only: a fresh temporary directory for step N (leftovers of crashed saves removed)."""
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = root / f".tmp-{step_dir_name(step)}"
    tmp.mkdir()
    return tmp


def done_marker(rank: int) -> str:
    return f".done-rank{rank:05d}.json"


def write_done_marker(tmp: Path, rank: int, files: Dict[str, dict]) -> None:
    """This rank's files in `tmp` are written, fsynced and hashed (`files`: their sizes and sha256)."""
    write_json_atomic(tmp / done_marker(rank), {"rank": rank, "files": files})


def collect_done_markers(tmp: Path, world: int) -> Optional[Dict[str, dict]]:
    """Every rank's hashed files merged, once all `world` markers are there (None while some are missing)."""
    present = {entry.name for entry in os.scandir(tmp)}  # one directory listing, not `world` stats
    if any(done_marker(rank) not in present for rank in range(world)):
        return None
    merged: Dict[str, dict] = {}
    for rank in range(world):
        merged.update(json.loads((tmp / done_marker(rank)).read_text(encoding="utf-8"))["files"])
    return merged


def wait_for_done_markers(tmp: Path, world: int, timeout_s: float) -> Dict[str, dict]:
    """Rank 0's background thread: the merged file list once every rank's marker is there; the markers are
    removed (the manifest lists the files). TimeoutError when a rank has not finished in `timeout_s`."""
    deadline = time.time() + timeout_s
    pause = 0.002
    while (merged := collect_done_markers(tmp, world)) is None:
        if time.time() > deadline:
            missing = [r for r in range(world) if not (tmp / done_marker(r)).exists()]
            raise TimeoutError(f"checkpoint {tmp.name}: rank(s) {missing[:8]} did not finish writing in {timeout_s:.0f}s")
        time.sleep(pause)
        pause = min(0.1, pause * 2)  # short saves finish fast; long ones are not polled hard
    for rank in range(world):
        (tmp / done_marker(rank)).unlink()
    return merged


def commit_save(root: Path, tmp: Path, step: int, files: Dict[str, dict], state: dict, keep_last: int) -> Path:
    """Rank 0 only, after every rank wrote and hashed its files: manifest, rename, retention."""
    manifest = {"format_version": FORMAT_VERSION, "step": step, "created": time.time(), "files": files, "state": state}
    write_json_atomic(tmp / MANIFEST, manifest)
    fsync_dir(tmp)
    final = root / step_dir_name(step)
    if final.exists():  # an invalid checkpoint of the same step (we resumed from an older one)
        trash = root / f".trash-{final.name}-{int(time.time())}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(root)
    apply_retention(root, keep_last)
    return final


def apply_retention(root: Path, keep_last: int) -> List[Path]:
    """Keep the newest `keep_last` checkpoints (the one just committed is always among them)."""
    removed = []
    for _, path in list_step_dirs(root)[keep_last:]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def check_resumable(state: dict, expected: dict) -> None:
    """Refuse to continue on other data or another global batch: the data order would silently change."""
    for key, what in (("dataset_fingerprint", "dataset"), ("global_batch", "global batch (sequences per step)"),
                      ("seq_len", "sequence length")):
        if key in expected and state.get(key) != expected[key]:
            raise CheckpointMismatch(
                f"the newest checkpoint was made with {what} {state.get(key)!r}, this run has {expected[key]!r}: "
                f"restore the original setting, or start a new run name (run=...)"
            )
    # Another world size is fine once the global batch is kept (ZeRO-3 shards are resliced: saul.train.
    # universal_checkpoint); the file layout of the other parallel mode is not.
    if expected.get("parallel") == "zero3" and state.get("parallel") != "zero3":
        raise CheckpointMismatch(
            f"the newest checkpoint was made with parallel={state.get('parallel')}, this job has parallel=zero3: "
            f"restore the original setting, or start a new run name (run=...)"
        )


def newest_state(root: Path) -> Optional[Tuple[str, dict]]:
    """(name, state) of the newest checkpoint whose manifest reads, or None."""
    for _, path in list_step_dirs(root):
        try:
            return path.name, read_manifest(path).get("state", {})
        except ValueError:
            continue
    return None


def shrunk_grad_accum(state: dict, micro_batch: int, grad_accum: int, world: int) -> Tuple[Optional[int], str]:
    """Elastic resume (resilience.allow_shrink): the grad_accum that keeps the checkpoint's global batch, and with
    it the exact sample order, on `world` ranks; (None, why) where that cannot be done.

    Any world size loads a checkpoint: fewer ranks after a node loss, and the configured size again after a
    requeue (a rank the checkpoint had no RNG state for keeps its seeded one: saul.train.engine). DDP's holds
    the whole model and optimizer; ZeRO-3's shards are resliced through DeepSpeed's universal checkpoint
    (saul.train.universal_checkpoint)."""
    old_world, global_batch = state.get("world_size"), state.get("global_batch")
    if old_world is None or old_world == world or global_batch is None:
        return grad_accum, ""
    if global_batch % (micro_batch * world):
        return None, (f"its global batch of {global_batch} sequences is not a multiple of micro_batch x ranks = "
                      f"{micro_batch} x {world}")
    return global_batch // (micro_batch * world), ""


def apply_elastic_resume(cfg, root: Path, world: int, say) -> None:
    """On the ranks, before the engine is built: with resilience.allow_shrink, a checkpoint made on more ranks
    resumes here with the grad_accum that keeps its global batch (check_layout refused what cannot). Without a
    checkpoint yet (a node lost before the first save committed), fewer ranks start over with the configured
    layout's global batch, the one every checkpoint of the run carries."""
    if not cfg.resilience.allow_shrink:
        return
    t = cfg.train
    found = newest_state(root)
    if found is None:
        configured = int(cfg.nodes) * int(cfg.nproc)
        found = ("the configured layout", {"world_size": configured,
                                           "global_batch": t.micro_batch * t.grad_accum * configured})
    name, state = found
    accum, why = shrunk_grad_accum(state, t.micro_batch, t.grad_accum, world)
    if accum is None or accum == t.grad_accum:
        return  # not a shrink, or one check_resumable refuses with the reason
    made = f"{name} was made on" if name != "the configured layout" else "no checkpoint yet, the configured layout has"
    say(f"elastic resume: {made} {state['world_size']} ranks; {world} ranks keep its global batch of "
        f"{state['global_batch']} with grad_accum {accum} (configured {t.grad_accum})")
    t.grad_accum = accum
