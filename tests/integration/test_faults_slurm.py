"""Fault injection on the real local Slurm cluster: break a 2-node tiny CPT mid-training, let the
toolkit recover on its own, then check the stage completed with the clean run's weights, the data
order had no gap or repeat, the ledger names the fault, and a failed node is excluded."""
import os
from pathlib import Path
import signal
import subprocess
import time

import psutil
import pytest

from monitoring.power_log import load_power_dir
from tests.integration import e2e

pytestmark = pytest.mark.slurm

STEPS = 32
COMMON = ["stage=cpt", "model=tiny-mixtral", f"train.max_steps={STEPS}", "checkpoint.every_steps=8",
          "checkpoint.keep_last=3", "train.log_every=1", "train.log_sample_ids=true", "train.threads_per_rank=1",
          "optim.lr=1e-3", "energy.interval_s=0.5"]


def args(runs, data, run, *extra):
    return [*COMMON, f"runs_root={runs}", f"run={run}", f"data.path={data}", *extra]


@pytest.fixture(scope="module")
def clean_run(packed_data, tmp_path_factory):
    """The reference: the same 2-rank training without faults (local processes, same math)."""
    runs = tmp_path_factory.mktemp("clean")
    result = e2e.submit(*args(runs, packed_data, "clean", "site=local", "nproc=2"))
    assert result.returncode == 0, result.stdout + result.stderr
    stage = runs / "clean" / "cpt"
    return e2e.by_step(stage / "metrics.jsonl"), (stage / "final" / "model.safetensors").read_bytes()


