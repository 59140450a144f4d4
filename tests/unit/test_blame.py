"""Crash attribution (saul.resilience.blame) on recorded rank evidence, the rank guard and its witness as real
processes, and the step_restart path that blames, excludes and leaves or relaunches. The blame on the real
Slurm cluster: tests/integration/test_faults_slurm.py::test_a_node_whose_rank_keeps_crashing_is_blamed_and_swapped."""
import os
import signal
import subprocess
import sys
import time

import pytest

from saul.resilience import ledger
from saul.resilience.blame import attribute, attribute_crash, crash_counts, exception_kind
from saul.resilience.rank_guard import launch_file, module_and_args
from saul.resilience.step_restart import LEAVE, RELAUNCH, main as step_restart

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start(rank, node, t=100.0):
    return {"event": "rank_start", "rank": rank, "node": node, "pid": 1000 + rank, "time": t}


def gone(rank, node, t, sigterm_at=None):
    return {"event": "rank_gone", "rank": rank, "node": node, "pid": 1000 + rank, "time": t, "sigterm_at": sigterm_at}


def raised(rank, node, kind, message, t=150.0):
    return {"event": "rank_exception", "rank": rank, "node": node, "type": kind, "message": message, "time": t}


FOUR_RANKS = [start(0, "n1"), start(1, "n1"), start(2, "n2"), start(3, "n2")]


def test_the_rank_gone_before_slurms_sigterm_points_at_its_node():
    records = FOUR_RANKS + [gone(3, "n2", 150.0), gone(0, "n1", 152.4, sigterm_at=150.3),
                            gone(1, "n1", 155.3, sigterm_at=150.3), gone(2, "n2", 152.5, sigterm_at=150.3)]
    verdict = attribute(records)
    assert verdict.suspects == ["n2"] and verdict.ranks == [3]
    assert "before Slurm's SIGTERM" in verdict.why and verdict.evidence["first_sigterm"] == 150.3


def test_a_rank_that_raised_because_its_peer_died_is_a_victim_not_a_suspect():
    records = FOUR_RANKS + [gone(3, "n2", 150.0),
                            raised(0, "n1", "RuntimeError", "[gloo/transport/tcp/pair.cc:534] Connection closed by peer"),
                            gone(0, "n1", 150.1), gone(1, "n1", 155.3, sigterm_at=150.3),
                            gone(2, "n2", 155.3, sigterm_at=150.3)]
    assert exception_kind(records[5]) == "peer_loss"
    assert attribute(records).suspects == ["n2"]


def test_a_python_exception_of_our_code_on_every_rank_blames_nobody():
    records = FOUR_RANKS + [raised(r, n, "KeyError", "'loss'") for r, n in ((0, "n1"), (1, "n1"), (2, "n2"), (3, "n2"))]
    records += [gone(r, n, 150.2) for r, n in ((0, "n1"), (1, "n1"), (2, "n2"), (3, "n2"))]
    verdict = attribute(records)
    assert verdict.suspects == [] and "Python exception in our code on rank(s) 0,1,2,3 (KeyError" in verdict.why


def test_our_code_failing_on_one_rank_first_still_blames_nobody():
    """A bug that only rank 0 reaches fails on whichever node rank 0 runs: software, not that node."""
    records = FOUR_RANKS + [raised(0, "n1", "ZeroDivisionError", "division by zero"), gone(0, "n1", 150.0),
                            gone(1, "n1", 150.5, sigterm_at=150.3), gone(2, "n2", 150.5, sigterm_at=150.3)]
    assert attribute(records).suspects == []


def test_a_device_error_points_at_its_node():
    records = FOUR_RANKS + [raised(2, "n2", "RuntimeError", "CUDA error: uncorrectable ECC error encountered"),
                            gone(2, "n2", 150.0), gone(0, "n1", 155.3, sigterm_at=150.3)]
    assert attribute(records).suspects == ["n2"]


def test_every_rank_dying_together_is_ambiguous():
    records = FOUR_RANKS + [gone(r, n, 150.0 + r / 100) for r, n in ((0, "n1"), (1, "n1"), (2, "n2"), (3, "n2"))]
    verdict = attribute(records)  # no SIGTERM reached anyone first: all died on their own
    assert verdict.suspects == [] and verdict.ranks == [0, 1, 2, 3] and "died together: ambiguous" in verdict.why


