"""Pick the rendezvous port (MASTER_PORT) on the first node, just before the ranks' step starts.

    python3 -m saul.resilience.rendezvous_port --job JOB [--restart N]     # prints the port

A port derived from the job id alone failed in practice: it fell inside Linux's ephemeral range
(net.ipv4.ip_local_port_range, 32768-60999 by default), where srun, slurmstepd and every outgoing
connection take ports, so the ranks died with EADDRINUSE; and a requeue retried the same port.
Here the port is outside the ephemeral range, free on this node a moment ago (a bind test), and
its search starts at a different place for each restart of the job. Standard library only
(Python >= 3.8: the batch host's python3).
"""
from __future__ import annotations

import argparse
import socket
import sys
from typing import Iterable, Optional, Tuple

EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_EPHEMERAL = (32768, 60999)
LOWEST, HIGHEST = 10000, 65535  # below 10000: well-known and registered service ports
TRIES = 200


def ephemeral_range(path: str = EPHEMERAL_RANGE_FILE) -> Tuple[int, int]:
    try:
        with open(path) as fh:
            lo, hi = (int(x) for x in fh.read().split()[:2])
        return lo, hi
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL


def candidate_window(ephemeral: Tuple[int, int]) -> Tuple[int, int]:
    """The larger run of ports in [LOWEST, HIGHEST] that lies entirely outside the ephemeral range."""
    lo, hi = ephemeral
    below = (LOWEST, min(lo - 1, HIGHEST))
    above = (max(hi + 1, LOWEST), HIGHEST)
    best = max((below, above), key=lambda w: w[1] - w[0])
    if best[1] - best[0] < 16:
        raise ValueError(f"the ephemeral port range {lo}-{hi} leaves no room for a rendezvous port in "
                         f"{LOWEST}-{HIGHEST}; narrow net.ipv4.ip_local_port_range or set MASTER_PORT yourself")
    return best


def candidates(job: str, restart: int, window: Tuple[int, int]) -> Iterable[int]:
    """Every port of the window once, starting at a place that depends on the job and the restart."""
    first, last = window
    span = last - first + 1
    digits = int("".join(ch for ch in str(job) if ch.isdigit()) or "0")
    # 7919 and 104729 are primes: consecutive restarts start far apart, and on another port than before.
    start = (digits * 7919 + restart * 104729) % span
    for i in range(span):
        yield first + (start + i) % span


def is_free(port: int, host: str = "") -> bool:
    """Can a listening socket bind this port now (on every address, as the rendezvous store will)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(job: str, restart: int = 0, ephemeral: Optional[Tuple[int, int]] = None, tries: int = TRIES) -> int:
    window = candidate_window(ephemeral or ephemeral_range())
    for i, port in enumerate(candidates(job, restart, window)):
        if i >= tries:
            break
        if is_free(port):
            return port
    raise ValueError(f"no free port among {tries} tried in {window[0]}-{window[1]} on {socket.gethostname()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m saul.resilience.rendezvous_port")
    parser.add_argument("--job", required=True, help="the Slurm job id")
    parser.add_argument("--restart", type=int, default=0, help="SLURM_RESTART_COUNT (plus any retry of the step)")
    args = parser.parse_args(argv)
    try:
        print(pick_port(args.job, args.restart))
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