def submit(cluster, *a):
    result = subprocess.run([*e2e.SUBMIT, *a, "site=local-slurm", "nodes=2"], env=cluster.client_environ(e2e.env_extra()),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split("submitted Slurm job ")[1].split()[0]


def ledger(stage):
    return e2e.records(stage / "ledger.jsonl")


def wait_until_done(stage, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ends = [r for r in ledger(stage) if r["event"] == "job_end"]
        if ends and ends[-1]["action"] in ("done", "stop"):
            return ends
        time.sleep(1)
    raise AssertionError(f"stage did not finish in {timeout}s; ledger: {ledger(stage)}")


def wait_for_checkpoint(stage, step, timeout=120):
    """Until checkpoint `step` is committed (saves are asynchronous: a step past it does not mean it is on disk)."""
    deadline = time.time() + timeout
    while not (stage / "checkpoints" / f"step-{step:08d}").is_dir():
        assert time.time() < deadline, f"checkpoint {step} not committed in {timeout}s"
        time.sleep(0.1)


def rank_process(stage, rank, timeout=60):
    """The rank's Python process itself: not the bash wrapper before its exec, not a child the rank forked
    (both carry the same command line)."""
    folder = str(stage / "logs" / "slurm")
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "submitit.core._submit" in cmd and folder in cmd and "python" in Path(cmd[0]).name:
                try:
                    parent = proc.parent()
                    if parent is not None and "submitit.core._submit" in (parent.cmdline() or []):
                        continue  # forked by the rank
                    if proc.environ().get("SLURM_PROCID") == str(rank):
                        return proc
                except psutil.NoSuchProcess:
                    continue
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} process not found")


def assert_recovered_exactly(stage, clean_run):
    clean_steps, clean_weights = clean_run
    steps = e2e.by_step(stage / "metrics.jsonl")
    assert sorted(steps) == list(range(1, STEPS + 1))
    seen = []
    for step in sorted(steps):
        for rec in steps[step]:
            assert rec["sample_ids"] == clean_steps[step][0]["sample_ids"]
            assert rec["loss"] == clean_steps[step][0]["loss"], f"step {step}"
        seen.extend(steps[step][-1]["sample_ids"])
    assert len(seen) == len(set(seen)) or len(seen) > 7000  # no sample twice within the epoch
    assert (stage / "final" / "model.safetensors").read_bytes() == clean_weights


def test_stop_signal_ahead_of_the_time_limit_checkpoints_requeues_and_resumes(slurm_cluster, packed_data, tmp_path,
                                                                              clean_run):
    runs = tmp_path / "runs"
    job = submit(slurm_cluster, *args(runs, packed_data, "usr2"))
    stage = runs / "usr2" / "cpt"
    e2e.wait_for_step(stage / "metrics.jsonl", 4, _Alive())
    slurm_cluster.run(["scancel", "--signal=USR2", job])  # what --signal=USR2@delay sends before the limit
    ends = wait_until_done(stage)
    assert [e["class"] for e in ends] == ["stopped", "done"]
    assert ends[0]["action"] == "requeue" and ends[0]["job_id"] == ends[1]["job_id"] == job
    assert_recovered_exactly(stage, clean_run)


def runs_of_job(cluster, job):
    """The job's allocation rows in sacct, one per run (a requeue adds one)."""
    def allocation(rows):
        return [r for r in rows if "." not in r["JobID"]]

    # The allocation's own rows decide: a step's row can end while the allocation still runs.
    rows = cluster.wait_for_sacct(job, lambda rs: allocation(rs) and allocation(rs)[-1]["State"] not in
                                  ("RUNNING", "PENDING", "REQUEUED", "RESIZING"), fields=("JobID", "State"), duplicates=True)
    return allocation(rows)


def test_a_killed_rank_is_relaunched_inside_the_allocation(slurm_cluster, packed_data, tmp_path, clean_run):
    runs = tmp_path / "runs"
    job = submit(slurm_cluster, *args(runs, packed_data, "kill"))
    stage = runs / "kill" / "cpt"
    e2e.wait_for_step(stage / "metrics.jsonl", 10, _Alive())
    wait_for_checkpoint(stage, 8)
    victim = rank_process(stage, 1)
    os.kill(victim.pid, signal.SIGKILL)
    ends = wait_until_done(stage)
    assert [e["class"] for e in ends] == ["done"]  # no requeue: the job ran once
    restarts = [r for r in ledger(stage) if r["event"] == "step_restart"]
    assert len(restarts) == 1 and restarts[0]["class"] == "crash" and restarts[0]["job_id"] == job
    assert restarts[0]["step_restart"] == 1 and restarts[0]["checkpoint_step"] == 8
    assert len(runs_of_job(slurm_cluster, job)) == 1  # sacct: one run of one job
    log = next((stage / "logs" / "slurm").glob(f"{job}_0_log.out")).read_text()
    ports = [line.split(":")[2].split()[0] for line in log.splitlines() if line.startswith("rendezvous: ")]
    assert len(ports) == 2 and ports[0] != ports[1]  # a fresh rendezvous port for the relaunch
    assert not any(r["event"] == "node_excluded" for r in ledger(stage))  # a crash blames no node
    assert_recovered_exactly(stage, clean_run)


def test_in_job_restart_off_goes_back_through_a_slurm_requeue(slurm_cluster, packed_data, tmp_path, clean_run):
    runs = tmp_path / "runs"
    job = submit(slurm_cluster, *args(runs, packed_data, "requeue", "resilience.in_job_restart=false"))
    stage = runs / "requeue" / "cpt"
    e2e.wait_for_step(stage / "metrics.jsonl", 10, _Alive())
    os.kill(rank_process(stage, 1).pid, signal.SIGKILL)
    ends = wait_until_done(stage)
    assert ends[0]["class"] == "crash" and ends[0]["action"] == "requeue" and ends[-1]["class"] == "done"
    assert not any(r["event"] == "step_restart" for r in ledger(stage))
    assert ends[0]["job_id"] == ends[-1]["job_id"] == job
    assert_recovered_exactly(stage, clean_run)


def test_repeated_crashes_spend_the_failure_budget_then_stop(slurm_cluster, packed_data, tmp_path):
    """Every launch dies before its first checkpoint: 2 relaunches in the allocation, then the budget (3) stops
    it, with the reason, without a requeue."""
    runs = tmp_path / "runs"
    # blame_after=0: the crashes all hit rank 1's node; blaming it would end this in a requeue (no spare), not a stop
    job = submit(slurm_cluster, *args(runs, packed_data, "budget", "resilience.failure_budget=3",
                                      "resilience.blame_after=0"))
    stage = runs / "budget" / "cpt"
    killed = set()
    deadline = time.time() + 300
    while time.time() < deadline and not any(r["event"] == "job_end" for r in ledger(stage)):
        try:
            proc = rank_process(stage, 1, timeout=2)
        except AssertionError:
            continue
        if proc.pid not in killed and e2e.records(stage / "metrics.jsonl") == []:
            os.kill(proc.pid, signal.SIGKILL)  # no step logged yet, no checkpoint ever: no progress
            killed.add(proc.pid)
        time.sleep(0.2)
    ends = wait_until_done(stage)
    restarts = [r for r in ledger(stage) if r["event"] == "step_restart"]
    assert [r["step_restart"] for r in restarts] == [1, 2]
    assert len(ends) == 1 and ends[0]["action"] == "stop" and ends[0]["class"] == "crash"
    assert "3 crashes in a row without a new checkpoint (budget 3)" in ends[0]["why"]
    assert len(runs_of_job(slurm_cluster, job)) == 1


def test_a_hung_rank_is_dumped_killed_and_relaunched_inside_the_allocation(slurm_cluster, packed_data, tmp_path, clean_run):
    runs = tmp_path / "runs"
    submit(slurm_cluster, *args(runs, packed_data, "hang", "resilience.hang_timeout_s=10"))
    stage = runs / "hang" / "cpt"
    e2e.wait_for_step(stage / "metrics.jsonl", 10, _Alive())
    os.kill(rank_process(stage, 1).pid, signal.SIGSTOP)
    ends = wait_until_done(stage)
    assert [e["class"] for e in ends] == ["done"]  # relaunched inside the allocation
    assert [r["class"] for r in ledger(stage) if r["event"] == "step_restart"] == ["hang"]
    assert any(r["event"] == "hang" for r in ledger(stage))
    rank0_log = next((stage / "logs" / "slurm").glob("*_0_log.out")).read_text()
    assert "Thread 0x" in rank0_log or "Current thread" in rank0_log  # faulthandler's stack dump
    assert_recovered_exactly(stage, clean_run)


def test_a_node_set_down_is_excluded_and_the_run_continues_elsewhere(slurm_cluster, packed_data, tmp_path,
                                                                       clean_run):
    runs = tmp_path / "runs"
    submit(slurm_cluster, *args(runs, packed_data, "down"))
    stage = runs / "down" / "cpt"
    e2e.wait_for_step(stage / "metrics.jsonl", 10, _Alive())
    victim = rank_process(stage, 1).environ()["SLURMD_NODENAME"]
    slurm_cluster.set_node_state(victim, "down", reason="fault injection")
    try:
        ends = wait_until_done(stage, timeout=400)
    finally:
        slurm_cluster.set_node_state(victim, "resume")
    failure = next(e for e in ends if e["class"] == "node_failure")
    assert failure["blamed_nodes"] == [victim]
    excluded = [r for r in ledger(stage) if r["event"] == "node_excluded"]
    assert [r["node"] for r in excluded] == [victim] and "down" in excluded[0]["reason"].lower()
    assert ends[-1]["class"] == "done" and victim not in ends[-1]["nodelist"]
    assert_recovered_exactly(stage, clean_run)


def test_a_node_set_down_is_swapped_for_a_spare_inside_the_allocation(slurm_cluster, packed_data, tmp_path, clean_run):
    """nodes=2 + 1 spare on the 3-node cluster: the ranks' node set DOWN leaves the --no-kill job, the ranks
    relaunch on the spare in the same allocation (no requeue: sacct shows one run of one job)."""
    runs = tmp_path / "runs"
    job = submit(slurm_cluster, *args(runs, packed_data, "spare", "resilience.spare_nodes=1"))
    stage = runs / "spare" / "cpt"
    e2e.wait_for_step(stage / "metrics.jsonl", 10, _Alive())
    first = (stage / "step_nodes").read_text().split()
    victim = rank_process(stage, 1).environ()["SLURMD_NODENAME"]
    assert len(first) == 2 and victim == first[1]
    slurm_cluster.set_node_state(victim, "down", reason="fault injection")
    try:
        ends = wait_until_done(stage, timeout=400)
    finally:
        slurm_cluster.set_node_state(victim, "resume")
    assert [e["class"] for e in ends] == ["done"]  # no requeue
    (restart,) = [r for r in ledger(stage) if r["event"] == "step_restart"]
    assert restart["class"] == "node_failure" and restart["lost_nodes"] == [victim]
    (swap,) = [r for r in ledger(stage) if r["event"] == "node_swap"]
    (spare,) = set(slurm_cluster.node_names) - set(first)
    assert swap["failed"] == [victim] and swap["replacements"] == [spare] and swap["spares_left"] == 0
    assert swap["nodes_after"] == [first[0], spare] and swap["job_id"] == job
    assert [r["node"] for r in ledger(stage) if r["event"] == "node_excluded"] == [victim]
    # sacct: one job, never requeued; Slurm books the lost node as a resize of the same run.
    assert [r["State"].split()[0] for r in runs_of_job(slurm_cluster, job)] == ["RESIZING", "COMPLETED"]
    assert_recovered_exactly(stage, clean_run)
    assert_metered_after_the_swap(stage, job, swap)


def assert_metered_after_the_swap(stage, job, swap):
    """The meter step died with the lost node: it was relaunched on the ranks' new nodes, and only on them, and
    their power logs run on to the end of the job, so the energy report covers the time after the swap."""
    (restart,) = [r for r in ledger(stage) if r["event"] == "meter_restart"]
    assert restart["nodes"] == swap["nodes_after"] and restart["job_id"] == job and restart["time"] >= swap["time"]
    end = max(r["time"] for r in ledger(stage) if r["event"] == "attempt_end")
    energy = load_power_dir(stage / "power")
    for node in swap["failed"]:  # never metered again once lost
        assert all(run.start_time < swap["time"] for run in energy[(node, job)].runs)
    for node in swap["nodes_after"]:
        (after,) = [run for run in energy[(node, job)].runs if run.start_time >= swap["time"]]
        assert after.complete and after.energy_j > 0
        assert after.start_time - restart["time"] < 15 and after.end_time >= end  # metered until the ranks ended
    total = sum(e.duration_s for e in energy.values())
    covered = sum(run.duration_s for e in energy.values() for run in e.runs if run.start_time >= swap["time"])
    assert covered >= len(swap["nodes_after"]) * (end - restart["time"] - 15) and total > covered


def guarded_rank(stage, rank, timeout=60):
    """(pid, node, witness pid) of `rank` as its witness names it (saul.resilience.rank_guard --witness PID FILE):
    the rank process itself, never a worker it forked."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "--witness" in cmd and str(stage) in cmd[-1]:
                try:
                    env = proc.environ()
                except psutil.NoSuchProcess:
                    continue
                if env.get("SLURM_PROCID") == str(rank) and psutil.pid_exists(int(cmd[cmd.index("--witness") + 1])):
                    return int(cmd[cmd.index("--witness") + 1]), env["SLURMD_NODENAME"], proc.pid
        time.sleep(0.2)
    raise AssertionError(f"no witness for rank {rank}")


def catches_sigterm(pid, timeout=30):
    """Until process `pid` has its SIGTERM handler installed (SigCgt in /proc: the witness is ready to time a death)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never caught SIGTERM")


def test_a_node_whose_rank_keeps_crashing_is_blamed_and_swapped_for_the_spare(slurm_cluster, packed_data, tmp_path,
                                                                             clean_run):
    """A bad node Slurm never marks: its rank is SIGKILLed in two launches in a row (fault injection keyed on the
    node). The witnesses saw it die before Slurm's SIGTERM both times: node_blamed after resilience.blame_after=2,
    excluded, the ranks move to the spare inside the same allocation, one job, the clean run's losses and weights."""
    runs = tmp_path / "runs"
    job = submit(slurm_cluster, *args(runs, packed_data, "blame", "resilience.spare_nodes=1"))
    stage = runs / "blame" / "cpt"
    e2e.wait_for_step(stage / "metrics.jsonl", 10, _Alive())
    first = (stage / "step_nodes").read_text().split()
    victim = guarded_rank(stage, 1)[1]
    killed = set()
    while len(killed) < 2:  # every launch: the rank on the bad node dies
        pid, node, witness = guarded_rank(stage, 1)
        if pid in killed or node != victim:
            time.sleep(0.2)
            continue
        # Mid-training, as a failing GPU would: a crash during start-up is rightly ambiguous (Slurm's SIGTERM ends
        # every rank at once there, before our stop handling is in place).
        if sum(1 for r in ledger(stage) if r["event"] == "attempt_start") <= len(killed):
            time.sleep(0.05)
            continue
        try:
            os.kill(pid, signal.SIGSTOP)  # frozen where it is: a quick relaunch cannot finish the run meanwhile
            catches_sigterm(witness)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, FileNotFoundError):  # that launch ended meanwhile: find the next one's rank
            continue
        killed.add(pid)
    ends = wait_until_done(stage, timeout=400)
    assert [e["class"] for e in ends] == ["done"]  # no requeue
    attributions = [r for r in ledger(stage) if r["event"] == "crash_attribution"]
    assert [r["suspects"] for r in attributions] == [[victim], [victim]]
    assert all(r["ranks"] == [1] for r in attributions)
    (blamed,) = [r for r in ledger(stage) if r["event"] == "node_blamed"]
    assert blamed["node"] == victim and blamed["crashes"] == 2 and len(blamed["evidence"]) == 2
    assert [r["node"] for r in ledger(stage) if r["event"] == "node_excluded"] == [victim]
    (swap,) = [r for r in ledger(stage) if r["event"] == "node_swap"]
    (spare,) = set(slurm_cluster.node_names) - set(first)
    assert swap["failed"] == [victim] and swap["replacements"] == [spare]
    restarts = [r for r in ledger(stage) if r["event"] == "step_restart"]
    assert [r["class"] for r in restarts] == ["crash", "node_failure"] and restarts[1]["blamed_nodes"] == [victim]
    assert [r["State"].split()[0] for r in runs_of_job(slurm_cluster, job)] == ["COMPLETED"]  # one job, one run
    assert_recovered_exactly(stage, clean_run)


