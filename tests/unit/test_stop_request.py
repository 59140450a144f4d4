"""Stop requests with real signals to a real subprocess: one request per process, kept from the
task's first line; a second SIGTERM while stopping exits now; while leaving, signals change nothing."""
import signal
import subprocess
import sys
import textwrap

from tests.conftest import REPO


def run_child(body: str, timeout: float = 30, before_install: str = "", **popen) -> subprocess.CompletedProcess:
    """A child that installs the stop request, signals itself as told, and reports what it saw."""
    code = textwrap.dedent("""
        import os, signal, sys, time
        from saul.resilience import stop_request
        me = os.getpid()
    """) + textwrap.dedent(before_install) + "stop = stop_request.install()\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          **popen)


def test_a_signal_sent_while_the_launcher_kept_it_blocked_is_delivered_at_install():
    """A rank started with USR2 blocked (signal mask inherited across exec) loses no early preemption notice."""
    child = run_child("print(stop.requested, stop.describe())", before_install="""
        os.kill(me, signal.SIGUSR2)  # pending: blocked since before the interpreter started
        time.sleep(0.05)
    """, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2}))
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "True signal SIGUSR2"


def test_a_signal_received_early_is_kept_for_the_training_loop():
    child = run_child("""
        os.kill(me, signal.SIGUSR2)
        time.sleep(0.05)
        later = stop_request.current()  # what the trainer asks for after the model build
        print(later is stop, later.requested, later.describe())
        assert stop_request.install() is stop  # installing again keeps the request
        print(stop_request.current().describe())
    """)
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == ["True True signal SIGUSR2", "signal SIGUSR2"]


def test_a_second_sigterm_while_stopping_exits_now():
    child = run_child("""
        os.kill(me, signal.SIGUSR2)
        time.sleep(0.05)
        os.kill(me, signal.SIGTERM)
        time.sleep(5)
        print("still running")
    """)
    assert child.returncode == 128 + signal.SIGTERM
    assert "second SIGTERM while stopping: exiting now" in child.stderr and "still running" not in child.stdout


def test_signals_while_leaving_are_counted_and_the_rank_exits_with_its_own_code():
    """What Slurm's kill-on-bad-exit sends the last ranks of a stop: their exit code must stay 75."""
    child = run_child("""
        os.kill(me, signal.SIGUSR2)
        time.sleep(0.05)
        stop.leaving()
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
            os.kill(me, sig)
            time.sleep(0.05)
        print(stop.signals_while_leaving, stop.describe())
        sys.stdout.flush()
        os._exit(75)
    """)
    assert child.returncode == 75, child.stderr
    assert child.stdout.strip() == "3 signal SIGUSR2"


def test_a_reason_of_our_own_is_a_request_too_and_the_first_reason_wins():
    child = run_child("""
        stop.request("train.stop_after_steps=2 reached")
        stop.request("another reason")
        print(stop.requested, stop.signal, stop.describe())
    """)
    assert child.stdout.strip() == "True None train.stop_after_steps=2 reached", child.stderr


def test_ranks_without_a_process_group_leave_only_when_all_have_arrived(tmp_path):
    """prepare's ranks: the first to exit 75 would make Slurm SIGTERM the others mid-shard."""
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from saul.resilience import stop_request
        from types import SimpleNamespace
        from saul.stages.base import leave_together_without_group
        rank, delay, timeout = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
        time.sleep(delay)
        info = SimpleNamespace(rank=rank, world_size=2, job_id="77")  # what a RankInfo says
        arrived = time.time()
        met = leave_together_without_group(stop_request.install(), Path(sys.argv[4]), info, timeout)
        print(arrived, time.time(), met)
    """)
    (tmp_path / "leaving-76-0").mkdir()  # an earlier attempt's meeting point: rank 0 clears it
    ranks = [subprocess.Popen([sys.executable, "-c", code, str(rank), str(delay), "60", str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for rank, delay in ((0, 0.0), (1, 1.5))]
    (arrived0, left0, met0), (arrived1, left1, met1) = [
        [float(x) if x[0].isdigit() else x for x in p.communicate(timeout=60)[0].split()] for p in ranks]
    assert met0 == met1 == "True"
    assert left0 >= arrived1 and left1 >= arrived1  # nobody left before the late rank arrived
    assert not (tmp_path / "leaving-76-0").exists()
    alone = subprocess.run([sys.executable, "-c", code, "0", "0", "0.5", str(tmp_path / "other")], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert alone.stdout.split()[-1] == "False"  # a rank that never comes (crashed) does not hold it forever
