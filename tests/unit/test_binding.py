"""Each rank gets its GPU and its cores: one visibility variable per vendor, a real CPU binding or a
message saying why not, and a GPU-site rank that sees no GPU stops with exit 2 instead of training
on the CPU. The GPU runtime cannot exist here: only its answers (torch.cuda) are patched."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from saul.binding import bind_cpus, bind_rank, parse_cpu_list
from saul.config.compose import compose
from saul.config.errors import ConfigError
from saul.rundir import RunDir
from saul.train import distributed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLURM_GRES_ENV = {  # what Slurm's gres plugin exports for a job holding all 8 GCDs of a node
    "ROCR_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "HIP_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "GPU_DEVICE_ORDINAL": "0,1,2,3,4,5,6,7", "HOME": "/home/u",
}


def site(vendor: str, gpus: int, cpu_bind=(), name="test-site"):
    return OmegaConf.create({"name": name, "gpu_vendor": vendor, "gpus_per_node": gpus, "gpu_cpu_bind": list(cpu_bind)})


@pytest.fixture
def affinity():
    """Restore this process's CPU affinity after a test that changes it for real."""
    before = os.sched_getaffinity(0)
    yield before
    os.sched_setaffinity(0, before)


def test_amd_rank_sees_its_gcd_through_rocr_only():
    env = dict(SLURM_GRES_ENV)
    binding = bind_rank(site("amd", 8), 3, environ=env)
    # HIP indexes into what ROCr left: HIP_VISIBLE_DEVICES=3 on top of ROCR_VISIBLE_DEVICES=3 is no device at all.
    assert env == {"ROCR_VISIBLE_DEVICES": "3", "HOME": "/home/u"}
    assert binding.described == "ROCR_VISIBLE_DEVICES=3" and binding.cpu_problem is None


def test_nvidia_rank_sees_its_gpu_and_a_cpu_site_is_left_alone():
    env = {"HOME": "/home/u"}
    assert bind_rank(site("nvidia", 4), 2, environ=env).described == "CUDA_VISIBLE_DEVICES=2"
    assert env == {"CUDA_VISIBLE_DEVICES": "2", "HOME": "/home/u"}
    env = dict(SLURM_GRES_ENV)
    assert bind_rank(site("none", 0), 0, environ=env).described is None
    assert bind_rank(site("amd", 0), 0, environ=env).described is None  # no GPUs listed: nothing to hide
    assert env == SLURM_GRES_ENV


def test_site_cores_outside_the_task_affinity_are_applied(affinity):
    if len(affinity) < 2:
        pytest.skip("needs 2 CPUs to give the task one core and bind it to another")
    first, second = sorted(affinity)[:2]
    os.sched_setaffinity(0, {first})  # what Slurm's block distribution gave the task
    binding = bind_rank(site("amd", 8, [str(second)] * 8), 5, environ={})
    assert os.sched_getaffinity(0) == {second}
    assert binding.described == f"ROCR_VISIBLE_DEVICES=5, cores {second}" and binding.cpu_problem is None


def test_cores_slurm_already_bound_are_said_so(affinity):
    cpu = min(affinity)
    os.sched_setaffinity(0, {cpu})
    assert bind_cpus(str(cpu)) == (f"cores {cpu} (already set by Slurm)", None)


def test_cores_the_kernel_refuses_leave_the_affinity_and_say_why(affinity):
    binding = bind_rank(site("amd", 8, ["4000-4007"] * 8), 1, environ={})
    assert os.sched_getaffinity(0) == affinity
    assert "site.gpu_cpu_bind (4000-4007) could not be applied" in binding.cpu_problem
    assert "--cpu-bind=mask_cpu" in binding.cpu_problem


def test_a_rank_beyond_the_core_map_is_reported(affinity):
    binding = bind_rank(site("nvidia", 4, ["0"]), 2, environ={})
    assert "local rank 2" in binding.cpu_problem and os.sched_getaffinity(0) == affinity


def test_cpu_lists_parse_like_the_kernel_writes_them():
    assert parse_cpu_list("48-55") == list(range(48, 56))
    assert parse_cpu_list("1-3,7") == [1, 2, 3, 7]


INFO = distributed.RankInfo(9, 1, 16, 8, 1, 2, "77", "127.0.0.1", 29500, "g1042")


@pytest.mark.parametrize("available, count", [(False, 0), (True, 0)])
def test_a_gpu_site_rank_without_a_gpu_stops_with_config_error(monkeypatch, available, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "1")
    with pytest.raises(ConfigError, match=r"rank 9 \(local rank 1 on g1042\) sees no GPU on site 'adastra'.*"
                                          r"ROCR_VISIBLE_DEVICES=1.*--rocm"):
        distributed.device_for(INFO, site("amd", 8, name="adastra"))
    assert distributed.device_for(INFO, site("none", 0)) == torch.device("cpu")
    assert distributed.device_for(INFO) == torch.device("cpu")


def test_a_rank_with_its_one_visible_gpu_uses_device_0(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # ROCR_VISIBLE_DEVICES=k leaves one device
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert distributed.device_for(INFO, site("amd", 8)) == torch.device("cuda", 0) == chosen[0]


def test_stage_on_a_gpu_site_without_gpu_exits_2_and_says_the_binding_problem_once(tmp_path):
    """The real rank entry point on this GPU-less machine, as Slurm would start local rank 1 on ADASTRA."""
    cfg = compose(["stage=cpt", "model=tiny-mixtral", "site=adastra", f"runs_root={tmp_path}", "run=r",
                   "site.account=p"], env={}).cfg
    rundir = RunDir.from_config(cfg)
    rundir.root.mkdir(parents=True)
    rundir.config.write_text(OmegaConf.to_yaml(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    env.update(SLURM_GRES_ENV, SLURM_LOCALID="1", SLURM_PROCID="0", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "saul.stage_entry", str(rundir.root)], capture_output=True,
                         text=True, env=env, timeout=120, cwd=REPO)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "rank 0 bound to ROCR_VISIBLE_DEVICES=1" in out.stdout
    assert out.stdout.count("warning: CPU binding of site.gpu_cpu_bind (56-63) could not be applied") == (
        0 if {56, 57} <= os.sched_getaffinity(0) else 1)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "sees no GPU on site 'adastra'" in errors[0], out.stderr
    assert not rundir.ledger.exists()  # stopped before anything was recorded or trained
