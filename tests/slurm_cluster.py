"""A real, throw-away Slurm cluster on this one machine, for integration tests.

`LocalSlurmCluster` starts, as root and entirely under one work directory:

* munged (as the ``munge`` user, with its own key and socket),
* MariaDB on 127.0.0.1 with its own data directory and a non-default port,
* slurmdbd (so ``sacct`` gives full records, ``sacct -D`` included),
* slurmctld, and
* one ``slurmd -N <node>`` per node, each in its own UTS namespace whose hostname is
  the node name (``hostname`` in a job prints ``n1``, ``n2``, ...). With
  ``pm_counters=True`` each slurmd also gets a private mount namespace in which
  ``workdir/pm_counters/<node>/`` appears at ``/sys/cray/pm_counters``, so Slurm's
  ``acct_gather_energy/pm_counters`` plugin reads counters the test writes.

Nothing under /etc is read or changed: clients find the cluster through ``SLURM_CONF``
(see `LocalSlurmCluster.env` and `LocalSlurmCluster.run`). Every daemon is a child
process started in the foreground and stopped by its PID in `LocalSlurmCluster.stop`.

Install the packages with ``scripts/install-slurm-test-deps.sh``; `LocalSlurmCluster.available`
says whether this machine can run the cluster and, if not, why.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

# Binaries the cluster runs; all come from the Debian packages in
# scripts/install-slurm-test-deps.sh.
REQUIRED_BINARIES = (
    "munged", "mariadbd", "mariadb-install-db", "mariadb", "mariadb-admin",
    "slurmdbd", "slurmctld", "slurmd", "sacctmgr", "sbatch", "srun", "sacct",
    "scontrol", "sinfo", "squeue", "scancel", "unshare", "hostname",
)

# Offsets from `port_base`; two clusters with port bases 1000 apart never collide.
DEFAULT_PORT_BASE = 16800
PORT_BASE_STEP = 1000
MARIADB_PORT_OFFSET = 6
SLURMCTLD_PORT_OFFSET = 17
SLURMDBD_PORT_OFFSET = 19
SLURMD_PORT_OFFSET = 100  # node i (1-based) listens on port_base + 100 + i

# Environment variables that would make client commands talk to another cluster or
# inherit options of an enclosing job (when the test suite itself runs inside Slurm).
_INHERITED_SLURM_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SACCT_")

# Default content of the HPE Cray pm_counters files (the plugin reads `energy` and
# `power`; the rest make the directory look like a real node's).
DEFAULT_PM_COUNTERS = {
    "energy": (123456, "J"),
    "power": (350, "W"),
    "cpu_energy": (61728, "J"),
    "cpu_power": (175, "W"),
    "memory_energy": (12345, "J"),
    "memory_power": (35, "W"),
    "accel0_energy": (24691, "J"),
    "accel0_power": (70, "W"),
    "freshness": (1, ""),
    "generation": (1, ""),
    "power_cap": (0, "W"),
    "startup": (1, ""),
    "version": (2, ""),
}


class SlurmClusterError(RuntimeError):
    """The local cluster could not be started or did not reach the expected state."""


@dataclass
class _Daemon:
    """A daemon started by the cluster: its process and the files that explain failures."""

    name: str
    process: subprocess.Popen
    logs: tuple[Path, ...]

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for log in self.logs:
            try:
                text = log.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                continue
            parts.append(f"--- {log} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts) if parts else "(no log written)"


class LocalSlurmCluster:
    """A Slurm cluster of `nodes` slurmd on this host, with slurmdbd accounting.

    Usage::

        ok, reason = LocalSlurmCluster.available()
        cluster = LocalSlurmCluster(Path("/tmp/c"), nodes=3)
        cluster.start()
        try:
            job_id = cluster.sbatch("-N", "2", "--wrap", "srun hostname")
            rows = cluster.wait_for_sacct(job_id, lambda rows: ...)
        finally:
            cluster.stop()
    """

    def __init__(
        self,
        workdir: Path,
        nodes: int = 3,
        cpus_per_node: int = 2,
        cluster_name: str = "saultest",
        pm_counters: bool = False,
        port_base: int | None = None,
        real_memory_mb: int = 2000,
    ) -> None:
        """Describe the cluster; nothing runs before `start()`.

        `port_base=None` picks the first block of free ports from 16800 on in steps of
        1000 (16806 MariaDB, 16817 slurmctld, 16819 slurmdbd, 16901.. slurmd). A lock
        file per block, held until `stop()`, keeps two clusters, or two test sessions,
        on one machine from choosing the same block.
        """
        if not 1 <= nodes < PORT_BASE_STEP - SLURMD_PORT_OFFSET:
            raise ValueError(
                f"nodes must be between 1 and {PORT_BASE_STEP - SLURMD_PORT_OFFSET - 1}")
        self._port_lock: int | None = None  # fd holding the port block's lock file
        if port_base is None:
            port_base, self._port_lock = _reserve_port_base(nodes)
        if cluster_name != cluster_name.lower():
            raise ValueError("Slurm requires a lower-case ClusterName")
        self.workdir = Path(workdir).resolve()
        self.nodes = nodes
        self.cpus_per_node = cpus_per_node
        self.cluster_name = cluster_name
        self.pm_counters = pm_counters
        self.real_memory_mb = real_memory_mb
        self.port_base = port_base
        self.mariadb_port = port_base + MARIADB_PORT_OFFSET
        self.slurmctld_port = port_base + SLURMCTLD_PORT_OFFSET
        self.slurmdbd_port = port_base + SLURMDBD_PORT_OFFSET
        self.slurmd_ports = {
            name: port_base + SLURMD_PORT_OFFSET + i for i, name in enumerate(self.node_names, 1)
        }

        self.conf_dir = self.workdir / "etc"
        self.conf_path = self.conf_dir / "slurm.conf"
        self.log_dir = self.workdir / "log"
        self.run_dir = self.workdir / "run"
        self.mariadb_dir = self.workdir / "mariadb"
        self.mariadb_socket = self.mariadb_dir / "mysqld.sock"
        # Set in start(): munged must be able to traverse every parent of its files.
        self.munge_dir: Path | None = None
        self._munge_dir_is_temporary = False
        self._db_password = secrets.token_hex(12)

        self._daemons: list[_Daemon] = []
        # UTS namespace of each slurmd ("uts:[inode]"): every process in it (slurmd,
        # slurmstepd, job tasks) belongs to this cluster and is killed on stop().
        self._node_namespaces: dict[str, str] = {}
        self._started = False
        self._atexit_registered = False

    # ------------------------------------------------------------------ availability

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Whether this machine can run the cluster, and if not, the reason why."""
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return False, "the local Slurm cluster must run as root (slurmd, munged, MariaDB)"
        missing = [name for name in REQUIRED_BINARIES if _which(name) is None]
        if missing:
            return False, (
                "missing binaries: " + ", ".join(missing)
                + " (install with scripts/install-slurm-test-deps.sh)"
            )
        try:
            pwd.getpwnam("munge")
        except KeyError:
            return False, "no 'munge' user (install the munge package)"
        probe = subprocess.run(
            ["unshare", "--uts", "--mount", "--propagation", "private", "true"],
            capture_output=True, text=True,
        )
        if probe.returncode != 0:
            return False, "cannot create UTS/mount namespaces: " + probe.stderr.strip()
        return True, "root, Slurm, munge, MariaDB and unshare are available"

    # ------------------------------------------------------------------ properties

    @property
    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    @property
    def env(self) -> dict[str, str]:
        """Environment variables a Slurm client needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf_path)}

    def client_environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """`os.environ` without inherited Slurm job variables, plus `env` (and `extra`)."""
        environ = {
            key: value for key, value in os.environ.items()
            if not key.startswith(_INHERITED_SLURM_PREFIXES)
        }
        environ.update(self.env)
        environ.update(extra or {})
        return environ

    # ------------------------------------------------------------------ client helpers

    def run(
        self,
        cmd: Sequence[str] | str,
        check: bool = True,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a client command (list, or a string split like a shell) against this cluster."""
        args = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout,
            env=self.client_environ(env),
        )
        if check and result.returncode != 0:
            raise SlurmClusterError(
                f"{shlex.join(args)} exited {result.returncode}:\n"
                f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
            )
        return result

    def sbatch(self, *args: str) -> str:
        """Submit with `sbatch --parsable ARGS` and return the job id."""
        out = self.run(["sbatch", "--parsable", *args]).stdout.strip()
        return out.split(";")[0]

    def set_node_state(self, node: str, state: str, reason: str = "set by test") -> None:
        """`scontrol update` a node, e.g. state "down" (with a reason) or "resume"."""
        cmd = ["scontrol", "update", f"NodeName={node}", f"State={state}"]
        if state.lower() in ("down", "drain", "fail"):
            cmd.append(f"Reason={reason}")
        self.run(cmd)

    def node_states(self) -> dict[str, str]:
        """Current state of every node, lower case (e.g. "idle", "alloc", "down*")."""
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_for_nodes(self, state: str = "idle", timeout: float = 60) -> None:
        """Poll until every node is in `state`."""
        _wait_until(
            lambda: all(s == state for s in self.node_states().values()),
            timeout, f"all nodes {state}", on_timeout=self._describe_nodes,
            check_alive=self._raise_if_a_daemon_died,
        )

    def job_state(self, job_id: str) -> str:
        """The job's state according to slurmctld (`scontrol show job`), e.g. "RUNNING"."""
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)]).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        raise SlurmClusterError(f"no JobState in scontrol output: {out!r}")

    def sacct(
        self,
        job_id: str,
        fields: Sequence[str] = ("JobID", "State", "NodeList", "ExitCode"),
        duplicates: bool = False,
    ) -> list[dict[str, str]]:
        """Accounting rows of a job and its steps (`sacct -P -n`), one dict per row.

        `duplicates=True` adds `-D`: one row per run of a requeued job.
        """
        cmd = ["sacct", "-P", "-n", "-j", str(job_id), "-o", ",".join(fields)]
        if duplicates:
            cmd.append("-D")
        out = self.run(cmd).stdout
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]

    def wait_for_sacct(
        self,
        job_id: str,
        predicate: Callable[[list[dict[str, str]]], bool],
        timeout: float = 60,
        fields: Sequence[str] = ("JobID", "State", "NodeList", "ExitCode"),
        duplicates: bool = False,
    ) -> list[dict[str, str]]:
        """Poll `sacct` until `predicate(rows)` is true; return those rows."""
        rows: list[dict[str, str]] = []

        def ready() -> bool:
            nonlocal rows
            rows = self.sacct(job_id, fields, duplicates)
            return bool(predicate(rows))

        _wait_until(ready, timeout, f"sacct rows of job {job_id}",
                    on_timeout=lambda: f"last rows: {rows}")
        return rows

    # ------------------------------------------------------------------ pm_counters

    def pm_counters_dir(self, node: str) -> Path:
        """Directory that the node's slurmd sees as /sys/cray/pm_counters."""
        if node not in self.node_names:
            raise ValueError(f"unknown node {node!r}; nodes are {self.node_names}")
        return self.workdir / "pm_counters" / node

    def write_pm_counter(self, node: str, name: str, value: int, unit: str = "") -> None:
        """Atomically set one counter file, HPE Cray style (e.g. "1777 J").

        The file is replaced inside the bind-mounted directory, so readers never see a
        half-written value.
        """
        directory = self.pm_counters_dir(node)
        directory.mkdir(parents=True, exist_ok=True)
        text = f"{int(value)} {unit}".rstrip() + "\n"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o444)
        os.replace(tmp, directory / name)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start every daemon and wait until all nodes are idle.

        On failure everything already started is stopped and a `SlurmClusterError`
        says which daemon failed, with the tail of its log.
        """
        if self._started:
            raise SlurmClusterError("cluster already started")
        ok, reason = self.available()
        if not ok:
            raise SlurmClusterError(f"cannot start a local Slurm cluster: {reason}")
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        self._started = True
        try:
            self._lock_ports()
            self._make_directories()
            self._start_munged()
            self._start_mariadb()
            self._write_slurm_configs()
            self._start_slurmdbd()
            self._start_slurmctld()
            for node in self.node_names:
                if self.pm_counters:
                    for name, (value, unit) in DEFAULT_PM_COUNTERS.items():
                        self.write_pm_counter(node, name, value, unit)
                self._start_slurmd(node)
            self.wait_for_nodes("idle", timeout=60)
            self._record_node_namespaces()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15) -> None:
        """Stop every daemon this object started (by PID); safe to call repeatedly.

        Nodes go first, together with anything still running in their namespaces
        (slurmstepd and job processes outlive slurmd otherwise), then slurmctld,
        slurmdbd, MariaDB and munged. SIGTERM first, SIGKILL after `timeout` seconds.
        """
        self._record_node_namespaces()
        for daemon in reversed(self._daemons):
            _terminate(daemon.process, timeout)
            if daemon.name.startswith("slurmd-"):
                namespace = self._node_namespaces.get(daemon.name.removeprefix("slurmd-"))
                if namespace:
                    _kill_namespace(namespace, timeout)
        self._daemons.clear()
        self._node_namespaces.clear()
        if self._port_lock is not None:
            os.close(self._port_lock)  # closing the file releases its flock
            self._port_lock = None
        if self._munge_dir_is_temporary and self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self._munge_dir_is_temporary = False
        self._started = False

    def __enter__(self) -> "LocalSlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ start steps

    def _lock_ports(self) -> None:
        if self._port_lock is None:
            self._port_lock = _lock_port_block(self.port_base)
            if self._port_lock is None:
                raise SlurmClusterError(
                    f"ports from {self.port_base} are reserved by another LocalSlurmCluster "
                    "(choose another port_base, or None to pick a free block)"
                )
        busy = [port for port in _ports_for(self.port_base, self.nodes) if not _port_is_free(port)]
        if busy:
            raise SlurmClusterError(
                f"ports already in use: {busy}; another cluster may be running "
                "(choose another port_base)"
            )

    def _make_directories(self) -> None:
        for directory in (self.conf_dir, self.log_dir, self.run_dir, self.mariadb_dir,
                          self.workdir / "state"):
            directory.mkdir(parents=True, exist_ok=True)
        for node in self.node_names:
            (self.workdir / "spool" / node).mkdir(parents=True, exist_ok=True)

    def _start_munged(self) -> None:
        munge = pwd.getpwnam("munge")
        # munged runs as the munge user and refuses paths it cannot traverse; pytest's
        # base temp dir is 0700 root, so fall back to a dedicated directory in /tmp.
        if _traversable_by_others(self.workdir):
            self.munge_dir = self.workdir / "munge"
            self.munge_dir.mkdir(exist_ok=True)
        else:
            self.munge_dir = Path(tempfile.mkdtemp(prefix=f"{self.cluster_name}-munge-"))
            self._munge_dir_is_temporary = True
        # The socket directory must be searchable by everyone; the key stays private.
        key_dir = self.munge_dir / "private"
        key_dir.mkdir(exist_ok=True)
        key = key_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        for path, mode in ((self.munge_dir, 0o755), (key_dir, 0o700), (key, 0o400)):
            os.chown(path, munge.pw_uid, munge.pw_gid)
            os.chmod(path, mode)

        log = key_dir / "munged.log"
        daemon = self._spawn(
            "munged",
            ["munged", "--foreground", f"--socket={self.munge_socket}",
             f"--key-file={key}", f"--pid-file={key_dir / 'munged.pid'}",
             f"--log-file={log}", f"--seed-file={key_dir / 'munged.seed'}"],
            extra_logs=(log,), user=munge.pw_uid, group=munge.pw_gid,
        )
        self._wait_for_daemon(daemon, self.munge_socket.is_socket, 20, "munged socket")

    @property
    def munge_socket(self) -> Path:
        if self.munge_dir is None:
            raise SlurmClusterError("munged has not been set up yet")
        return self.munge_dir / "munge.socket"

    def _start_mariadb(self) -> None:
        datadir = self.mariadb_dir / "data"
        install_log = self.log_dir / "mariadb-install-db.log"
        with open(install_log, "w") as out:
            result = subprocess.run(
                ["mariadb-install-db", "--no-defaults", "--user=root",
                 f"--datadir={datadir}", "--auth-root-authentication-method=socket",
                 "--skip-test-db"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        if result.returncode != 0:
            raise SlurmClusterError(
                f"mariadb-install-db failed ({result.returncode}):\n"
                + "\n".join(install_log.read_text().splitlines()[-30:])
            )
        error_log = self.log_dir / "mariadbd.log"
        daemon = self._spawn(
            "mariadbd",
            ["mariadbd", "--no-defaults", "--user=root", f"--datadir={datadir}",
             f"--socket={self.mariadb_socket}", f"--port={self.mariadb_port}",
             "--bind-address=127.0.0.1", "--skip-name-resolve", "--skip-log-bin",
             f"--pid-file={self.mariadb_dir / 'mariadbd.pid'}",
             f"--log-error={error_log}",
             # Small but enough for slurmdbd; its recommended lock wait avoids a warning.
             "--innodb-buffer-pool-size=1G", "--innodb-lock-wait-timeout=900"],
            extra_logs=(error_log,),
        )
        self._wait_for_command(
            daemon, lambda: self._mariadb(["mariadb-admin", "ping"], check=False),
            60, "MariaDB to accept connections",
        )
        # The server listens on 127.0.0.1 only, so 'slurm'@'%' is reachable from here alone.
        self._mariadb([
            "mariadb", "-e",
            "CREATE DATABASE IF NOT EXISTS slurm_acct_db; "
            f"CREATE USER IF NOT EXISTS 'slurm'@'%' IDENTIFIED BY '{self._db_password}'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%';",
        ])

    def _mariadb(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a MariaDB client as the database root user over the private socket."""
        args = [cmd[0], "--no-defaults", f"--socket={self.mariadb_socket}", "-uroot", *cmd[1:]]
        result = subprocess.run(args, capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise SlurmClusterError(f"{shlex.join(args)} failed: {result.stderr.strip()}")
        return result

    def _write_slurm_configs(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "plugstack.conf").write_text("")
        self.conf_path.write_text(self._slurm_conf())
        # slurmdbd refuses a config readable by others (it holds the DB password).
        dbd_conf = self.conf_dir / "slurmdbd.conf"
        dbd_conf.write_text(self._slurmdbd_conf())
        os.chmod(dbd_conf, 0o600)

    def _slurm_conf(self) -> str:
        w = self.workdir
        controller = socket.gethostname().split(".")[0]
        lines = [
            f"ClusterName={self.cluster_name}",
            # Job ids (and so the ranks' MASTER_PORT = 20000 + id % 20000) apart per port block: two test
            # clusters on one host never hand the same id, hence the same port, to concurrent jobs.
            f"FirstJobId={1 + ((self.port_base // 1000) % 20) * 1000}",
            f"SlurmctldHost={controller}(127.0.0.1)",
            f"SlurmctldPort={self.slurmctld_port}",
            f"SlurmdPort={min(self.slurmd_ports.values())}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire=10: a requeued job may start again after ~15-30 s, not 120 s.
            f"AuthInfo=cred_expire=10,socket={self.munge_socket}",
            f"StateSaveLocation={w / 'state'}",
            f"SlurmdSpoolDir={w / 'spool' / '%n'}",
            f"SlurmctldPidFile={self.run_dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.run_dir / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd-%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"PlugStackConfig={self.conf_dir / 'plugstack.conf'}",
            "MailProg=/bin/true",
            # No cgroups on a test VM: track processes through /proc, bind no CPUs.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            # The nodes claim more CPUs than the host has: trust slurm.conf, not hardware.
            "SlurmdParameters=config_overrides",
            "JobAcctGatherType=jobacct_gather/linux",
            "JobAcctGatherFrequency=task=1",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            # For the slurmdbd connection the munge socket comes from this key, not AuthInfo.
            f"AccountingStoragePass={self.munge_socket}",
            f"AccountingStoragePort={self.slurmdbd_port}",
            "JobCompType=jobcomp/none",
            "JobRequeue=1",
            "ReturnToService=1",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "KillWait=5",
            "MinJobAge=300",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
        ]
        if self.pm_counters:
            lines += [
                "AcctGatherEnergyType=acct_gather_energy/pm_counters",
                "AcctGatherNodeFreq=1",
            ]
        for node, port in self.slurmd_ports.items():
            lines.append(
                f"NodeName={node} NodeHostname={node} NodeAddr=127.0.0.1 Port={port} "
                f"CPUs={self.cpus_per_node} RealMemory={self.real_memory_mb} State=UNKNOWN"
            )
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def _slurmdbd_conf(self) -> str:
        return "\n".join([
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "DbdHost=localhost",
            "DbdAddr=127.0.0.1",
            f"DbdPort={self.slurmdbd_port}",
            "SlurmUser=root",
            f"PidFile={self.run_dir / 'slurmdbd.pid'}",
            f"LogFile={self.log_dir / 'slurmdbd.log'}",
            "DebugLevel=info",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={self.mariadb_port}",
            "StorageUser=slurm",
            f"StoragePass={self._db_password}",
            "StorageLoc=slurm_acct_db",
        ]) + "\n"

    def _start_slurmdbd(self) -> None:
        daemon = self._spawn("slurmdbd", ["slurmdbd", "-D"],
                             extra_logs=(self.log_dir / "slurmdbd.log",))
        self._wait_for_command(
            daemon,
            lambda: self.run(["sacctmgr", "-n", "-P", "show", "cluster"], check=False,
                             timeout=15),
            60, "slurmdbd to answer sacctmgr",
        )
        self.run(["sacctmgr", "-i", "add", "cluster", self.cluster_name])

    def _start_slurmctld(self) -> None:
        daemon = self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf_path)],
                             extra_logs=(self.log_dir / "slurmctld.log",))
        self._wait_for_command(
            daemon, lambda: self.run(["scontrol", "ping"], check=False, timeout=15),
            60, "slurmctld to answer scontrol ping",
        )

    def _start_slurmd(self, node: str) -> None:
        """Start `slurmd -N node` in its own UTS (and, for pm_counters, mount) namespace."""
        slurmd = (f"exec {shlex.quote(_which('slurmd') or 'slurmd')} -D -N {node} "
                  f"-f {shlex.quote(str(self.conf_path))}")
        script = [f"hostname {node}"]
        unshare = ["unshare", "--uts"]
        if self.pm_counters:
            unshare += ["--mount", "--propagation", "private"]
            script += self._pm_counters_mount_script(node)
        script.append(slurmd)
        self._spawn(f"slurmd-{node}", [*unshare, "--", "/bin/sh", "-ec", "\n".join(script)],
                    extra_logs=(self.log_dir / f"slurmd-{node}.log",))

    def _pm_counters_mount_script(self, node: str) -> list[str]:
        """Shell lines that show this node's counter directory at /sys/cray/pm_counters.

        sysfs cannot get new directories, so a tmpfs covers /sys, the real /sys
        subdirectories are bound back onto it, and the counters are bound at cray/.
        All of it happens in the slurmd's private mount namespace only.
        """
        real_sys = self.workdir / "sysfs" / node
        real_sys.mkdir(parents=True, exist_ok=True)
        q_real = shlex.quote(str(real_sys))
        q_counters = shlex.quote(str(self.pm_counters_dir(node)))
        return [
            f"mount --rbind /sys {q_real}",
            "mount -t tmpfs -o mode=0755 sys-overlay /sys",
            f"for d in {q_real}/*; do",
            '  name=$(basename "$d"); mkdir -p "/sys/$name"; mount --rbind "$d" "/sys/$name"',
            "done",
            "mkdir -p /sys/cray/pm_counters",
            f"mount --bind {q_counters} /sys/cray/pm_counters",
        ]

    def _record_node_namespaces(self) -> None:
        own = _namespace_of("self")
        for daemon in self._daemons:
            if not daemon.name.startswith("slurmd-") or daemon.process.poll() is not None:
                continue
            node = daemon.name.removeprefix("slurmd-")
            namespace = _namespace_of(str(daemon.process.pid))
            # Before unshare has run the child is still in our namespace: never record that.
            if namespace and namespace != own:
                self._node_namespaces[node] = namespace

    # ------------------------------------------------------------------ daemon plumbing

    def _spawn(self, name: str, cmd: list[str], extra_logs: Iterable[Path] = (),
               user: int | None = None, group: int | None = None) -> _Daemon:
        stdout_log = self.log_dir / f"{name}.stdout"
        cmd = [_which(cmd[0]) or cmd[0], *cmd[1:]]
        with open(stdout_log, "w") as out:
            process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.client_environ(), cwd=self.workdir,
                # Own session: a Ctrl-C aimed at pytest must not kill daemons mid-test;
                # stop() ends them in order instead.
                start_new_session=True, user=user, group=group,
                # Dropping privileges must drop root's supplementary groups too.
                extra_groups=[] if user is not None else None,
            )
        daemon = _Daemon(name, process, (stdout_log, *extra_logs))
        self._daemons.append(daemon)
        return daemon

    def _wait_for_daemon(self, daemon: _Daemon, ready: Callable[[], bool], timeout: float,
                         what: str, details: Callable[[], str] = lambda: "") -> None:
        """Poll `ready`; fail at once, with the daemon's log, if the daemon exits."""
        _wait_until(ready, timeout, what,
                    on_timeout=lambda: details() + daemon.log_tail(),
                    check_alive=lambda: self._raise_if_dead(daemon))

    def _wait_for_command(self, daemon: _Daemon,
                          probe: Callable[[], subprocess.CompletedProcess],
                          timeout: float, what: str) -> None:
        """Poll until the client command `probe` succeeds; on timeout show its last error."""
        last: subprocess.CompletedProcess | None = None

        def ready() -> bool:
            nonlocal last
            last = probe()
            if "fatal:" in (last.stderr or ""):  # e.g. a config the client cannot parse
                raise SlurmClusterError(f"{what}: {details()}{daemon.log_tail()}")
            return last.returncode == 0

        def details() -> str:
            if last is None:
                return ""
            return (f"last probe `{shlex.join(last.args)}` exited {last.returncode}: "
                    f"{(last.stderr or last.stdout).strip()}\n")

        self._wait_for_daemon(daemon, ready, timeout, what, details)

    def _raise_if_dead(self, daemon: _Daemon) -> None:
        code = daemon.process.poll()
        if code is not None:
            raise SlurmClusterError(
                f"{daemon.name} exited unexpectedly with status {code}\n{daemon.log_tail()}"
            )

    def _raise_if_a_daemon_died(self) -> None:
        for daemon in self._daemons:
            self._raise_if_dead(daemon)

    def _describe_nodes(self) -> str:
        out = self.run(["scontrol", "show", "nodes", "-o"], check=False).stdout
        logs = "\n".join(d.log_tail(10) for d in self._daemons if d.name.startswith("slurmd-"))
        return f"{out}\n{logs}"


