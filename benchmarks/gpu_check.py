"""What only a GPU machine can confirm, in one short run before the first real job.

    python benchmarks/gpu_check.py            # on a GPU node (or inside the site's container)

One line per check, `PASS`, `FAIL` or `SKIP` with the reason; exit code 1 if any check failed.
  backend      the process-group string per device type (cpu:gloo,cuda:nccl; nccl is RCCL on ROCm)
  attention    flash_attention_2 when flash-attn is importable and a GPU is present, else sdpa (said why)
  visibility   each local rank, bound as saul.binding binds it, sees exactly one device, a different one
  ddp          one real training step of the tiny model on 2 ranks (1 if the node has one GPU), bf16,
               through the same engine, process group and binding code a job uses; CPU and GPU
               collectives on the group
  zero3        the same with DeepSpeed ZeRO-3
  bf16         the device supports bf16 and the step trained in bf16 with a finite loss
  energy       the vendor's energy counter (NVML / AMD SMI) advances under a few seconds of load
On a machine without a GPU it runs the checks that need none and says which it skipped and why.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORKER_TIMEOUT_S = 300
RESULT = "RESULT "


class Report:
    def __init__(self):
        self.failed = 0

    def line(self, status: str, name: str, detail: str) -> None:
        self.failed += status == "FAIL"
        print(f"{status:4s} {name:10s} {detail}", flush=True)


def gpu_site(vendor: str, gpus: int):
    from omegaconf import OmegaConf

    return OmegaConf.create({"name": "gpu-check", "gpu_vendor": vendor, "gpus_per_node": gpus, "gpu_cpu_bind": []})


def bound_env(site, local_rank: int, world: int, port: int) -> dict:
    from saul.binding import bind_rank

    env = dict(os.environ, PYTHONPATH=str(REPO), RANK=str(local_rank), LOCAL_RANK=str(local_rank),
               WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    bind_rank(site, local_rank, environ=env)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(args: list, site, world: int) -> list:
    """Start `world` bound ranks of this script; their RESULT lines (or a failure text per rank)."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, __file__, *args], env=bound_env(site, r, world, port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    results = []
    for proc in procs:
        try:
            out = proc.communicate(timeout=WORKER_TIMEOUT_S)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0] + f"\n(no answer in {WORKER_TIMEOUT_S}s)"
        lines = [line[len(RESULT):] for line in out.splitlines() if line.startswith(RESULT)]
        results.append(json.loads(lines[-1]) if proc.returncode == 0 and lines else {"error": out[-1500:]})
    return results


# --- checks ---------------------------------------------------------------------------------------
def check_backend(report: Report) -> None:
    import torch
    from torch.distributed.distributed_c10d import BackendConfig

    from saul.train.distributed import backend_for

    mapping = BackendConfig(backend_for(torch.device("cuda", 0))).get_device_backend_map()
    ok = mapping == {"cpu": "gloo", "cuda": "nccl"}
    report.line("PASS" if ok else "FAIL", "backend", f"GPU ranks join '{backend_for(torch.device('cuda', 0))}' "
                f"(CPU tensors -> {mapping.get('cpu')}, GPU tensors -> {mapping.get('cuda')})")


def check_attention(report: Report, has_gpu: bool) -> None:
    import importlib.util

    import torch

    from saul.train.model import choose_attention

    impl, why = choose_attention("auto", torch.device("cuda" if has_gpu else "cpu"))
    flash = importlib.util.find_spec("flash_attn") is not None
    wrong = has_gpu and flash and impl != "flash_attention_2"
    report.line("FAIL" if wrong else "PASS", "attention",
                f"{impl}: {why}" + ("" if has_gpu else " (no GPU here: a GPU node would pick "
                                    f"{'flash_attention_2' if flash else 'sdpa'})"))


def check_visibility(report: Report, site, gpus: int) -> None:
    probe = ("import json, torch; n = torch.cuda.device_count(); p = torch.cuda.get_device_properties(0) if n else None;"
             "print('RESULT ' + json.dumps({'count': n, 'id': str(getattr(p, 'uuid', '')) or "
             "f\"{getattr(p, 'pci_domain_id', '?')}:{getattr(p, 'pci_bus_id', '?')}:{getattr(p, 'pci_device_id', '?')}\""
             " if p else None, 'name': p.name if p else None}))")
    seen = []
    for rank in range(min(gpus, 8)):
        env = bound_env(site, rank, 1, 0)
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        lines = [line[len(RESULT):] for line in out.stdout.splitlines() if line.startswith(RESULT)]
        got = json.loads(lines[-1]) if lines else {"count": 0, "id": None, "error": out.stderr[-500:]}
        var = "ROCR_VISIBLE_DEVICES" if site.gpu_vendor == "amd" else "CUDA_VISIBLE_DEVICES"
        ok = got["count"] == 1 and got["id"] not in seen
        seen.append(got["id"])
        report.line("PASS" if ok else "FAIL", "visibility",
                    f"local rank {rank} ({var}={env.get(var)}): {got['count']} device(s) visible, {got.get('name')} "
                    f"id {got['id']}" + ("" if ok else f" {got.get('error', '(expected exactly one, not seen before)')}"))


