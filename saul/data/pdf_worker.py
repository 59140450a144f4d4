"""Poppler out of the rank's process: one long-lived extraction worker per rank, fed over a pipe.

In-process Poppler (saul.data.pdf_text) is fast but has no per-file timeout and no isolation: a
PDF that segfaults or hangs Poppler would kill or stall the whole rank, and a requeue would meet
the same file again forever. So the rank keeps ONE child process holding Poppler (started at its
first PDF, reused for every PDF of the rank's pieces) and sends it one path at a time. The rank
waits for each answer at most `data.pdf_timeout_s`; when the worker dies (a signal, an exit) or
misses the deadline, the rank kills it, the file becomes a counted skip whose detail says what
happened ("Poppler crashed (signal 11)", "no answer within 120 s"), and the next PDF starts a
fresh worker. A file that breaks Poppler costs one skip, never the rank.

Start method: `subprocess.Popen([python, -m, saul.data.pdf_worker])`, i.e. fork+exec done in C
by _posixsubprocess (no Python code runs between fork and exec), so it is safe after torch's or
tokenizers' threads started, unlike multiprocessing's `fork`; unlike `spawn`/`forkserver` it does
not re-import the rank's __main__ (the launcher) and needs no pickling. The cost, a fresh
interpreter importing the binding (~40-60 ms), is paid once per rank and after each crash.
Not dying alone: the worker asks the kernel for SIGKILL when its parent goes (PR_SET_PDEATHSIG,
then checks that the parent is still the one that started it), and it exits at EOF on its
request pipe (the rank closed it or died); `stop()` at the end of the extraction phase (and at
interpreter exit) closes the pipe and reaps it. PDEATHSIG follows the parent THREAD: a worker
found dead while idle is restarted without blaming any file.

Protocol (binary, the worker's stdout is moved off fd 1 so that nothing Poppler prints there can
corrupt it): request = u32 length + the path's bytes; answer = 1 byte kind (T text, U unreadable,
O OSError, E cannot start) + f64 the worker's CPU seconds so far + u64 length + payload (UTF-8).
The CPU figure lets `cpu_seconds()` count the live worker: the pipeline's per-step CPU (and the
benchmark) keeps including Poppler's work, as it did when Poppler ran in the rank.
"""
from __future__ import annotations

import atexit
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

DEFAULT_TIMEOUT_S = 120.0
_START_TIMEOUT_S = 120.0  # a fresh interpreter on a loaded node; not the per-file deadline
_REQUEST = struct.Struct("<I")
_ANSWER = struct.Struct("<cdQ")
_PR_SET_PDEATHSIG = 1


class WorkerFailed(Exception):
    """The worker crashed or missed its deadline on this file (a counted skip: the message says which)."""


class WorkerUnusable(Exception):
    """The worker cannot start at all (the binding does not load there): a configuration error."""


# ----------------------------------------------------------------------------------------- rank side

