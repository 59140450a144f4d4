"""Multi-node jobs inside the real CPU image on the local Slurm cluster.

The image is the one `make image` builds (containers/build.sh cpu --cache): Debian bookworm by debootstrap, a venv
with torch 2.13.0 CPU and containers/requirements-image.txt, cached outside the repository under the hash of its
dependency files. Building it takes longer than CI's budget (README, "Containers"), so these tests skip when it is
not cached; `make test-slow` and `make test-container` build it first.

What "inside" means is checked from the host on the live processes: each rank's and each power meter's
environment (APPTAINER_CONTAINER, the image's PATH) and its root file system (/proc/<pid>/root: the image's
/etc/os-release and /opt/saul/image-stamp.json, which the host does not have).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from jobs.container_image import DEPS_LABEL, cached_image, deps_sha256, sif_labels
from tests.data_fixtures import LEGALBENCH, raw_corpus  # noqa: F401 (fixture)
from tests.integration import e2e

pytestmark = [pytest.mark.slurm, pytest.mark.container]

STEPS = 24  # long enough that a kill after the first checkpoint lands mid-training
COMMON = ["stage=cpt", "model=tiny-mixtral", f"train.max_steps={STEPS}", "checkpoint.every_steps=4",
          "checkpoint.keep_last=3", "train.log_every=1", "train.threads_per_rank=1", "optim.lr=1e-3",
          "energy.interval_s=0.5", "site=local-slurm", "nodes=2"]

@pytest.fixture(scope="session")
def cpu_image() -> Path:
    if subprocess.run(["sh", "-c", "command -v apptainer"], capture_output=True).returncode != 0:
        pytest.skip("apptainer is not installed (scripts/install-apptainer.sh)")
    image = cached_image("cpu")
    if not image.is_file():
        pytest.skip(f"no cached CPU image for these dependency files ({image}): `make image` builds it "
                    f"(longer than CI's budget, so `make test` does not)")
    return image


def submit(cluster, runs, data, run, image, *extra) -> str:
    result = subprocess.run([*e2e.SUBMIT, *COMMON, f"runs_root={runs}", f"run={run}", f"data.path={data}",
                             f"site.container.image={image}", *extra],
                            env=cluster.client_environ(e2e.env_extra()), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split("submitted Slurm job ")[1].split()[0]


def job_ends(stage: Path):
    return [r for r in e2e.records(stage / "ledger.jsonl") if r["event"] == "job_end"]


def finished(stage: Path) -> bool:
    ends = job_ends(stage)
    return bool(ends) and ends[-1]["action"] in ("done", "stop")


def wait_until_finished(stage: Path, timeout: float = 400) -> list:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if finished(stage):
            return job_ends(stage)
        time.sleep(0.5)
    raise AssertionError(f"stage did not finish in {timeout}s; ledger: {e2e.records(stage / 'ledger.jsonl')}")


def contained(stage: Path):
    """(kind, id, process) for each rank (kind 'rank', id SLURM_PROCID) and each power meter (kind 'meter',
    id the node) of this stage that runs inside a container, seen from the host."""
    folder, power = str(stage / "logs" / "slurm"), str(stage / "power")
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if not cmd or not os.path.basename(cmd[0]).startswith("python"):
            continue  # the runtime's own processes carry the same arguments
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "APPTAINER_CONTAINER" not in env:
            continue
        if "submitit.core._submit" in cmd and folder in cmd:
            yield "rank", env.get("SLURM_PROCID"), proc
        elif "monitoring.meter" in cmd and any(power in arg for arg in cmd):
            yield "meter", env.get("SLURMD_NODENAME"), proc


def inside_view(proc) -> dict:
    root = Path(f"/proc/{proc.pid}/root")
    env = proc.environ()
    return {"container": env.get("APPTAINER_CONTAINER"), "path": env.get("PATH", ""),
            "node": env.get("SLURMD_NODENAME"), "os_release": (root / "etc" / "os-release").read_text(),
            "stamp": json.loads((root / "opt" / "saul" / "image-stamp.json").read_text())}


def watch_until_finished(stage: Path, timeout: float = 400) -> dict:
    """Poll the live processes while the job runs: (kind, id) -> what they saw inside."""
    seen, deadline = {}, time.time() + timeout
    while not finished(stage):
        assert time.time() < deadline, f"stage did not finish in {timeout}s"
        for kind, ident, proc in contained(stage):
            if (kind, ident) not in seen:
                try:
                    seen[(kind, ident)] = inside_view(proc)
                except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                    continue
        time.sleep(0.1)
    return seen


@pytest.fixture(scope="module")
def clean_run(slurm_cluster, packed_data, cpu_image, tmp_path_factory):
    """A 2-node tiny CPT whose ranks and meters run in the image, watched while it runs."""
    runs = tmp_path_factory.mktemp("container-clean") / "runs"
    job = submit(slurm_cluster, runs, packed_data, "clean", cpu_image)
    stage = runs / "clean" / "cpt"
    seen = watch_until_finished(stage)
    return {"job": job, "stage": stage, "seen": seen}


def image_stamp(image: Path) -> dict:
    """The stamp as the image itself holds it (read by the runtime, not through a job)."""
    out = subprocess.run(["apptainer", "exec", str(image), "cat", "/opt/saul/image-stamp.json"], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out)


def test_the_image_holds_the_pinned_stack_and_no_build_leftovers(cpu_image):
    """What `make image` built: torch 2.13.0 CPU and the pinned requirements, no build inputs left behind."""
    probe = ("import importlib.metadata as m, json, os, torch; print(json.dumps({'torch': torch.__version__, "
             "'pins': {n: m.version(n) for n in ('transformers', 'trl', 'deepspeed', 'submitit', 'datasets')}, "
             "'cas': os.listdir('/usr/local/share/ca-certificates'), 'build': os.path.exists('/opt/saul/build')}))")
    out = subprocess.run(["apptainer", "exec", "--cleanenv", "--no-home", str(cpu_image), "python", "-c", probe],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["torch"] == "2.13.0+cpu"
    pins = dict(line.split("==") for line in (Path(__file__).resolve().parents[2] / "containers" /
                                              "requirements-image.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name, version in found["pins"].items():
        assert version == pins[name], name
    assert found["cas"] == [] and found["build"] is False  # the build host's proxy CA and the wheel are gone


def test_every_rank_and_meter_runs_inside_the_image(clean_run, cpu_image, slurm_cluster):
    stamp = image_stamp(cpu_image)
    labels = sif_labels(cpu_image)
    assert stamp["deps_sha256"] == labels[DEPS_LABEL] == deps_sha256("cpu")  # built from this checkout's deps
    assert stamp["git_revision"] == labels["org.saul.git_revision"] and {"git_dirty", "built_at"} <= set(stamp)
    assert not Path("/opt/saul/image-stamp.json").exists()  # so the view below is the image's, not the host's

    seen = clean_run["seen"]
    assert sorted(k for k in seen if k[0] == "rank") == [("rank", "0"), ("rank", "1")], seen.keys()
    assert sorted(k for k in seen if k[0] == "meter") == [("meter", n) for n in sorted(
        {v["node"] for k, v in seen.items() if k[0] == "rank"})], seen.keys()
    assert len({seen[("rank", r)]["node"] for r in ("0", "1")}) == 2  # one rank per node
    for view in seen.values():
        assert view["container"] == str(cpu_image)
        assert view["path"].startswith("/opt/saul/venv/bin:")  # the image's %environment
        assert "VERSION_CODENAME=bookworm" in view["os_release"] and "ID=debian" in view["os_release"]
        assert view["stamp"] == stamp


def test_outputs_land_on_the_bound_run_directory_and_the_ledger_records_the_image(clean_run, cpu_image):
    stage = clean_run["stage"]
    ends = job_ends(stage)
    assert [e["action"] for e in ends] == ["done"] and ends[0]["job_id"] == clean_run["job"]
    assert (stage / "final" / "model.safetensors").is_file()
    assert (stage / "checkpoints" / f"step-{STEPS:08d}").is_dir()
    assert sorted(e2e.by_step(stage / "metrics.jsonl")) == list(range(1, STEPS + 1))
    nodes = {v["node"] for v in clean_run["seen"].values()}
    power_files = [p.name for p in (stage / "power").iterdir()]
    for node in nodes:  # each node's meter wrote through the bind
        assert any(node in name for name in power_files), power_files

    (start,) = [r for r in e2e.records(stage / "ledger.jsonl") if r["event"] == "attempt_start"]
    assert start["image"]["path"] == str(cpu_image)
    assert start["image"]["stamp"] == image_stamp(cpu_image)
    assert start["world_size"] == 2 and start["nodes"] == 2


def test_a_killed_rank_inside_the_image_resumes_to_the_clean_runs_losses(slurm_cluster, packed_data, cpu_image,
                                                                        clean_run, tmp_path):
    runs = tmp_path / "runs"
    submit(slurm_cluster, runs, packed_data, "kill", cpu_image)
    stage = runs / "kill" / "cpt"
    deadline = time.time() + 300
    while not any(r["step"] >= 5 for r in e2e.step_records(stage / "metrics.jsonl")):  # checkpoint 4 is written
        assert time.time() < deadline and not finished(stage), "the run did not reach step 5"
        time.sleep(0.1)
    (victim,) = [p for kind, ident, p in contained(stage) if kind == "rank" and ident == "1"]
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = max(r["step"] for r in e2e.step_records(stage / "metrics.jsonl"))
    assert killed_at < STEPS - 1, f"the kill came too late (step {killed_at}) to test a resume"
    ends = wait_until_finished(stage)
    # the crash is recovered within the job (the ranks' step relaunched) or by a requeue: either is recorded
    crashes = [r for r in e2e.records(stage / "ledger.jsonl")
               if r["event"] in ("step_restart", "job_end") and r.get("class") == "crash"]
    assert crashes and crashes[0]["action"] in ("relaunch", "requeue"), e2e.records(stage / "ledger.jsonl")
    assert ends[-1]["class"] == "done"

    clean = e2e.by_step(clean_run["stage"] / "metrics.jsonl")
    resumed = e2e.by_step(stage / "metrics.jsonl")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step, records in resumed.items():
        for record in records:  # the steps redone after the kill too
            assert record["loss"] == clean[step][0]["loss"], f"step {step}"
    assert ((stage / "final" / "model.safetensors").read_bytes()
            == (clean_run["stage"] / "final" / "model.safetensors").read_bytes())
    starts = [r for r in e2e.records(stage / "ledger.jsonl") if r["event"] == "attempt_start"]
    assert len(starts) == 2 and all(s["image"]["path"] == str(cpu_image) for s in starts)


def test_the_real_prepare_pipeline_runs_inside_the_image_and_makes_the_hosts_dataset(slurm_cluster, raw_corpus,
                                                                                     cpu_image, tmp_path):
    """stage=prepare on 2 nodes inside the image (PDFs through the image's Poppler binding, HTML, dumps, the KenLM
    filter, tiny-mixtral's local BPE): the same dataset and audit, byte for byte, as on the host."""
    from tests.integration.test_prepare_pipeline import SMALL_PIECES, _overrides, _same_output_split_over_two_ranks

    root, _ = raw_corpus
    host = e2e.submit(*_overrides(root), f"runs_root={tmp_path / 'host'}", "run=host")
    assert host.returncode == 0, host.stdout[-2000:] + host.stderr[-2000:]
    # the LegalBench folder the decontamination reads is outside the run directory: bound like a user would
    binds = [f"site.container.binds=[{LEGALBENCH.resolve()}]"] if LEGALBENCH.is_dir() else []
    proc = subprocess.run([*e2e.SUBMIT, *_overrides(root, [SMALL_PIECES], site="local-slurm"), "nodes=2", *binds,
                           f"site.container.image={cpu_image}", "follow=true", f"runs_root={tmp_path / 'image'}",
                           "run=image"], env=slurm_cluster.client_environ(e2e.env_extra()), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    stage = tmp_path / "image" / "image" / "prepare"
    starts = [r for r in e2e.records(stage / "ledger.jsonl") if r["event"] == "attempt_start"]
    assert starts and all(r["image"]["path"] == str(cpu_image) for r in starts)
    _same_output_split_over_two_ranks(tmp_path / "image" / "image" / "data", tmp_path / "host" / "host" / "data")