@pytest.mark.slow
def test_every_rank_crashing_at_once_blames_nobody(slurm_cluster, packed_data, tmp_path, clean_run):
    """Both ranks SIGKILLed together (what a crash of our own code on every node looks like to Slurm): ambiguous,
    recorded as such, nobody blamed even with resilience.blame_after=1; relaunched, finishes exactly. The same
    verdict for a Python exception on every rank: tests/unit/test_blame.py (real guard processes)."""
    runs = tmp_path / "runs"
    job = submit(slurm_cluster, *args(runs, packed_data, "all", "resilience.blame_after=1"))
    stage = runs / "all" / "cpt"
    e2e.wait_for_step(stage / "metrics.jsonl", 10, _Alive())
    found = [guarded_rank(stage, 0), guarded_rank(stage, 1)]
    for pid, _, witness in found:
        os.kill(pid, signal.SIGSTOP)
        catches_sigterm(witness)
    for pid, _, _ in found:
        os.kill(pid, signal.SIGKILL)
    ends = wait_until_done(stage)
    assert [e["class"] for e in ends] == ["done"]
    (attribution,) = [r for r in ledger(stage) if r["event"] == "crash_attribution"]
    assert attribution["suspects"] == [] and "died together: ambiguous" in attribution["why"]
    assert attribution["ranks"] == [0, 1] and attribution["job_id"] == job
    assert not any(r["event"] in ("node_blamed", "node_excluded") for r in ledger(stage))
    assert_recovered_exactly(stage, clean_run)