class PdfWorker:
    """The rank's handle on its extraction worker; started lazily, restarted after a failure."""

    def __init__(self):
        self._proc: Optional[subprocess.Popen] = None
        self._cpu = 0.0  # the live worker's CPU seconds, as it last reported them

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def live_cpu_seconds(self) -> float:
        """CPU of the running worker (a reaped one is in os.times()' children figures)."""
        return self._cpu if self._proc is not None else 0.0

    def text(self, path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
        """The PDF's text; PdfUnreadable from the worker as `kind == U`, OSError for a file it cannot
        read, WorkerFailed when the worker died or missed the deadline (it is gone then)."""
        self.start()  # a worker that died while idle (its parent thread ended, an OOM kill) blames no file
        request = os.fsencode(str(path))
        try:
            os.write(self._proc.stdin.fileno(), _REQUEST.pack(len(request)) + request)
        except BrokenPipeError:  # died between the check and the write: still no file to blame
            self._reap()
            self._start()
            os.write(self._proc.stdin.fileno(), _REQUEST.pack(len(request)) + request)
        kind, payload = self._answer(time.monotonic() + timeout_s, timeout_s)
        if kind == b"T":
            return payload.decode("utf-8", "surrogatepass")
        if kind == b"U":
            from saul.data.pdf_text import PdfUnreadable

            raise PdfUnreadable(payload.decode("utf-8", "replace"))
        if kind == b"O":
            code, _, message = payload.decode("utf-8", "replace").partition("\n")
            raise OSError(int(code), message)
        self._proc.kill()  # not our protocol: nothing it says next can be trusted
        self._reap()
        raise WorkerFailed(f"the worker answered {kind!r}")

    def start(self) -> None:
        """Start the worker unless one is running (WorkerUnusable when it cannot start)."""
        if self._proc is not None and self._proc.poll() is not None:
            self._reap()
        if self._proc is None:
            self._start()

    def stop(self) -> None:
        """Close the request pipe (the worker exits at EOF) and reap it; kill it if it lingers."""
        if self._proc is None:
            return
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=5.0)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
        self._reap()

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the worker imports saul from where we did
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self._proc = subprocess.Popen([sys.executable, "-m", "saul.data.pdf_worker", str(os.getpid())],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self._cpu = 0.0
        try:
            kind, payload = self._answer(time.monotonic() + _START_TIMEOUT_S, _START_TIMEOUT_S)
        except WorkerFailed as exc:
            raise WorkerUnusable(f"the PDF extraction worker did not start: {exc}") from None
        if kind != b"R":
            self._proc.wait()
            self._reap()
            raise WorkerUnusable(payload.decode("utf-8", "replace"))

    def _answer(self, deadline: float, timeout_s: float) -> Tuple[bytes, bytes]:
        header = self._read(_ANSWER.size, deadline, timeout_s)
        kind, cpu, size = _ANSWER.unpack(header)
        payload = self._read(size, deadline, timeout_s) if size else b""
        self._cpu = cpu
        return kind, payload

    def _read(self, size: int, deadline: float, timeout_s: float) -> bytes:
        fd = self._proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        got = bytearray()
        while len(got) < size:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                self._proc.kill()
                self._reap()
                raise WorkerFailed(f"no answer within {timeout_s:g} s")
            chunk = os.read(fd, min(size - len(got), 1 << 20))
            if not chunk:  # EOF: the worker is gone
                code = self._proc.wait()
                self._reap()
                raise WorkerFailed(f"Poppler crashed (signal {-code})" if code < 0 else
                                   f"the worker exited with code {code}")
            got += chunk
        return bytes(got)

    def _reap(self) -> None:
        proc, self._proc, self._cpu = self._proc, None, 0.0
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        proc.wait()  # its CPU moves into os.times()' children figures


_WORKER = PdfWorker()  # one per process, i.e. per rank
atexit.register(_WORKER.stop)


def text(path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    return _WORKER.text(path, timeout_s)


def start() -> None:
    _WORKER.start()


def stop() -> None:
    _WORKER.stop()


def worker_pid() -> Optional[int]:
    return _WORKER.pid


def live_cpu_seconds() -> float:
    return _WORKER.live_cpu_seconds()


# --------------------------------------------------------------------------------------- worker side

def _die_with(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent went before the request took effect
        os._exit(0)


def _read_exactly(fd: int, size: int) -> Optional[bytes]:
    got = bytearray()
    while len(got) < size:
        chunk = os.read(fd, size - len(got))
        if not chunk:
            return None
        got += chunk
    return bytes(got)


def _write_answer(fd: int, kind: bytes, payload: bytes) -> None:
    data = _ANSWER.pack(kind, time.process_time(), len(payload)) + payload
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _one(path: Path) -> Tuple[bytes, bytes]:
    from saul.data import pdf_text

    try:
        return b"T", pdf_text.pdf_text(path).encode("utf-8", "surrogatepass")
    except pdf_text.PdfUnreadable as exc:
        return b"U", str(exc).encode("utf-8")
    except OSError as exc:
        return b"O", f"{exc.errno or 0}\n{exc.strerror or exc}".encode("utf-8")
    except Exception as exc:  # noqa: BLE001 (anything else the binding raises is this file's problem)
        return b"U", f"extraction failed: {type(exc).__name__}: {exc}".encode("utf-8")


def serve(parent: int) -> int:
    _die_with(parent)
    # Slurm's SIGTERM (and a terminal's SIGINT/SIGHUP) reach the whole step or process group: the
    # rank stops after the file in flight, so the worker must finish it, not die and make the file
    # a "crash" skip that a requeue would keep. It ends with the rank (EOF, PDEATHSIG) or by SIGKILL.
    for stop_signal in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(stop_signal, signal.SIG_IGN)
    answers = os.dup(1)
    os.dup2(2, 1)  # stray writes to stdout (C code) go to stderr, not into the answers
    requests = 0  # stdin
    from saul.data import pdf_text

    try:
        pdf_text.require()
    except Exception as exc:  # noqa: BLE001 (DatasetError with the fix, said by the rank)
        _write_answer(answers, b"E", str(exc).encode("utf-8"))
        return 2
    _write_answer(answers, b"R", b"")
    while True:
        header = _read_exactly(requests, _REQUEST.size)
        if header is None:
            return 0  # EOF: the rank is done or gone
        raw = _read_exactly(requests, _REQUEST.unpack(header)[0])
        if raw is None:
            return 0
        kind, payload = _one(Path(os.fsdecode(raw)))
        _write_answer(answers, kind, payload)


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
