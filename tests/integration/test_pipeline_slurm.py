"""stage=pipeline on a real Slurm cluster (tests/slurm_cluster.py): every stage submitted at once with
afterok dependencies; a stage that fails on its node leaves the next one pending forever
(DependencyNeverSatisfied) and `jobs/status.py` says it is blocked and by what; the same command,
once the cause is fixed, resubmits the failed stage, replaces the job that could never start and
runs the chain to the end; then a third submission finds nothing to do.

The failure is a real one the login node cannot see: the node's host Python for the batch-script
helpers does not exist there (`site.host_python`), which the batch script refuses with exit 2."""
import json
import re
import subprocess
import time

import pytest

from tests.integration import e2e

pytestmark = pytest.mark.slurm
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def submit(cluster, *args):
    return subprocess.run([*e2e.SUBMIT, *args], env=cluster.client_environ(e2e.env_extra()), capture_output=True,
                          text=True, timeout=300)


def pipeline_args(runs, *extra):
    return ["stage=pipeline", "model=tiny-mixtral", "site=local-slurm", f"runs_root={runs}", "run=chain",
            "pipeline.stages=[prepare,cpt]", "data.num_documents=60", "train.max_steps=2", "checkpoint.every_steps=2",
            "resilience.failure_budget=1", *extra]


def status(cluster, runs):
    result = subprocess.run([e2e.sys.executable, str(e2e.REPO / "jobs" / "status.py"), f"runs_root={runs}", "run=chain",
                             "--json"], capture_output=True, text=True, timeout=60,
                            env=cluster.client_environ({**e2e.env_extra(), "COLUMNS": "250"}))
    assert result.returncode == 0, result.stderr
    return {s["stage"]: s for s in json.loads(result.stdout)["stages"]}


def submitted(output: str) -> dict:
    return {stage: job for stage, job in re.findall(r"  (\w+): submitted Slurm job (\d+)", output)}


def poll(what, until, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if until(value):
            return value
        assert time.monotonic() < deadline, f"never reached; last: {value}"
        time.sleep(0.5)


def test_a_failed_stage_blocks_the_chain_and_the_same_command_finishes_it(slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    first = submit(slurm_cluster, *pipeline_args(runs, "pipeline.prepare.site.host_python=/nonexistent/python3"))
    assert first.returncode == 0, first.stdout + first.stderr
    jobs = submitted(first.stdout)
    assert list(jobs) == ["prepare", "cpt"]
    assert f"cpt: submitted Slurm job {jobs['cpt']} (1 node(s) x 1 ranks, 5 min) after job {jobs['prepare']} " \
           f"succeeds (afterok)" in first.stdout
    shown = slurm_cluster.run(["scontrol", "show", "job", "-o", jobs["cpt"]]).stdout
    assert re.search(rf"Dependency=afterok:{jobs['prepare']}\b", shown), shown

    slurm_cluster.wait_for_sacct(jobs["prepare"], lambda rows: rows and rows[0]["State"] == "FAILED", timeout=60)
    reason = poll(lambda: slurm_cluster.run(["squeue", "-h", "-o", "%T|%r", "-j", jobs["cpt"]]).stdout.strip(),
                  lambda r: r == "PENDING|DependencyNeverSatisfied")
    assert reason
    states = poll(lambda: status(slurm_cluster, runs), lambda s: s["cpt"]["state"] == "blocked")
    assert states["prepare"]["state"] == "failed"
    assert states["cpt"]["blocked_by"] == f"prepare (job {jobs['prepare']}, FAILED)"
    table = subprocess.run([e2e.sys.executable, str(e2e.REPO / "jobs" / "status.py"), f"runs_root={runs}", "run=chain"],
                           capture_output=True, text=True, timeout=60,
                           env=slurm_cluster.client_environ({**e2e.env_extra(), "COLUMNS": "250"}))
    assert "never starts: its dependency prepare" in table.stdout and "DependencyNeverSatisfied" in table.stdout

    second = submit(slurm_cluster, *pipeline_args(runs))  # the bad setting is gone (site.* may change)
    assert second.returncode == 0, second.stdout + second.stderr
    again = submitted(second.stdout)
    assert f"cpt: cancelled job {jobs['cpt']} (its dependency failed: it could never start)" in second.stdout
    assert again["prepare"] != jobs["prepare"] and again["cpt"] != jobs["cpt"]
    ended = slurm_cluster.wait_for_sacct(again["cpt"], lambda rows: rows and rows[0]["State"].split()[0] in ENDED,
                                         timeout=240)
    log = runs / "chain" / "cpt" / "logs" / "slurm" / f"{again['cpt']}_0_log.out"
    assert ended[0]["State"] == "COMPLETED", log.read_text()[-3000:] if log.is_file() else ended
    slurm_cluster.wait_for_sacct(jobs["cpt"], lambda rows: rows and rows[0]["State"].startswith("CANCELLED"), timeout=30)
    done = status(slurm_cluster, runs)
    assert done["prepare"]["state"] == "done" and done["cpt"]["state"] == "done"
    cpt_ledger = e2e.records(runs / "chain" / "cpt" / "ledger.jsonl")
    events = [(r["event"], r.get("job_id"), r.get("dependency")) for r in cpt_ledger
              if r["event"] in ("submitted", "cancelled")]
    assert events == [("submitted", jobs["cpt"], jobs["prepare"]), ("cancelled", jobs["cpt"], None),
                      ("submitted", again["cpt"], again["prepare"])]
    lineage = json.loads((runs / "chain" / "cpt" / "lineage.json").read_text())
    assert lineage["job_id"] == again["cpt"] and lineage["output"]["step"] == 2

    third = submit(slurm_cluster, *pipeline_args(runs))
    assert third.returncode == 0 and "nothing to do" in third.stdout and not submitted(third.stdout)