def test_a_witness_waking_late_on_a_busy_node_does_not_make_its_rank_a_victim():
    """Seen on the local cluster: both ranks SIGKILLed together; rank 1's witness woke 26 ms late, just after the
    SIGTERM Slurm sent for rank 0's death. Within SIGTERM_RACE_S both are suspects: ambiguous, nobody blamed."""
    records = [start(0, "n1"), start(1, "n2"), gone(0, "n1", 1796141244.50091),
               gone(1, "n2", 1796141244.5271604, sigterm_at=1796141244.5271416)]
    verdict = attribute(records)
    assert verdict.suspects == [] and verdict.ranks == [0, 1] and "died together" in verdict.why


def test_one_node_or_no_records_blames_nobody():
    one = [start(0, "n1"), start(1, "n1"), gone(1, "n1", 150.0), gone(0, "n1", 150.5, sigterm_at=150.2)]
    assert attribute(one).suspects == [] and "ran on one node (n1)" in attribute(one).why
    assert attribute([]).suspects == [] and "no rank recorded anything" in attribute([]).why
    late = FOUR_RANKS + [gone(r, n, 151.0, sigterm_at=150.0) for r, n in ((0, "n1"), (2, "n2"))]
    assert attribute(late).suspects == [] and "no rank died before Slurm stopped the step" in attribute(late).why


def write_launch(stage, job, launch, records):
    for record in records:
        ledger.append(launch_file(stage, job, 0, launch), record)


def crashed_on_n2():
    return FOUR_RANKS + [gone(3, "n2", 150.0), gone(0, "n1", 155.4, sigterm_at=150.3)]


def test_a_node_is_blamed_after_blame_after_crashes_and_a_cleared_node_starts_again(tmp_path):
    write_launch(tmp_path, "7", 0, crashed_on_n2())
    write_launch(tmp_path, "7", 1, crashed_on_n2())
    assert attribute_crash(tmp_path, "7", 0, 0, 137, blame_after=2) == []
    assert attribute_crash(tmp_path, "7", 0, 1, 137, blame_after=2) == ["n2"]
    records = ledger.read(tmp_path / "ledger.jsonl")
    assert [r["suspects"] for r in records if r["event"] == "crash_attribution"] == [["n2"], ["n2"]]
    (blamed,) = [r for r in records if r["event"] == "node_blamed"]
    assert blamed["node"] == "n2" and blamed["crashes"] == 2 and len(blamed["evidence"]) == 2
    assert blamed["evidence"][1]["ranks"] == [3] and blamed["evidence"][1]["step_restart"] == 1
    assert [r["node"] for r in records if r["event"] == "node_excluded"] == ["n2"]
    ledger.append(tmp_path / "ledger.jsonl", {"event": "node_cleared", "node": "n2"})
    assert crash_counts(ledger.read(tmp_path / "ledger.jsonl")) == {}


def test_blame_after_zero_records_the_evidence_but_never_blames(tmp_path):
    for launch in range(3):
        write_launch(tmp_path, "7", launch, crashed_on_n2())
        assert attribute_crash(tmp_path, "7", 0, launch, 137, blame_after=0) == []
    assert not any(r["event"] in ("node_blamed", "node_excluded") for r in ledger.read(tmp_path / "ledger.jsonl"))


def test_step_restart_without_spares_leaves_for_a_requeue_that_avoids_the_blamed_node(tmp_path, monkeypatch, capsys):
    for name in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SAUL_STEP_RESTART", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    write_launch(tmp_path, "local", 0, crashed_on_n2())
    write_launch(tmp_path, "local", 1, crashed_on_n2())
    assert step_restart([str(tmp_path), "137", "--step", "0", "--blame-after", "2"]) == RELAUNCH
    assert step_restart([str(tmp_path), "137", "--step", "1", "--blame-after", "2"]) == LEAVE
    assert "n2 of the allocation are out of service or blamed and no spare is left" in capsys.readouterr().out
    events = [r["event"] for r in ledger.read(tmp_path / "ledger.jsonl")]
    assert events == ["crash_attribution", "step_restart", "crash_attribution", "node_blamed", "node_excluded"]


