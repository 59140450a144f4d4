"""benchmarks/gpu_check.py runs on a machine without a GPU, says what it skipped and why, and fails
(non-zero) when a rank cannot see its device."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run benchmarks/gpu_check.py itself")
def test_on_cpu_it_runs_the_checks_it_can_and_says_why_it_skips_the_others():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {line.split()[1]: line for line in out.stdout.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")}
    assert lines["backend"].startswith("PASS") and "cpu:gloo,cuda:nccl" in lines["backend"]
    assert lines["attention"].startswith("PASS") and "sdpa" in lines["attention"]
    for name in ("visibility", "ddp", "zero3", "bf16", "energy"):
        assert lines[name].startswith("SKIP") and "no GPU: this torch build has no GPU support" in lines[name]
    assert out.stdout.rstrip().endswith("OK: 0 check(s) failed")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs ranks that really see no GPU")
def test_a_rank_that_sees_no_device_is_a_failed_check(capsys):
    gpu_check = _module()
    report = gpu_check.Report()
    gpu_check.check_visibility(report, gpu_check.gpu_site("amd", 2), 2)
    lines = capsys.readouterr().out.splitlines()
    assert report.failed == 2
    assert lines[0].startswith("FAIL visibility local rank 0 (ROCR_VISIBLE_DEVICES=0): 0 device(s) visible")
    assert "ROCR_VISIBLE_DEVICES=1" in lines[1]
