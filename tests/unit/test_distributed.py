"""Process groups that work on GPUs: a backend per device type (CPU-tensor helpers over gloo, GPU
tensors over NCCL/RCCL), a collective timeout longer than the hang watchdog's, and the flight
recorder switched on by the GPU site files. A CPU-only torch has no NCCL: the GPU string is
checked as torch parses it, and every collective helper runs on 2 real processes over the CPU
half of the same per-device mapping."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.distributed_c10d import BackendConfig

from saul.config.compose import compose
from saul.resilience.watchdog import DUMP_GRACE_S
from saul.train import distributed

REPO = Path(__file__).resolve().parents[2]


def test_gpu_ranks_send_cpu_tensors_over_gloo_and_gpu_tensors_over_nccl():
    gpu = distributed.backend_for(torch.device("cuda", 3))
    assert BackendConfig(gpu).get_device_backend_map() == {"cpu": "gloo", "cuda": "nccl"}
    assert BackendConfig(distributed.backend_for(torch.device("cpu"))).get_device_backend_map() == {"cpu": "gloo"}


def test_the_hang_watchdog_fires_before_a_collective_times_out():
    poll_s = 2.0
    for hang in (60.0, 900.0, 3600.0):
        timeout = distributed.collective_timeout_s(hang)
        assert timeout > hang + poll_s + DUMP_GRACE_S + 60  # detection, stack dump, kill through Slurm
    cfg = compose(["stage=cpt", "model=tiny-mixtral", "site=local", "resilience.hang_timeout_s=1800"], env={}).cfg
    assert distributed.collective_timeout_s(cfg.resilience.hang_timeout_s) > 1800 > 600  # 600: the old fixed value


@pytest.mark.parametrize("site", ["adastra", "lumi", "jean-zay"])
def test_gpu_sites_turn_on_the_flight_recorder_and_async_error_handling(site):
    env = compose(["stage=cpt", "model=mixtral-8x7b", f"site={site}", "site.account=p"], env={}).cfg.site.env
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert int(env["TORCH_NCCL_TRACE_BUFFER_SIZE"]) > 0 and int(env["TORCH_FR_BUFFER_SIZE"]) > 0
    assert env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_cpu_collective_helper_runs_on_two_real_ranks(tmp_path):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for var in distributed.TRACE_FILE_VARS:
        env.pop(var, None)
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "unit" / "distributed_worker.py"), str(rank),
                               str(port), str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in (0, 1)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in results:
        assert r["backend"] == r["torch_backend"] == "cpu:gloo"
        assert r["timeout_s"] == distributed.collective_timeout_s(900)
        assert r["broadcast_int"] == 41 and r["max"] == 3.0 and r["mean"] == 1.5
        assert r["broadcast"] == {"from": 0} and r["gather"] == [0, 10] and r["any_rank"] == [True, False]
        assert r["stop_vote"] == [2.0, 1.0]  # losses summed, one rank asked to stop
        assert r["trace_file"] == str(tmp_path / "fr" / "rank_")


def test_on_gpu_sites_the_watchdog_kills_only_after_the_collective_timed_out_and_dumped(tmp_path):
    """Stacks first (USR1), then the kill once NCCL/RCCL's own timeout has fired and written its flight
    recorder: a collective that started after the last heartbeat has timed out by then too."""
    from saul.resilience import watchdog

    events = []
    hang = 900.0
    wait = watchdog.flight_recorder_wait_s(hang)
    watchdog.act_on_hang(tmp_path, "7", "no progress", events.append, kill_after_s=wait,
                         sleep=lambda s: events.append(f"sleep {s:g}"))
    assert events == ["USR1", f"sleep {wait:g}", "KILL"]
    # The hung collective started at most one step after the last beat; the kill comes after its timeout.
    detected_at = hang + 2.0  # idle time when the watchdog fires (one poll late at most)
    assert detected_at + wait > distributed.collective_timeout_s(hang) + 30
    assert watchdog.hang_marker(tmp_path, "7").read_text() == "no progress"


def test_the_batch_script_asks_for_the_flight_recorder_wait_on_gpu_sites_only(tmp_path):
    from jobs.slurm_launcher import watchdog_lines
    from saul.rundir import RunDir

    def line(site, extra=()):
        cfg = compose(["stage=cpt", f"site={site}", "site.account=p", *extra], env={}).cfg
        return watchdog_lines(cfg, RunDir(tmp_path, "r", "cpt"))[0]

    assert " --gpu " in line("adastra", ["model=mixtral-8x7b"])
    assert "--gpu" not in line("local-slurm", ["model=tiny-mixtral"])
