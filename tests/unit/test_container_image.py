"""jobs/container_image.py (the submit-time image check) and containers/exec-in-image.sh (the node-side one).

Images here are real but tiny (tests/tiny_images.py: this host's `cat` in a scratch image, with the labels a
case needs). The full CPU image is exercised in tests/integration/test_container_slurm.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from jobs.container_image import DEPS_LABEL, check_image, deps_sha256, sif_labels
from saul.config.errors import ConfigError
from tests.tiny_images import NO_APPTAINER, build_tiny_image

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "containers" / "exec-in-image.sh"
needs_apptainer = pytest.mark.skipif(shutil.which("apptainer") is None, reason=NO_APPTAINER)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """name -> a tiny image: `ok` (this checkout's dependency hash), `other` (another one), `plain` (no labels)."""
    if shutil.which("apptainer") is None:
        pytest.skip(NO_APPTAINER)
    folder = tmp_path_factory.mktemp("tiny-images")
    ok = {"org.saul.flavor": "cpu", DEPS_LABEL: deps_sha256("cpu"), "org.saul.git_revision": "a" * 40}
    return {
        "ok": build_tiny_image(folder / "ok.sif", ok),
        "other": build_tiny_image(folder / "other.sif", {**ok, DEPS_LABEL: "f" * 64,
                                                         "org.saul.git_revision": "0123456789ab" + "c" * 28}),
        "plain": build_tiny_image(folder / "plain.sif", {"maintainer": "someone"}),
    }


# --- the dependency hash ----------------------------------------------------------------------


def test_deps_hash_is_sha256sum_of_the_dependency_files(tmp_path):
    """The same text `sha256sum FILES | sha256sum` hashes in build.sh, and it moves with any of the files."""
    listing = subprocess.run(["sha256sum", "containers/saul-cpu.def", "containers/requirements-image.txt",
                              "constraints.txt"], cwd=REPO, check=True, capture_output=True).stdout
    assert deps_sha256("cpu") == subprocess.run(["sha256sum"], input=listing, check=True,
                                                capture_output=True).stdout.split()[0].decode()
    copy = tmp_path / "repo"
    for relative in ("containers/saul-cpu.def", "containers/requirements-image.txt", "constraints.txt"):
        (copy / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, copy / relative)
    assert deps_sha256("cpu", copy) == deps_sha256("cpu")
    with open(copy / "containers" / "requirements-image.txt", "a") as f:
        f.write("sympy==1.14.0\n")
    assert deps_sha256("cpu", copy) != deps_sha256("cpu")
    assert deps_sha256("gpu", copy) is None  # no such definition


# --- labels read from the SIF file ------------------------------------------------------------


@needs_apptainer
def test_labels_are_what_apptainer_inspect_shows(images):
    for image in images.values():
        shown = json.loads(subprocess.run(["apptainer", "inspect", "--labels", "--json", str(image)], check=True,
                                          capture_output=True, text=True).stdout)
        assert sif_labels(image) == shown["data"]["attributes"]["labels"]


# --- submit-time refusals -----------------------------------------------------------------------


def refusal(image) -> str:
    with pytest.raises(ConfigError) as caught:
        check_image("local-slurm", str(image))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("site 'local-slurm': container image ")
    return message


@needs_apptainer
def test_an_image_of_this_checkouts_dependencies_is_accepted(images):
    check_image("local-slurm", str(images["ok"]))


def test_a_missing_image_is_refused(tmp_path):
    assert "does not exist" in refusal(tmp_path / "nowhere.sif")
    assert "does not exist" in refusal(tmp_path)  # a directory is not an image file


def test_a_file_that_is_not_a_sif_image_is_refused(tmp_path):
    page = tmp_path / "saul-cpu.sif"
    page.write_text("<html>404 Not Found</html>\n")  # what a failed download leaves
    message = refusal(page)
    assert "not a SIF image" in message and "copy it again" in message
    empty = tmp_path / "empty.sif"
    empty.write_bytes(b"")
    assert "not a SIF image" in refusal(empty)


@needs_apptainer
def test_a_cut_copy_of_an_image_is_refused(images, tmp_path):
    cut = tmp_path / "cut.sif"
    cut.write_bytes(images["ok"].read_bytes()[:200])  # header intact, descriptor table missing
    assert "cut short" in refusal(cut)


def test_an_unreadable_image_is_refused(images, monkeypatch):
    """Root reads every file here, so the operating system's answer is what is replaced (os.access)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == images["ok"] else
                        real_access(p, mode, **kw))
    message = refusal(images["ok"])
    assert "not readable" in message and "chmod a+r" in message


@needs_apptainer
def test_an_image_without_provenance_is_refused(images):
    message = refusal(images["plain"])
    assert DEPS_LABEL in message and "containers/build.sh" in message


@needs_apptainer
def test_an_image_built_from_other_dependency_files_is_refused(images):
    message = refusal(images["other"])
    assert "built from revision 0123456789ab" in message
    assert "containers/saul-cpu.def, containers/requirements-image.txt, constraints.txt" in message
    assert "make image" in message


# --- node-side checks (containers/exec-in-image.sh) -------------------------------------------


def run_wrapper(*args: str, prefix=(), env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURMD_NODENAME": "n7", **(env_extra or {})}
    return subprocess.run([*prefix, "bash", str(WRAPPER), *args], capture_output=True, text=True, env=env,
                          timeout=120)


def assert_refused(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "node n7" in lines[0]
    for word in words:
        assert word in lines[0]


@needs_apptainer
def test_the_wrapper_runs_the_command_in_the_image_with_the_binds(images, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("from the host\n")
    result = run_wrapper("apptainer", "", f"{data}:/data,{tmp_path}", str(images["ok"]),
                         "/usr/bin/cat", "/data/f", "/opt/saul/image-stamp.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["from the host", '{"git_revision": "tiny"}']


def test_the_wrapper_refuses_a_missing_runtime(tmp_path):
    image = tmp_path / "x.sif"
    image.write_bytes(b"x")
    assert_refused(run_wrapper("no-such-runtime", "", str(tmp_path), str(image), "python"),
                   "'no-such-runtime' is not on PATH", "site.container.runtime")


def test_the_wrapper_refuses_an_image_missing_on_the_node(tmp_path):
    assert_refused(run_wrapper("bash", "", str(tmp_path), str(tmp_path / "gone.sif"), "python"),
                   f"{tmp_path / 'gone.sif'} does not exist", "site.container.image")


def test_the_wrapper_refuses_a_bind_path_missing_on_the_node(tmp_path):
    image = tmp_path / "x.sif"
    image.write_bytes(b"x")
    missing = tmp_path / "scratch" / "datasets"
    assert_refused(run_wrapper("bash", "", f"{tmp_path},{missing}:/data:ro", str(image), "python"),
                   f"bind path {missing} ", "site.container.binds")


@pytest.mark.skipif(os.geteuid() != 0, reason="drops from root to nobody to make a file unreadable")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed to drop to nobody")
def test_the_wrapper_refuses_an_image_the_job_user_cannot_read():
    with tempfile.TemporaryDirectory(prefix="saul-wrapper-") as name:
        folder = Path(name)
        folder.chmod(0o755)
        image = folder / "private.sif"
        image.write_bytes(b"x")
        image.chmod(0o600)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        assert_refused(run_wrapper("bash", "", str(folder), str(image), "python", prefix=nobody),
                       "not a readable file", "chmod a+r")


def test_the_wrapper_passes_the_gpu_flag_and_binds_to_the_runtime(tmp_path):
    """Argument order the runtime gets (a recording stand-in for it: no GPU runtime flags work here)."""
    runtime = tmp_path / "fake-apptainer"
    runtime.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    runtime.chmod(0o755)
    image = tmp_path / "x.sif"
    image.write_bytes(b"x")
    result = run_wrapper(str(runtime), "--rocm", f"{tmp_path},{tmp_path}:/work", str(image), "python", "-u", "-m", "x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["exec", "--rocm", "--bind", f"{tmp_path},{tmp_path}:/work", str(image),
                                          "python", "-u", "-m", "x"]
    no_flag = run_wrapper(str(runtime), "", str(tmp_path), str(image), "python")
    assert no_flag.stdout.splitlines() == ["exec", "--bind", str(tmp_path), str(image), "python"]