def check_steps(report: Report, site, gpus: int) -> list:
    world = min(2, gpus)
    bf16 = []
    for parallel in ("ddp", "zero3"):
        results = run_ranks(["--worker", parallel], site, world)
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            report.line("FAIL", parallel, f"{world} rank(s): {errors[0]}")
            continue
        r0 = results[0]
        ok = all(math.isfinite(r["loss"]) for r in results) and r0["collectives"] == [float(world), float(world)]
        report.line("PASS" if ok else "FAIL", parallel,
                    f"{world} rank(s) on {r0['device']}, backend {r0['backend']}, step {r0['step_s']:.2f}s, "
                    f"loss {r0['loss']:.4f}, CPU/GPU all_reduce {r0['collectives']}, {r0['attention']}"
                    + ("" if world == 2 else " (1 GPU: no gradient all-reduce across ranks)"))
        bf16.append((parallel, r0["param_dtype"], r0["loss"]))
    return bf16


def check_bf16(report: Report, steps: list) -> None:
    import torch

    supported = torch.cuda.is_bf16_supported()
    ok = supported and steps and all(dtype == "torch.bfloat16" and math.isfinite(loss) for _, dtype, loss in steps)
    report.line("PASS" if ok else "FAIL", "bf16",
                f"device bf16 support {supported}; steps: " + ", ".join(f"{p} params {d} loss {l:.4f}" for p, d, l in steps))


def check_energy(report: Report, vendor: str) -> None:
    import torch

    if vendor == "amd":
        from monitoring.sources.amd import AmdGpuSource as Source
    else:
        from monitoring.sources.nvml import NvmlSource as Source
    from monitoring.sources.base import SourceUnavailable

    source = Source()
    try:
        source.open()
    except SourceUnavailable as exc:
        report.line("FAIL", "energy", f"{source.name} unavailable on a GPU machine: {exc}")
        return
    try:
        before, t0 = source.read(), time.time()
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        while time.time() - t0 < 3.0:
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
        after, seconds = source.read(), time.time() - t0
    finally:
        source.close()
    deltas = [(b.device, a_.energy_j - b.energy_j) for b, a_ in zip(before, after)
              if b.energy_j is not None and a_.energy_j is not None]
    busy = max((d for _, d in deltas), default=0.0)
    report.line("PASS" if busy > 0 else "FAIL", "energy",
                f"{source.name}: {busy:.1f} J over {seconds:.1f}s of matmuls on device 0 ({busy / seconds:.0f} W); "
                + (", ".join(f"{dev} {d:.1f} J" for dev, d in deltas) if deltas else "no energy counter read"))


# --- one rank of a training step -----------------------------------------------------------------
def worker(parallel: str) -> None:
    import torch
    import torch.distributed as dist

    from saul.config.compose import compose
    from saul.train import distributed
    from saul.train.engine import make_engine

    info = distributed.rank_info()
    vendor = "amd" if torch.version.hip else "nvidia"
    device = distributed.device_for(info, gpu_site(vendor, 1))
    backend = distributed.init_process_group(info, device, distributed.collective_timeout_s(900))
    cpu, gpu = torch.ones(1), torch.ones(1, device=device)
    dist.all_reduce(cpu)
    dist.all_reduce(gpu)
    cfg = compose(["stage=cpt", "model=tiny-mixtral", "site=local", f"parallel={parallel}", "model.dtype=bfloat16",
                   "train.seq_len=256", "train.micro_batch=2", "train.grad_accum=1"], env={}).cfg
    engine = make_engine(cfg, device)
    ids = torch.randint(0, cfg.model.vocab_size, (2, 256), device=device)
    t0 = time.time()
    loss = engine.micro_step(ids, last=True)
    engine.optimizer_step()
    torch.cuda.synchronize()
    result = {"loss": loss, "step_s": time.time() - t0, "device": torch.cuda.get_device_name(device),
              "backend": backend, "collectives": [float(cpu.item()), float(gpu.item())],
              "attention": engine.describe.split(";")[0],
              "param_dtype": str(next(engine.module.parameters()).dtype)}
    print(RESULT + json.dumps(result), flush=True)
    distributed.destroy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["ddp", "zero3"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    import torch

    report = Report()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    vendor = "amd" if torch.version.hip else "nvidia"
    build = f"ROCm {torch.version.hip}" if torch.version.hip else (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only")
    print(f"torch {torch.__version__} ({build}), {gpus} GPU(s) visible", flush=True)
    check_backend(report)
    check_attention(report, gpus > 0)
    if gpus == 0:
        why = ("this torch build has no GPU support" if build == "CPU only"
               else "torch sees no device (drivers, container GPU flag, or the job's GPU request)")
        for name in ("visibility", "ddp", "zero3", "bf16", "energy"):
            report.line("SKIP", name, f"no GPU: {why}")
    else:
        site = gpu_site(vendor, gpus)
        check_visibility(report, site, gpus)
        check_bf16(report, check_steps(report, site, gpus))
        check_energy(report, vendor)
    print(f"{'FAILED' if report.failed else 'OK'}: {report.failed} check(s) failed", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