def test_a_stopped_step_is_never_attributed(tmp_path, monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SAUL_STEP_RESTART"):
        monkeypatch.delenv(name, raising=False)
    write_launch(tmp_path, "local", 0, crashed_on_n2())
    assert step_restart([str(tmp_path), "75", "--step", "0", "--blame-after", "1"]) == LEAVE
    assert not any(r["event"] == "crash_attribution" for r in ledger.read(tmp_path / "ledger.jsonl"))


def test_the_guard_takes_submitits_arguments():
    assert module_and_args(["-u", "-m", "submitit.core._submit", "/f"]) == ("submitit.core._submit", ["/f"])
    with pytest.raises(SystemExit):
        module_and_args(["submitit.core._submit"])


def run_guarded(tmp_path, body, rank="1", wait=True):
    """A real rank process through the guard (module `fake_rank` written to tmp_path), as srun would start it."""
    (tmp_path / "fake_rank.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "SAUL_STAGE_DIR": str(tmp_path),
           "SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "0", "SAUL_STEP_RESTART": "2", "SLURM_PROCID": rank,
           "SLURMD_NODENAME": "n2"}
    proc = subprocess.Popen([sys.executable, "-u", "-m", "saul.resilience.rank_guard", "-u", "-m", "fake_rank", "x"],
                            env=env, stderr=subprocess.PIPE, text=True)
    return proc if not wait else (proc.wait(60), proc.stderr.read())


def launch_records(tmp_path, want, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = ledger.read(launch_file(tmp_path, "9", 0, 2))
        if want(records):
            return records
        time.sleep(0.05)
    raise AssertionError(f"records never complete: {ledger.read(launch_file(tmp_path, '9', 0, 2))}")


def test_the_guard_records_a_python_exception_and_keeps_the_exit_code_and_traceback(tmp_path):
    code, err = run_guarded(tmp_path, "import sys\nassert sys.argv[1:] == ['x']\nraise KeyError('loss')\n")
    assert code == 1 and "Traceback" in err and "KeyError: 'loss'" in err
    records = launch_records(tmp_path, lambda rs: any(r["event"] == "rank_gone" for r in rs))
    assert [r["event"] for r in records] == ["rank_start", "rank_exception", "rank_gone"]
    assert records[0]["rank"] == 1 and records[0]["node"] == "n2" and records[1]["type"] == "KeyError"
    assert records[2]["pid"] == records[0]["pid"] and records[2]["sigterm_at"] is None
    assert attribute(records).suspects == []  # one node only, and our code's exception


def test_a_chosen_exit_is_not_an_exception(tmp_path):
    code, _ = run_guarded(tmp_path, "import os\nos._exit(75)\n")
    assert code == 75
    records = launch_records(tmp_path, lambda rs: any(r["event"] == "rank_gone" for r in rs))
    assert [r["event"] for r in records] == ["rank_start", "rank_gone"]


def test_the_witness_times_a_sigkill_and_notes_slurms_sigterm_without_dying_of_it(tmp_path):
    proc = run_guarded(tmp_path, "import time\ntime.sleep(60)\n", wait=False)
    launch_records(tmp_path, lambda rs: any(r["event"] == "rank_start" for r in rs))
    witness = None
    deadline = time.time() + 10
    while witness is None and time.time() < deadline:  # the guard's child running `--witness <rank pid>`
        for pid in os.listdir("/proc"):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"--witness" in cmd and str(proc.pid).encode() in cmd:
                witness = int(pid)
        time.sleep(0.05)
    assert witness is not None
    time.sleep(0.3)  # its handlers are installed
    os.kill(witness, signal.SIGTERM)  # what Slurm sends every process of the step
    time.sleep(0.2)
    killed_at = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    records = launch_records(tmp_path, lambda rs: any(r["event"] == "rank_gone" for r in rs))
    (gone_record,) = [r for r in records if r["event"] == "rank_gone"]
    assert gone_record["sigterm_at"] < killed_at <= gone_record["time"]
    assert not any(r["event"] == "rank_exception" for r in records)


def test_a_negative_blame_after_is_refused_at_submit_and_the_default_reaches_the_batch_script():
    from jobs import slurm_launcher
    from saul.config.compose import compose
    from saul.config.errors import ConfigError
    from saul.config.validate import validate
    from saul.rundir import RunDir

    base = ["stage=cpt", "site=local-slurm", "model=tiny-mixtral", "nodes=2", "run=r", "runs_root=/tmp/saul-blame-test"]
    with pytest.raises(ConfigError, match=r"resilience.blame_after=-1 is out of range: it must be >= 0"):
        validate(compose([*base, "resilience.blame_after=-1"], env={}).cfg)
    for extra, want in (([], "--blame-after 2 || break"), (["resilience.blame_after=0"], "--blame-after 0 || break")):
        cfg = compose([*base, *extra], env={}).cfg
        validate(cfg)
        assert want in slurm_launcher.render_batch_script(cfg, RunDir.from_config(cfg), env={})[0]
