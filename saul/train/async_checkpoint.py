"""Asynchronous checkpoint saves: snapshot at the step boundary, write in the background.

At a save, every rank copies the state it saves (its engine's `snapshot`: model, optimizer and
scheduler on rank 0 for DDP, every rank's RNG) into host memory and goes back to training; a
background thread writes the files, fsyncs and hashes them and writes the rank's done marker,
and rank 0's thread commits once all markers are there (the protocol: saul/train/checkpoint.py).
The thread uses no collectives, so it never competes with training for the process group, and it
runs at the lowest CPU priority (nice 19, this thread only): it uses the cores training leaves idle
(a GPU node's host cores mostly are) instead of slowing the steps it overlaps.

At most one save is in flight per rank: the next save, the end of the run and a stop wait for it
first, so a stop still ends with a complete checkpoint and the host keeps at most one extra copy
of the rank's state (rank 0 of a DDP run: model + optimizer + scheduler, about 3x the fp32
parameters for AdamW; the other ranks: a few kB of RNG state).
"""
from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from saul.train import checkpoint as ckpt

BACKGROUND_NICE = 19


def lower_this_threads_priority(nice: int = BACKGROUND_NICE) -> None:
    """Linux: setpriority on a thread id changes that thread only; elsewhere (or refused) nothing changes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass


def _host_tensor(t: torch.Tensor, copy_: bool) -> torch.Tensor:
    t = t.detach()
    if not copy_:  # a synchronous save writes before training moves on: no copy needed on the host
        return t.contiguous().cpu()
    out = torch.empty(t.shape, dtype=t.dtype, device="cpu")  # contiguous, as safetensors wants
    out.copy_(t)  # a device-to-host copy on a GPU; a plain copy on CPU
    return out


def host_copy(obj, copy_: bool = True):
    """`obj` (state dicts: nested dicts, lists, tuples, tensors, scalars) with every tensor on the host;
    with copy_, nothing shares memory with the live training state any more."""
    if isinstance(obj, torch.Tensor):
        return _host_tensor(obj, copy_)
    if isinstance(obj, dict):
        return type(obj)((k, host_copy(v, copy_)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(host_copy(v, copy_) for v in obj)
    return copy.deepcopy(obj) if copy_ else obj


def write_files(directory: Path, files: Dict[str, object]) -> None:
    """A snapshot's files: `*.safetensors` (a flat name -> tensor dict) with safetensors, the rest with torch.save."""
    from safetensors.torch import save_file

    for name, obj in files.items():
        if name.endswith(".safetensors"):
            save_file(obj, str(directory / name))
        else:
            torch.save(obj, directory / name)


class AsyncSaver:
    """One rank's background checkpoint writer; at most one save in flight."""

    def __init__(self, rank: int, world: int, timeout_s: float):
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self._thread: Optional[threading.Thread] = None
        self._result: Optional[dict] = None
        self._error: Optional[BaseException] = None

    @property
    def in_flight(self) -> bool:
        return self._thread is not None

    def start(self, root: Path, tmp: Path, step: int, files: Dict[str, object], state: Optional[dict],
              keep_last: int, blocking_s: float) -> None:
        """Write `files` (this rank's snapshot, now owned by the thread) into `tmp`; rank 0 (state given)
        commits step N once every rank's marker is there."""
        if self._thread is not None:
            raise RuntimeError("a checkpoint save is already in flight: wait() for it first")
        job = {"root": root, "tmp": tmp, "step": step, "files": files, "state": state, "keep_last": keep_last,
               "blocking_s": blocking_s}
        self._result, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(job,), name=f"checkpoint-{tmp.name}", daemon=True)
        self._thread.start()

    def _run(self, job: dict) -> None:
        t0 = time.time()
        lower_this_threads_priority()
        try:
            files = job.pop("files")
            names = sorted(files)
            write_files(job["tmp"], files)
            del files  # the host copy is freed as soon as it is on disk
            ckpt.write_done_marker(job["tmp"], self.rank, ckpt.hash_share(job["tmp"], names, 0, 1))
            if self.rank == 0:
                merged = ckpt.wait_for_done_markers(job["tmp"], self.world, self.timeout_s)
                ckpt.commit_save(job["root"], job["tmp"], job["step"], merged, job["state"], job["keep_last"])
            self._result = {"step": job["step"], "blocking_s": job["blocking_s"], "background_s": time.time() - t0}
        except BaseException as exc:  # handed to the training thread, which raises it
            self._error = exc

    def poll(self) -> Optional[dict]:
        """The finished save's timings once (None while it runs or when none is in flight); raises its error."""
        if self._thread is None or self._thread.is_alive():
            return None
        return self.wait()

    def wait(self) -> Optional[dict]:
        """Block until the save in flight is written (and, on rank 0, committed); its timings, or None."""
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"asynchronous checkpoint save failed on rank {self.rank}: {error}") from error
        return self._result