def test_a_node_set_down_without_a_spare_shrinks_the_run_with_allow_shrink(slurm_cluster, packed_data, tmp_path,
                                                                            clean_run):
    """nodes=2, no spare, resilience.allow_shrink=true: the lost node leaves the --no-kill job and the ranks go on
    on the one healthy node, 1 rank with twice the gradient accumulation: same samples, the clean losses up to
    the reduction order (tests/integration/test_elastic_resume.py documents the tolerance), one job."""
    runs = tmp_path / "runs"
    job = submit(slurm_cluster, *args(runs, packed_data, "shrink", "resilience.allow_shrink=true"))
    stage = runs / "shrink" / "cpt"
    e2e.wait_for_step(stage / "metrics.jsonl", 10, _Alive())
    first = (stage / "step_nodes").read_text().split()
    victim = rank_process(stage, 1).environ()["SLURMD_NODENAME"]
    slurm_cluster.set_node_state(victim, "down", reason="fault injection")
    try:
        ends = wait_until_done(stage, timeout=400)
    finally:
        slurm_cluster.set_node_state(victim, "resume")
    assert [e["class"] for e in ends] == ["done"]  # no requeue
    (shrink,) = [r for r in ledger(stage) if r["event"] == "shrink"]
    assert shrink["failed"] == [victim] and shrink["nodes_after"] == [n for n in first if n != victim]
    starts = [r for r in ledger(stage) if r["event"] == "attempt_start"]
    assert [r["world_size"] for r in starts] == [2, 1]
    clean_steps, _ = clean_run
    steps = e2e.by_step(stage / "metrics.jsonl")
    assert sorted(steps) == list(range(1, STEPS + 1))
    for step, recs in steps.items():
        want = clean_steps[step][0]
        assert all(r["sample_ids"] == want["sample_ids"] for r in recs), f"step {step}"
        assert recs[-1]["loss"] == pytest.approx(want["loss"], rel=1e-4), f"step {step}"
        if step <= 8:  # the 2-rank attempt, before the checkpoint it resumed from: bitwise
            assert recs[0]["loss"] == want["loss"]
    assert [r["State"].split()[0] for r in runs_of_job(slurm_cluster, job)] == ["RESIZING", "COMPLETED"]


