"""Stay attached to a Slurm job (`follow=true`): print rank 0's log as it grows, return the stage's outcome."""
from __future__ import annotations

import time
from pathlib import Path

from jobs.follow import Follower
from jobs.slurm_launcher import job_states, live_states
from saul import exit_codes
from saul.resilience import ledger
from saul.rundir import RunDir


def outcome_code(job_id: str, rundir: RunDir) -> int:
    """The stage's own verdict (ledger) when the job reached one, else Slurm's."""
    ends = [r for r in ledger.read(rundir.ledger) if r.get("event") == "attempt_end" and str(r.get("job_id")) == job_id]
    if ends:
        return int(ends[-1]["exit_code"])
    return exit_codes.DONE if job_states([job_id]).get(job_id) == "COMPLETED" else 1


def follow_slurm_job(job_id: str, log: Path, rundir: RunDir, poll_s: float = 1.0) -> int:
    follower = Follower(log, rundir.metrics)
    state = "PENDING"
    try:
        while True:
            follower.tick()
            state = job_states([job_id]).get(job_id, state)
            if state and state not in live_states():
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\ndetached; job {job_id} keeps running (cancel: python jobs/cancel.py run={rundir.run})")
        return exit_codes.DONE
    follower.close()
    code = outcome_code(job_id, rundir)
    print(f"job {job_id} ended {state}; stage exit code {code}")
    return code
