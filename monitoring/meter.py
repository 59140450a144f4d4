"""The per-node power meter process, and the two calls the training launcher makes.

    python -m monitoring.meter --out <run>/<stage>/power --node <name> --job <id> --attempt <n>
        [--interval 1.0] [--sources pm_counters,amdsmi,nvml,rapl,estimate]
        [--pm-counters-root P] [--rapl-root P] [--stop-file F] [--watch-pid PID]

Exactly one meter per node and job: the launcher starts one, and an exclusive lock on
power/<node>.<job>.lock makes a second one exit 0 at once. Records are appended to
power/<node>.jsonl (schema in monitoring/power_log.py) and flushed every sample by default, so
a killed job loses at most one interval. SIGTERM, SIGINT, the stop file appearing or the watched
process dying end it with a summary record. SIGUSR2 (Slurm's pre-timeout warning) and SIGUSR1
(the hang watchdog's stack-dump request) reach every step of a job, the meter's too: it ignores
both and keeps metering until the job's teardown stops it.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Optional, Sequence

from monitoring.sampler import CheckConfig, NodeSampler
from monitoring.sources.detect import SourceOptions, detect_sources, parse_source_names
from monitoring.sources import pm_counters, rapl
from saul.process_alive import process_alive

SCHEMA_VERSION = 1
EXIT_BAD_INPUT = 2  # same meaning as saul.exit_codes.CONFIG_ERROR
EXIT_NO_SOURCE = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


METERING_LINE = "metering with"  # said once the first sample is written; start_node_meter waits for it

class BadInput(Exception):
    """A command-line value that cannot work; printed as one line, exit code 2."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the house rule for bad input), still exit 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"monitoring.meter: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m monitoring.meter",
                            description="Meter one node's power and energy into <out>/<node>.jsonl.")
    parser.add_argument("--out", required=True, help="the stage's power/ directory")
    parser.add_argument("--node", default=socket.gethostname().split(".")[0])
    parser.add_argument("--job", default=os.environ.get("SLURM_JOB_ID", "local"))
    parser.add_argument("--attempt", type=int, default=0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--flush-every", type=float, default=0.0,
                        help="seconds between flushes to the file (0: every sample)")
    parser.add_argument("--sources", default="", help="comma list; default: all, in trust order")
    parser.add_argument("--pm-counters-root", help=f"default {pm_counters.DEFAULT_ROOT}")
    parser.add_argument("--rapl-root", help=f"default {rapl.DEFAULT_ROOT}")
    parser.add_argument("--gcds-per-package", type=int,
                        help="GPU dies per package, default 2 for MI250/MI250X else 1; power and "
                             "energy are taken once per package")
    parser.add_argument("--check-window", type=float, default=CheckConfig.window_s,
                        help="seconds of start-up samples for the counter plausibility check")
    parser.add_argument("--check-factor", type=float, default=CheckConfig.max_factor,
                        help="reject a counter off from power x time by more than this factor")
    parser.add_argument("--stop-file", help="stop when this file appears")
    parser.add_argument("--watch-pid", type=int, help="stop when this process is gone")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    stop = _StopRequest()
    stop.install()  # first thing: a stop during start-up still ends with a summary record
    args = build_parser().parse_args(argv)
    try:
        names, options = _validate(args)
    except BadInput as exc:
        print(f"monitoring.meter: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = Path(args.out)
    lock = _acquire_lock(_lock_path(out, args.node, args.job))
    if lock is None:
        print(f"monitoring.meter: a meter for node {args.node} job {args.job} is already running; "
              "exiting", file=sys.stderr)
        return 0
    detection = detect_sources(names, options)
    try:
        with open(out / f"{args.node}.jsonl", "a", encoding="utf-8") as log:
            return _run(args, detection, log, stop)
    finally:
        detection.close()
        lock.close()


def _validate(args) -> tuple:
    if not args.interval > 0:
        raise BadInput(f"--interval must be > 0 seconds, got {args.interval}")
    if args.flush_every < 0:
        raise BadInput(f"--flush-every must be >= 0, got {args.flush_every}")
    if not args.check_factor > 1:
        raise BadInput(f"--check-factor must be > 1, got {args.check_factor}")
    if args.gcds_per_package is not None and args.gcds_per_package < 1:
        raise BadInput(f"--gcds-per-package must be >= 1, got {args.gcds_per_package}")
    try:
        names = parse_source_names(args.sources)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    # An explicit root that does not exist is a typo, not "this node has no such meter".
    for flag, value in (("--pm-counters-root", args.pm_counters_root), ("--rapl-root", args.rapl_root)):
        if value is not None and not Path(value).is_dir():
            raise BadInput(f"{flag} {value}: no such directory")
    if args.watch_pid is not None and not process_alive(args.watch_pid):
        raise BadInput(f"--watch-pid {args.watch_pid}: no such process")
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--out {args.out}: cannot create ({exc.strerror})") from None
    options = SourceOptions(
        pm_counters_root=Path(args.pm_counters_root or pm_counters.DEFAULT_ROOT),
        rapl_root=Path(args.rapl_root or rapl.DEFAULT_ROOT),
        gcds_per_package=args.gcds_per_package,
    )
    return names, options


def _run(args, detection, log: IO[str], stop: "_StopRequest") -> int:
    base = {"node": args.node, "job": str(args.job), "attempt": args.attempt, "source": detection.label}

    def write(kind: str, fields: dict, flush: bool = True, when: Optional[float] = None) -> None:
        record = {"kind": kind, "time": round(when or time.time(), 3), **base, **fields}
        log.write(json.dumps(record, separators=(",", ":")) + "\n")
        if flush:
            log.flush()

    write("start", {"schema": SCHEMA_VERSION, "pid": os.getpid(), "interval_s": args.interval,
                    "estimated": detection.estimated, **detection.describe()})
    if not detection.selected:
        reasons = "; ".join(f"{k}: {v}" for k, v in detection.rejected.items())
        write("summary", {"stop_reason": "no energy source", "duration_s": 0.0, "energy_j": None,
                          "mean_power_w": None, "samples": 0, "estimated": False})
        print(f"monitoring.meter: no energy source available ({reasons})", file=sys.stderr)
        return EXIT_NO_SOURCE
    sampler = NodeSampler(detection, CheckConfig(args.check_window, args.check_factor))
    stop_file = Path(args.stop_file) if args.stop_file else None
    start = time.monotonic()
    last_flush = start
    tick = taken = 0
    while True:
        now, wall = time.monotonic(), time.time()  # a sample's time is when it was read
        fields, check = sampler.sample(now)
        taken += 1
        flush = taken == 1 or stop.reason is not None or now - last_flush >= args.flush_every
        write("sample", fields, flush=flush and check is None, when=wall)
        if check is not None:
            write("check", check)
        if flush:
            last_flush = now
        if taken == 1:  # the window is open: start_node_meter's caller may start the work now
            print(f"monitoring.meter: node {args.node} job {args.job}: {METERING_LINE} {detection.label}",
                  file=sys.stderr, flush=True)
        if stop.reason is None:
            stop.poll(stop_file, args.watch_pid)
        if stop.reason is not None and taken > 1:
            break  # the sample just written carries the energy up to the stop
        # (a stop before the second sample: the wait below returns at once and one more sample closes the window)
        # Ticks on a fixed grid (no drift); after a stall, skip to the next future tick. A stop
        # during the wait wakes it, and the loop takes one last sample at the stop time.
        tick = max(tick + 1, int((time.monotonic() - start) / args.interval) + 1)
        stop.wait(start + tick * args.interval - time.monotonic())
    write("summary", {"stop_reason": stop.reason, **sampler.summary_fields()})
    return 0


class _StopRequest:
    """Why the meter should stop, set from signal handlers or by polling; wakes the sleeper."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self._event = threading.Event()

    def install(self) -> None:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        for signum in _IGNORED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _on_signal(self, signum, _frame) -> None:
        self.set(signal.Signals(signum).name)

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            self._event.wait(seconds)

    def poll(self, stop_file: Optional[Path], watch_pid: Optional[int]) -> None:
        if stop_file is not None and stop_file.exists():
            self.set(f"stop file {stop_file}")
        elif watch_pid is not None and not process_alive(watch_pid):
            self.set(f"watched process {watch_pid} gone")


def _lock_path(out: Path, node: str, job) -> Path:
    return out / f"{node}.{job}.lock"


def _acquire_lock(path: Path) -> Optional[IO]:
    """An exclusive flock held for the meter's life, or None when another meter holds it.

    The lock file is never removed: unlinking a locked file lets a late starter lock a fresh
    inode while the old one is still held.
    """
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            handle.close()
            return None
        # A filesystem without flock (some Lustre mounts): the launcher's one-per-node rule
        # still holds, so meter on rather than lose the measurement.
        print(f"monitoring.meter: cannot lock {path} ({exc.strerror}); continuing unlocked",
              file=sys.stderr)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def start_node_meter(
    out_dir: os.PathLike,
    node: str,
    job: str,
    attempt: int,
    interval: float = 1.0,
    *,
    sources: Optional[Sequence[str]] = None,
    pm_counters_root: Optional[os.PathLike] = None,
    rapl_root: Optional[os.PathLike] = None,
    stop_file: Optional[os.PathLike] = None,
    watch_pid: Optional[int] = None,
    extra_args: Sequence[str] = (),
    ready_timeout_s: float = 30.0,
) -> subprocess.Popen:
    """Start this node's meter in the background; its stderr goes to <out>/<node>.<job>.meter.log.

    Returns once the meter has started metering (its first sample is being taken, so the work
    started after this call is metered from its first second: a stage shorter than the meter's own
    start-up would otherwise show 0 J) or has exited (a duplicate, no source, or bad input: see its
    returncode). watch_pid defaults to the caller, so a launcher that dies without stopping the
    meter does not leave it running.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "monitoring.meter", "--out", str(out), "--node", node,
               "--job", str(job), "--attempt", str(attempt), "--interval", str(interval),
               "--watch-pid", str(watch_pid if watch_pid is not None else os.getpid())]
    if sources:
        command += ["--sources", ",".join(sources)]
    if pm_counters_root is not None:
        command += ["--pm-counters-root", str(pm_counters_root)]
    if rapl_root is not None:
        command += ["--rapl-root", str(rapl_root)]
    if stop_file is not None:
        command += ["--stop-file", str(stop_file)]
    command += list(extra_args)
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])  # importable without an install
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    log_path = out / f"{node}.{job}.meter.log"
    with open(log_path, "ab") as log:
        offset = log.tell()
        popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + ready_timeout_s
    while popen.poll() is None and time.monotonic() < deadline:
        with open(log_path, "rb") as log:
            log.seek(offset)
            if METERING_LINE.encode() in log.read():
                break
        time.sleep(0.02)
    return popen


def stop_node_meter(popen: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """SIGTERM the meter, wait for its summary record, SIGKILL it if it hangs; its exit code."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            return popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            popen.kill()
    return popen.wait()


if __name__ == "__main__":
    sys.exit(main())