def test_a_configuration_error_is_not_retried(slurm_cluster, packed_data, tmp_path):
    runs = tmp_path / "runs"
    job = submit(slurm_cluster, *args(runs, packed_data, "bad", "model.init_from_stage=anneal"))
    stage = runs / "bad" / "cpt"
    ends = wait_until_done(stage)
    assert len(ends) == 1 and ends[0]["class"] == "user_error" and ends[0]["action"] == "stop"
    rows = slurm_cluster.wait_for_sacct(job, lambda rs: rs and rs[0]["State"] == "FAILED",
                                        fields=("JobID", "State", "ExitCode"), duplicates=True)
    assert rows[0]["ExitCode"] == "2:0"
    assert sum(1 for r in rows if "." not in r["JobID"]) == 1  # ran once: no requeue
    log = next((stage / "logs" / "slurm").glob("*_0_log.out")).read_text()
    assert "error: model.init_from_stage=anneal: no final model" in log


class _Alive:
    """A stand-in for a Popen in e2e.wait_for_step: a Slurm job has no local process to poll."""

    returncode = None

    def poll(self):
        return None


@pytest.mark.slow
def test_a_real_time_limit_is_survived(slurm_cluster, packed_data, tmp_path):
    """Slurm's own USR2 ahead of a 2-minute limit (checked every ~30 s): stop, checkpoint, requeue, finish."""
    runs = tmp_path / "runs"
    steps = 1000  # ~75 s of steps: the limit's USR2 (60-120 s after start, Slurm polls every 30 s) lands mid-run
    submit(slurm_cluster, *[a for a in args(runs, packed_data, "limit") if not a.startswith("train.max_steps")],
           f"train.max_steps={steps}", "checkpoint.every_steps=500", "train.log_every=10", "time_limit_min=2")
    stage = runs / "limit" / "cpt"
    ends = wait_until_done(stage, timeout=600)
    classes = [e["class"] for e in ends]
    assert classes[-1] == "done" and "stopped" in classes, ends
    assert all(c in ("stopped", "done") for c in classes)  # the limit never became a crash or a TIMEOUT
    steps_seen = e2e.by_step(stage / "metrics.jsonl")
    assert max(steps_seen) == steps
    for recs in steps_seen.values():  # a step logged twice would have to have seen the same samples
        assert all(r["sample_ids"] == recs[0]["sample_ids"] for r in recs)
    attempts = [r for r in ledger(stage) if r["event"] == "attempt_end"]
    for before, after in zip(attempts, attempts[1:]):
        assert after["step_start"] == before["step_end"]  # stopped at a checkpoint: nothing redone