# ---------------------------------------------------------------------- module helpers

def _which(name: str) -> str | None:
    # Daemons live in /usr/sbin, which a non-login root shell may not have on PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    on_timeout: Callable[[], str] | None = None,
    check_alive: Callable[[], None] | None = None,
    interval: float = 0.1,
) -> None:
    """Poll `condition` until true; raise `SlurmClusterError` after `timeout` seconds.

    `check_alive` runs before each poll and raises when a daemon being waited on died,
    so a crash is reported at once with its log instead of after the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check_alive is not None:
            check_alive()
        if condition():
            return
        if time.monotonic() > deadline:
            details = on_timeout() if on_timeout else ""
            raise SlurmClusterError(f"timed out after {timeout:g} s waiting for {what}\n{details}")
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)


def _ports_for(port_base: int, nodes: int) -> list[int]:
    return [port_base + MARIADB_PORT_OFFSET, port_base + SLURMCTLD_PORT_OFFSET,
            port_base + SLURMDBD_PORT_OFFSET,
            *(port_base + SLURMD_PORT_OFFSET + i for i in range(1, nodes + 1))]


def _lock_port_block(port_base: int) -> int | None:
    """Take the machine-wide lock of a port block: its fd, or None if someone holds it.

    A port is only seen busy once a daemon binds it, seconds into start(); the lock
    closes that window between concurrent test sessions. The kernel drops it when the
    fd is closed or the process dies, so a crashed session leaves nothing to clean.
    """
    path = Path(tempfile.gettempdir()) / f"saul-slurm-ports-{port_base}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _reserve_port_base(nodes: int, first: int = DEFAULT_PORT_BASE,
                       attempts: int = 40) -> tuple[int, int]:
    """First port block from `first` on (step 1000) that is unlocked and free: (base, lock fd)."""
    for port_base in range(first, first + attempts * PORT_BASE_STEP, PORT_BASE_STEP):
        if port_base + PORT_BASE_STEP > 65535:
            break
        lock = _lock_port_block(port_base)
        if lock is None:
            continue
        if all(_port_is_free(port) for port in _ports_for(port_base, nodes)):
            return port_base, lock
        os.close(lock)
    raise SlurmClusterError(f"no free block of ports for a {nodes}-node cluster from {first} on")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: only a listening socket (not TIME_WAIT leftovers) counts as busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _traversable_by_others(path: Path) -> bool:
    """True when an unprivileged user can reach `path` (every ancestor has o+x)."""
    for directory in (path, *path.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _namespace_of(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/uts")
    except OSError:
        return None


def _pids_in_namespace(namespace: str) -> list[int]:
    own = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != own and _namespace_of(entry) == namespace:
            pids.append(int(entry))
    return pids


def _kill_namespace(namespace: str, timeout: float) -> None:
    """End every process in a node's UTS namespace (slurmstepd and job tasks)."""
    if namespace == _namespace_of("self"):
        return  # never signal processes outside the node's own namespace
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids_in_namespace(namespace)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pids_in_namespace(namespace):
            time.sleep(0.1)


def _terminate(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM a daemon, SIGKILL it if it is still there after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
