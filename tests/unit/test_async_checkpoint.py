"""Asynchronous checkpoint saves: the snapshot is independent of training, the background protocol
(files, done markers, rank 0's commit) works across real processes, and a process killed at any
point of it leaves only a `.tmp-` directory that no reader picks."""
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saul.resilience.checkpoint_interval import Cadence, choose, interval_steps, measured_costs, young_interval_s
from saul.train import checkpoint as ckpt
from saul.train.async_checkpoint import AsyncSaver, host_copy
from tests.unit.test_checkpoint import newest_valid, save

REPO = Path(__file__).resolve().parents[2]

# One rank of an asynchronous save of step 2, as its own process. `crash` names the point where the
# process SIGKILLs itself: that point's function is wrapped, nothing else changes.
RANK = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import torch
    from saul.train import async_checkpoint, checkpoint as ckpt
    root, rank, world, crash = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

    def die_at(module, name):
        def dying(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        setattr(module, name, dying)

    if crash == "before_marker":       # files written, marker not yet: as if killed mid-write
        die_at(ckpt, "write_done_marker")
    elif crash == "waiting_for_markers":  # rank 0, its marker written, the others' not yet seen
        die_at(ckpt, "collect_done_markers")
    elif crash == "before_rename":      # rank 0, manifest written, directory not yet renamed
        die_at(ckpt, "fsync_dir")
    tmp = root / ".tmp-step-00000002"
    files = {f"rng-rank{rank:05d}.pt": {"rank": rank}}
    if rank == 0:
        files["model.safetensors"] = {"w": torch.full((256, 256), 2.0)}
    saver = async_checkpoint.AsyncSaver(rank, world, timeout_s=float(os.environ.get("WAIT_S", "60")))
    saver.start(root, tmp, 2, files, {"step": 2} if rank == 0 else None, keep_last=3, blocking_s=0.0)
    print(saver.wait(), flush=True)
""")


def run_rank(root: Path, rank: int, world: int, crash: str = "", wait_s: float = 60) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RANK, str(REPO), str(root), str(rank), str(world), crash],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, WAIT_S=str(wait_s)))


def committed_step_1(root: Path) -> Path:
    save(root, 1, b"a" * 1000)
    tmp = ckpt.begin_save(root, 2)  # rank 0's part before the snapshot: a fresh temporary directory
    return tmp


def test_two_ranks_commit_through_done_markers(tmp_path):
    tmp = committed_step_1(tmp_path)
    procs = [run_rank(tmp_path, rank, 2) for rank in (1, 0)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    final = tmp_path / "step-00000002"
    manifest = ckpt.read_manifest(final)
    assert sorted(manifest["files"]) == ["model.safetensors", "rng-rank00000.pt", "rng-rank00001.pt"]
    assert manifest["state"] == {"step": 2}
    assert not list(final.glob(".done-*")) and not tmp.exists()
    assert newest_valid(tmp_path) == 2
    assert torch.equal(load_file(str(final / "model.safetensors"))["w"], torch.full((256, 256), 2.0))


@pytest.mark.parametrize("victim,crash", [(1, "before_marker"), (0, "before_marker"),
                                          (0, "waiting_for_markers"), (0, "before_rename")])
def test_a_rank_killed_during_the_background_save_leaves_only_a_tmp_directory(tmp_path, victim, crash):
    tmp = committed_step_1(tmp_path)
    procs = {rank: run_rank(tmp_path, rank, 2, crash if rank == victim else "", wait_s=1) for rank in (0, 1)}
    codes = {rank: proc.wait(timeout=120) for rank, proc in procs.items()}
    assert codes[victim] == -signal.SIGKILL
    if victim == 1:  # rank 0 gave up waiting for rank 1's marker, with the reason, and committed nothing
        assert codes[0] == 1 and "rank(s) [1] did not finish writing" in procs[0].stderr.read()
    assert [s for s, _ in ckpt.list_step_dirs(tmp_path)] == [1]
    assert newest_valid(tmp_path) == 1
    assert tmp.is_dir()  # the half-done save, which no reader lists
    if crash == "before_rename":
        assert (tmp / ckpt.MANIFEST).is_file()  # even a complete manifest does not make it a checkpoint
    # the next save clears the leftover and commits
    save(tmp_path, 2, b"b" * 1000)
    assert newest_valid(tmp_path) == 2 and not tmp.exists()


def test_the_snapshot_does_not_change_when_training_goes_on():
    live = {"w": torch.zeros(4), "state": {0: {"exp_avg": torch.ones(3), "step": torch.tensor(5.0)}},
            "groups": [{"lr": 1e-3, "betas": (0.9, 0.99), "params": [0]}]}
    snap = host_copy(live)
    live["w"].add_(1.0)
    live["state"][0]["exp_avg"].mul_(3.0)
    live["state"][0]["step"] += 1
    live["groups"][0]["lr"] = 5.0
    assert torch.equal(snap["w"], torch.zeros(4)) and torch.equal(snap["state"][0]["exp_avg"], torch.ones(3))
    assert float(snap["state"][0]["step"]) == 5.0 and snap["groups"][0]["lr"] == 1e-3
    assert snap["groups"][0]["betas"] == (0.9, 0.99)
    view = host_copy(live, copy_=False)  # the synchronous save's view writes before training moves on
    assert view["w"].data_ptr() == live["w"].data_ptr()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_background_writer_runs_at_the_lowest_priority_and_training_does_not(tmp_path):
    tmp = ckpt.begin_save(tmp_path, 1)
    saver = AsyncSaver(rank=0, world=2, timeout_s=0.5)  # waits for rank 1's marker: the thread stays alive
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    saver.start(tmp_path, tmp, 1, {"rng-rank00000.pt": {}}, {"step": 1}, keep_last=3, blocking_s=0.0)
    while not (tmp / ckpt.done_marker(0)).exists():
        time.sleep(0.005)
    assert os.getpriority(os.PRIO_PROCESS, saver._thread.native_id) == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice
    with pytest.raises(RuntimeError, match="did not finish"):
        saver.wait()


def test_a_failed_background_write_is_raised_in_the_training_thread(tmp_path):
    saver = AsyncSaver(rank=1, world=2, timeout_s=5)
    missing = tmp_path / ".tmp-step-00000003"  # rank 0 never created it: the write fails
    saver.start(tmp_path, missing, 3, {"rng-rank00001.pt": {"x": 1}}, None, keep_last=3, blocking_s=0.0)
    with pytest.raises(RuntimeError, match="asynchronous checkpoint save failed on rank 1"):
        saver.wait()
    assert not saver.in_flight and saver.wait() is None


def test_only_one_save_in_flight(tmp_path):
    tmp = ckpt.begin_save(tmp_path, 1)
    saver = AsyncSaver(rank=0, world=2, timeout_s=0.3)  # rank 1 never writes: the save stays in flight
    saver.start(tmp_path, tmp, 1, {"rng-rank00000.pt": {}}, {"step": 1}, keep_last=3, blocking_s=0.0)
    with pytest.raises(RuntimeError, match="already in flight"):
        saver.start(tmp_path, tmp, 1, {}, {"step": 1}, keep_last=3, blocking_s=0.0)
    with pytest.raises(RuntimeError, match=r"rank\(s\) \[1\] did not finish"):
        saver.wait()
    assert ckpt.list_step_dirs(tmp_path) == []


def test_youngs_save_cost_is_the_blocking_part():
    metrics = [{"event": "checkpoint", "step": 4, "seconds": 0.01, "background_s": 2.5, "mode": "async"},
               {"step": 5, "step_time_s": 0.2}]
    assert measured_costs(metrics) == (0.01, 0.2)


def test_the_interval_is_never_shorter_than_the_background_write():
    failures = [{"event": "attempt_start", "time": 0.0}, {"event": "step_restart", "class": "crash"}]
    young = young_interval_s(0.01, 100.0)  # ~1.4 s: a cheap stall and a failure every 100 s
    assert choose(5, 0.01, 0.1, failures, 2, now=100.0)["every_steps"] == interval_steps(0.01, 100.0, 0.1)
    slow_write = choose(5, 0.01, 0.1, failures, 2, now=100.0, write_s=4.0)
    assert young < 4.0 and slow_write["every_steps"] == math.ceil(4.0 / 0.1) and slow_write["write_s"] == 4.0
    fast_write = choose(5, 0.01, 0.1, failures, 2, now=100.0, write_s=0.5)
    assert fast_write["every_steps"] == interval_steps(0.01, 100.0, 0.1)  # Young's interval already covers it


def test_the_cadence_plans_with_the_newest_background_write():
    metrics = [{"event": "checkpoint", "step": 1, "seconds": 0.01, "background_s": 6.0}, {"step": 1, "step_time_s": 1.0}]
    # a failure every ~10 ms: Young's interval is far shorter than a step, the write decides
    ledger = [{"event": "attempt_start", "time": time.time() - 10}] + [{"event": "job_end", "class": "crash"}] * 1000
    written = []
    cadence = Cadence("auto", True, 2, lambda x: x, written.append, lambda: ledger, lambda: metrics)
    cadence.due(2, 1.0)  # a resumed attempt plans from the run's files
    assert written[-1]["write_s"] == 6.0 and written[-1]["every_steps"] == 6
    cadence.written(9.0)
    cadence.saved(3, 0.01)
    assert written[-1]["write_s"] == 9.0 and written[-1]["every_steps"] == 9
