"""Pytest fixtures that run a real local Slurm cluster (see tests/slurm_cluster.py).

Enable with ``pytest_plugins = ["tests.conftest_slurm"]`` in tests/conftest.py.

* ``slurm_cluster``: 3 nodes (n1-n3), started once per session.
* ``slurm_cluster_energy``: a second, separate cluster (other ports, other name) whose
  slurmd read HPE Cray pm_counters files that the test writes
  (`LocalSlurmCluster.write_pm_counter`).

Both skip, with the reason, where the cluster cannot run (not root, packages missing:
see scripts/install-slurm-test-deps.sh), and are stopped at the end of the session even
when tests fail; an atexit hook and a SIGTERM handler cover interrupted sessions.
"""

from __future__ import annotations

import signal
import threading
from typing import Iterator

import pytest

from tests.slurm_cluster import LocalSlurmCluster


def _exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (CI cancel, `timeout`) into KeyboardInterrupt so atexit stops daemons.

    Left alone when someone else already handles SIGTERM.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _running_cluster(tmp_path_factory: pytest.TempPathFactory, name: str,
                     **options: object) -> Iterator[LocalSlurmCluster]:
    ok, reason = LocalSlurmCluster.available()
    if not ok:
        pytest.skip(f"local Slurm cluster unavailable: {reason}")
    _exit_cleanly_on_sigterm()
    cluster = LocalSlurmCluster(tmp_path_factory.mktemp(name), cluster_name=name, **options)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurmCluster]:
    """A running 3-node cluster (partition `debug`); `cluster.env` has SLURM_CONF."""
    yield from _running_cluster(tmp_path_factory, "saultest", nodes=3)


@pytest.fixture(scope="session")
def slurm_cluster_energy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurmCluster]:
    """A running 2-node cluster with acct_gather_energy/pm_counters on fake counters."""
    yield from _running_cluster(tmp_path_factory, "saulenergy", nodes=2, pm_counters=True)
