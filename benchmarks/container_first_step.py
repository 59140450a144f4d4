"""Time to the first training step with the ranks inside the CPU image vs on the host Python, side by side.

    python benchmarks/container_first_step.py [--repeats 2] [--image PATH]

Starts a LocalSlurmCluster (tests/slurm_cluster.py; root, the Debian Slurm packages, Apptainer), prepares the demo
data, then submits the same 2-node tiny CPT alternately without and with `site.container.image` and prints, per
run, seconds from typing submit to the first logged step; then the medians and their ratio, and the image's size
and build time (from the stamp containers/build.sh writes beside it). The image defaults to the cached one for
this checkout's dependency files (`make image`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.container_image import cached_image  # noqa: E402
from saul.resilience import ledger  # noqa: E402
from tests.slurm_cluster import LocalSlurmCluster  # noqa: E402

SUBMIT = [sys.executable, str(REPO / "jobs" / "submit.py")]


def first_step_time(metrics: Path, timeout: float = 600) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [r for r in ledger.read(metrics) if "loss" in r]
        if steps:
            return steps[0]["time"]
        time.sleep(0.05)
    raise RuntimeError(f"no training step in {metrics} after {timeout}s")


def wait_for_end(stage: Path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(r.get("event") == "job_end" for r in ledger.read(stage / "ledger.jsonl")):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{stage}: no job_end after {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--image", type=Path, default=None)
    args = parser.parse_args()
    image = args.image or cached_image("cpu")
    if not image.is_file():
        sys.exit(f"no image at {image}: run `make image` (or pass --image)")
    ok, reason = LocalSlurmCluster.available()
    if not ok:
        sys.exit(f"cannot start the local Slurm cluster: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = LocalSlurmCluster(root / "cluster", nodes=3)
        try:
            cluster.start()
            env = cluster.client_environ({"PYTHONPATH": str(REPO)})
            subprocess.run([*SUBMIT, "stage=prepare", "model=tiny-mixtral", "site=local", f"runs_root={root}",
                            "run=data"], env=env, check=True, capture_output=True)
            times = {"host": [], "image": []}
            for i in range(args.repeats):
                for where in ("host", "image"):
                    run = f"{where}{i}"
                    extra = [f"site.container.image={image}"] if where == "image" else []
                    t0 = time.time()
                    subprocess.run([*SUBMIT, "stage=cpt", "model=tiny-mixtral", "site=local-slurm", "nodes=2",
                                    f"runs_root={root}", f"run={run}", f"data.path={root}/data/data",
                                    "train.max_steps=5", *extra], env=env, check=True, capture_output=True)
                    times[where].append(first_step_time(root / run / "cpt" / "metrics.jsonl") - t0)
                    wait_for_end(root / run / "cpt")
                    print(f"{run:8s} submit -> first step {times[where][-1]:6.1f} s", flush=True)
            host, inside = statistics.median(times["host"]), statistics.median(times["image"])
            print(f"median submit -> first step: host {host:.1f} s, in the image {inside:.1f} s, "
                  f"ratio {inside / host:.2f}")
            stamp_path = Path(f"{image}.json")
            stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
            print(f"image {image}: {image.stat().st_size / 1e6:.0f} MB, built in "
                  f"{stamp.get('build_seconds', '?')} s at revision {str(stamp.get('git_revision', '?'))[:12]}")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
