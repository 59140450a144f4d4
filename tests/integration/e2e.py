"""Helpers for end-to-end tests: run `jobs/submit.py` as a user would, watch metrics, find ranks."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import psutil

from saul.resilience import ledger

REPO = Path(__file__).resolve().parents[2]
SUBMIT = [sys.executable, str(REPO / "jobs" / "submit.py")]


def env_extra() -> dict:
    return {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def env() -> dict:
    e = dict(os.environ)
    e.pop("SAUL_SITE_CONFIGS", None)
    e.update(env_extra())
    return e


def submit(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*SUBMIT, *args], env=env(), capture_output=True, text=True, timeout=timeout)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*SUBMIT, *args], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def records(path: Path) -> List[dict]:
    """Every complete JSON line of a metrics or ledger file (the toolkit's own reader)."""
    return ledger.read(path)


def step_records(metrics: Path) -> List[dict]:
    return [r for r in records(metrics) if "loss" in r]


def wait_for_step(metrics: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [r["step"] for r in step_records(metrics)]
        if done and max(done) >= step:
            return max(done)
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before step {step}:\n{proc.stdout.read()}")
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def rank_processes(stage_dir: Path) -> Dict[int, psutil.Process]:
    ranks = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "saul.stage_entry" in cmd and str(stage_dir) in cmd:
            try:
                ranks[int(proc.environ().get("RANK", "0"))] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return ranks


def by_step(metrics: Path) -> Dict[int, List[dict]]:
    """step -> every record logged for it (a step redone after a crash appears once per attempt)."""
    out: Dict[int, List[dict]] = {}
    for r in step_records(metrics):
        out.setdefault(r["step"], []).append(r)
    return out
