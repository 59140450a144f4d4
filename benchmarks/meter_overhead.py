"""CPU cost of one node meter: % of one core, measured from the meter process's own cpu_times.

    python benchmarks/meter_overhead.py [--seconds 20] [--interval 1.0] [--sources pm_counters]

By default the meter reads a synthetic /sys/cray/pm_counters (node + cpu + memory + 4 accel,
rewritten at 10 Hz like a blade controller) on tmpfs; `--sources auto` meters whatever this
machine has instead. Start-up (interpreter, imports, detection) is reported separately from the
steady state, which is what a multi-hour job pays.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monitoring.meter import start_node_meter, stop_node_meter  # noqa: E402

PARTS_W = {"cpu": 180.0, "memory": 60.0, "accel0": 480.0, "accel1": 470.0, "accel2": 500.0, "accel3": 490.0}


def write_pm_counters(root: Path, stop: threading.Event) -> None:
    """A node drawing a constant ~2.3 kW, updated at 10 Hz with the Cray file format."""
    t0 = time.time()
    freshness = 0
    while True:
        elapsed = time.time() - t0
        stamp = f"{int(time.time() * 1e6)} us"
        files = {"energy": f"{int(1e6 + 2280 * elapsed)} J {stamp}", "power": f"2280 W {stamp}",
                 "generation": "1", "freshness": str(freshness), "version": "2"}
        for part, watts in PARTS_W.items():
            files[f"{part}_energy"] = f"{int(1e5 + watts * elapsed)} J {stamp}"
            files[f"{part}_power"] = f"{int(watts)} W {stamp}"
        for name, text in files.items():
            tmp = root / f".{name}.tmp"
            tmp.write_text(text + "\n")
            os.replace(tmp, root / name)
        freshness += 1
        if stop.wait(0.1):
            return


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--sources", default="pm_counters", help="pm_counters (synthetic) or auto")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    pm_root = scratch / "pm_counters"
    pm_root.mkdir()
    stop = threading.Event()
    writer = threading.Thread(target=write_pm_counters, args=(pm_root, stop), daemon=True)
    writer.start()
    time.sleep(0.2)
    synthetic = args.sources == "pm_counters"
    meter = start_node_meter(scratch / "power", "bench", "0", 0, args.interval,
                             sources=["pm_counters"] if synthetic else None,
                             pm_counters_root=pm_root if synthetic else None)
    process = psutil.Process(meter.pid)
    log = scratch / "power" / "bench.jsonl"
    while not (log.exists() and '"kind":"sample"' in log.read_text()):
        time.sleep(0.05)
    startup_cpu = cpu_seconds(process)
    wall0, cpu0 = time.monotonic(), startup_cpu
    time.sleep(args.seconds)
    wall1, cpu1 = time.monotonic(), cpu_seconds(process)
    rss_mb = process.memory_info().rss / 2**20
    stop_node_meter(meter)
    stop.set()
    writer.join()
    summary = json.loads(log.read_text().splitlines()[-1])
    log_bytes = log.stat().st_size
    shutil.rmtree(scratch, ignore_errors=True)
    steady = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
    print(f"meter source: {summary['source']}, interval {args.interval:g} s, "
          f"{summary['samples']} samples over {args.seconds:g} s")
    print(f"start-up CPU: {startup_cpu:.3f} s (interpreter, imports, detection)")
    print(f"steady-state CPU: {steady:.3f} % of one core ({1000 * (cpu1 - cpu0) / max(summary['samples'] - 1, 1):.2f} ms per sample)")
    print(f"meter RSS: {rss_mb:.1f} MiB; log size {log_bytes / max(summary['samples'], 1):.0f} bytes per sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
