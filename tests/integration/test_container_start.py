"""What only the compute node can tell, on the local Slurm cluster: a bind path missing there stops the job at
start with one clear line in the rank logs, exit 2, and no requeue (containers/exec-in-image.sh).

The image is a tiny real one with this checkout's dependency label (tests/tiny_images.py), so the submit-time
check passes and the node-side check is what refuses; no CPU image is needed."""
from __future__ import annotations

import subprocess
import time

import pytest

from jobs.container_image import DEPS_LABEL, deps_sha256
from tests.integration import e2e
from tests.tiny_images import build_tiny_image

pytestmark = pytest.mark.slurm


def test_a_bind_path_missing_on_the_node_stops_the_job_at_start(slurm_cluster, packed_data, tmp_path):
    image = build_tiny_image(tmp_path / "tiny.sif", {"org.saul.flavor": "cpu", DEPS_LABEL: deps_sha256("cpu"),
                                                     "org.saul.git_revision": "a" * 40})
    missing = tmp_path / "only-on-the-login-node"
    runs = tmp_path / "runs"
    result = subprocess.run(
        [*e2e.SUBMIT, "stage=cpt", "model=tiny-mixtral", "site=local-slurm", "nodes=2", "train.max_steps=2",
         f"runs_root={runs}", "run=bind", f"data.path={packed_data}", f"site.container.image={image}",
         f"site.container.binds=[{missing}:/data]"],
        env=slurm_cluster.client_environ(e2e.env_extra()), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr  # the login node cannot know
    stage = runs / "bind" / "cpt"

    deadline = time.time() + 180
    while not [r for r in e2e.records(stage / "ledger.jsonl") if r["event"] == "job_end"]:
        assert time.time() < deadline, "the job did not end"
        time.sleep(0.5)
    (end,) = [r for r in e2e.records(stage / "ledger.jsonl") if r["event"] == "job_end"]
    assert end["exit_code"] == 2 and end["class"] == "user_error" and end["action"] == "stop"
    assert not [r for r in e2e.records(stage / "ledger.jsonl") if r["event"] == "attempt_start"]  # no rank started

    logs = {p.name: p.read_text() for p in (stage / "logs" / "slurm").glob("*_log.out")}
    errors = {line for text in logs.values() for line in text.splitlines() if line.startswith("error: ")}
    assert errors, logs
    for line in errors:
        assert f"bind path {missing} (site.container.binds) does not exist on node n" in line
