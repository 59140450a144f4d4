"""containers/: the Apptainer definition files and build.sh.

Apptainer is not packaged for Debian bookworm, so the build command line is checked with a fake `apptainer`
first on PATH (it records its argv and creates the output file); a real build runs where apptainer exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
BUILD_SH = CONTAINERS / "build.sh"
FLAVORS = ("rocm", "cuda", "cpu")
NO_APPTAINER = (
    "apptainer is not installed on this machine (not in Debian bookworm; see shared/notes/local-slurm-cluster.md)"
)

FAKE_APPTAINER = r"""#!/bin/sh
# Test double for apptainer: record argv (one per line), create the image a real build would write.
if [ "$1" = "--version" ]; then
    echo "apptainer version 1.4.5"
    exit 0
fi
printf '%s\n' "$@" > "$FAKE_APPTAINER_LOG"
n=$#
i=0
for arg in "$@"; do
    i=$((i + 1))
    if [ "$i" -eq $((n - 1)) ]; then
        : > "$arg"
    fi
done
exit 0
"""


def parse_def(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Header keywords and %sections of an Apptainer definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            current = match.group(1)
            assert current not in sections, f"{path.name}: %{current} twice"
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            assert sep, f"{path.name}: header line without 'Key: value': {line!r}"
            header[key.strip()] = value.strip()
    return header, {name: "\n".join(body) for name, body in sections.items()}


def arguments(sections: dict[str, str]) -> dict[str, str]:
    pairs = [line.strip().split("=", 1) for line in sections.get("arguments", "").splitlines() if line.strip()]
    return {key: value for key, value in pairs}


# --- definition files -------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
def test_def_file_has_the_sections_we_rely_on(flavor):
    header, sections = parse_def(CONTAINERS / f"saul-{flavor}.def")
    assert header["Bootstrap"] == "docker"
    image, _, tag = header["From"].rpartition(":")
    assert image and tag and tag != "latest", f"base image must be pinned: {header['From']}"
    for name in ("arguments", "labels", "files", "post", "environment", "runscript", "test"):
        assert name in sections, f"saul-{flavor}.def has no %{name}"
    labels = dict(line.split(None, 1) for line in sections["labels"].splitlines() if line.strip())
    assert labels["org.saul.git_revision"] == "{{ SAUL_GIT_REVISION }}"
    assert labels["org.saul.flavor"] == flavor
    # the repository goes in through %files and is installed without touching the pinned dependencies
    assert "{{ SAUL_SRC_DIR }} /opt/saul/src" in sections["files"]
    assert "pip install --no-cache-dir --no-deps /opt/saul/src" in sections["post"]
    assert "requirements-image.txt" in sections["post"]
    for module in ("torch", "transformers", "saul"):
        assert re.search(rf"import .*\b{module}\b", sections["test"]), f"%test does not import {module}"
    assert "device_count()" in sections["test"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_every_template_variable_has_a_default(flavor):
    text = (CONTAINERS / f"saul-{flavor}.def").read_text()
    _, sections = parse_def(CONTAINERS / f"saul-{flavor}.def")
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))
    assert used <= set(arguments(sections)), f"no %arguments default for {used - set(arguments(sections))}"
    assert {"SAUL_GIT_REVISION", "SAUL_GIT_DIRTY", "SAUL_BUILD_DATE", "SAUL_SRC_DIR"} <= used


def test_rocm_image_targets_mi250x():
    header, sections = parse_def(CONTAINERS / "saul-rocm.def")
    assert header["From"].startswith("rocm/pytorch:rocm")
    args = arguments(sections)
    assert args["GPU_ARCH"] == "gfx90a"
    assert "ROCm/flash-attention" in args["FLASH_ATTN_REPO"]
    assert 'GPU_ARCHS="{{ GPU_ARCH }}"' in sections["post"]
    assert "/opt/rocm/share/amd_smi" in sections["post"]  # amdsmi bindings matching the image's ROCm
    assert "PIP_CONSTRAINT" in sections["post"]  # never let pip swap the ROCm torch for a CUDA wheel
    assert "import torch, transformers, deepspeed, flash_attn, amdsmi, saul" in sections["test"]


def test_cuda_image_is_ngc_based():
    header, sections = parse_def(CONTAINERS / "saul-cuda.def")
    assert header["From"].startswith("nvcr.io/nvidia/pytorch:")
    assert "flash-attn==" in sections["post"] and "PIP_CONSTRAINT" in sections["post"]
    assert "pynvml" in sections["test"]


def test_cpu_image_uses_the_project_torch_pin():
    header, sections = parse_def(CONTAINERS / "saul-cpu.def")
    assert header["From"].startswith("python:3.11")
    assert '"torch==2.13.0"' in sections["post"]
    assert "download.pytorch.org/whl/cpu" in arguments(sections)["TORCH_INDEX_URL"]
    assert "torch==2.13.0" in (REPO / "constraints.txt").read_text()


def test_image_requirements_are_pinned_and_leave_torch_alone():
    lines = [
        line.split("#")[0].strip()
        for line in (CONTAINERS / "requirements-image.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    names = {re.split(r"[=<>!~]", line)[0].lower() for line in lines}
    assert "torch" not in names  # each base image brings its own torch build
    for required in ("transformers", "trl", "datasets", "accelerate", "tokenizers", "safetensors", "deepspeed",
                     "codecarbon", "submitit", "hydra-core", "omegaconf", "psutil", "rich", "pyrsmi"):
        assert any(line.lower().startswith(required + "==") for line in lines), f"{required} is not pinned"


# --- build.sh ---------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def _make_repo(root: Path, commit: bool = True) -> Path:
    """A tiny git repository holding a copy of containers/ (build.sh works on the repo it lives in)."""
    repo = root / "repo"
    shutil.copytree(CONTAINERS, repo / "containers")
    (repo / "constraints.txt").write_text("torch==2.13.0\n")
    _git(repo.parent, "init", "-q", str(repo))
    _git(repo, "config", "user.email", "test@example.invalid")
    _git(repo, "config", "user.name", "test")
    if commit:
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", "containers")
    return repo


def _fake_bin(root: Path) -> Path:
    bin_dir = root / "fakebin"
    bin_dir.mkdir()
    fake = bin_dir / "apptainer"
    fake.write_text(FAKE_APPTAINER)
    fake.chmod(0o755)
    return bin_dir


def _path_without_apptainer(root: Path) -> str:
    """PATH as it is, or, where apptainer is installed, a farm of links to everything else on PATH."""
    if shutil.which("apptainer") is None:
        return os.environ.get("PATH", "/usr/bin:/bin")
    farm = root / "no-apptainer-bin"
    farm.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = farm / entry.name
            if entry.name != "apptainer" and not target.exists() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    return str(farm)


def _run_build(repo: Path, *args: str, path: str, log: Path | None = None, prefix: list[str] | None = None):
    env = {
        "PATH": path,
        "HOME": str(repo.parent),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        # build.sh may run as another user than the repository owner (fakeroot test)
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
    }
    if log is not None:
        env["FAKE_APPTAINER_LOG"] = str(log)
    return subprocess.run([*(prefix or []), "bash", str(repo / "containers" / "build.sh"), *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def world_dir():
    """A directory every user can use (pytest's tmp_path is private to its owner)."""
    with tempfile.TemporaryDirectory(prefix="saul-containers-") as name:
        root = Path(name)
        root.chmod(0o777)
        yield root


def test_build_sh_is_valid_bash_and_executable():
    subprocess.run(["bash", "-n", str(BUILD_SH)], check=True)
    assert BUILD_SH.stat().st_mode & stat.S_IXUSR
    assert "set -euo pipefail" in BUILD_SH.read_text()


def test_refuses_without_apptainer(tmp_path):
    repo = _make_repo(tmp_path)
    result = _run_build(repo, "rocm", "--out", str(tmp_path / "out"), path=_path_without_apptainer(tmp_path))
    assert result.returncode == 2
    assert "apptainer is not on PATH" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_refuses_bad_usage(tmp_path):
    repo = _make_repo(tmp_path)
    path = f"{_fake_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}"
    for args in ((), ("gpu",), ("rocm", "cpu"), ("rocm", "--out")):
        result = _run_build(repo, *args, path=path, log=tmp_path / "argv")
        assert result.returncode == 2, args
        assert "usage:" in result.stderr
    assert not (tmp_path / "argv").exists()


@pytest.mark.parametrize("flavor", FLAVORS)
def test_builds_with_the_right_command_and_stamps_the_revision(tmp_path, flavor):
    repo = _make_repo(tmp_path)
    revision = _git(repo, "rev-parse", "HEAD")
    out, log = tmp_path / "images", tmp_path / "argv"
    path = f"{_fake_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}"
    result = _run_build(repo, flavor, "--out", str(out), path=path, log=log)
    assert result.returncode == 0, result.stderr

    image = out / f"saul-{flavor}-{revision[:12]}.sif"
    definition = repo / "containers" / f"saul-{flavor}.def"
    argv = log.read_text().splitlines()
    assert argv[0] == "build"
    assert argv[-2:] == [str(image), str(definition)]
    assert ("--fakeroot" in argv) == (os.geteuid() != 0)
    build_args = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--build-arg")
    assert build_args["SAUL_GIT_REVISION"] == revision
    assert build_args["SAUL_GIT_DIRTY"] == "false"
    staged = Path(build_args["SAUL_SRC_DIR"])
    assert staged.parent == out and not staged.exists()  # staging copy removed after the build

    stamp = json.loads((out / f"{image.name}.json").read_text())
    assert stamp["git_revision"] == revision and stamp["git_dirty"] is False
    assert stamp["flavor"] == flavor and stamp["image"] == str(image)
    assert stamp["def_file"] == f"containers/saul-{flavor}.def"
    assert stamp["def_sha256"] == hashlib.sha256(definition.read_bytes()).hexdigest()
    assert stamp["apptainer_version"] == "apptainer version 1.4.5"
    datetime.strptime(stamp["build_date"], "%Y-%m-%dT%H:%M:%SZ")
    assert build_args["SAUL_BUILD_DATE"] == stamp["build_date"]
    assert str(image) in result.stdout and f"site.container.image=" in result.stdout


def test_stages_only_files_git_knows(tmp_path):
    repo = _make_repo(tmp_path)
    (repo / ".gitignore").write_text("runs/\n")
    (repo / "runs").mkdir()
    (repo / "runs" / "big.bin").write_text("checkpoint")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "ignore runs")
    # a fake that lists what it was given to copy into the image
    bin_dir = _fake_bin(tmp_path)
    lister = FAKE_APPTAINER.replace(
        'printf \'%s\\n\' "$@" > "$FAKE_APPTAINER_LOG"',
        'printf \'%s\\n\' "$@" > "$FAKE_APPTAINER_LOG"\n'
        'for a in "$@"; do case "$a" in SAUL_SRC_DIR=*) (cd "${a#SAUL_SRC_DIR=}" && find . -type f | sort) '
        '> "$FAKE_APPTAINER_LOG.files";; esac; done',
    )
    (bin_dir / "apptainer").write_text(lister)
    log = tmp_path / "argv"
    result = _run_build(repo, "cpu", "--out", str(tmp_path / "images"),
                        path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", log=log)
    assert result.returncode == 0, result.stderr
    files = Path(f"{log}.files").read_text().split()
    assert "./containers/build.sh" in files and "./constraints.txt" in files
    assert not any(f.startswith("./runs/") or f.startswith("./.git/") for f in files)


def test_refuses_a_dirty_tree_unless_allowed(tmp_path):
    repo = _make_repo(tmp_path)
    revision = _git(repo, "rev-parse", "HEAD")
    (repo / "notes.txt").write_text("not committed\n")
    out, log = tmp_path / "images", tmp_path / "argv"
    path = f"{_fake_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}"

    refused = _run_build(repo, "cpu", "--out", str(out), path=path, log=log)
    assert refused.returncode == 2
    assert "uncommitted or untracked changes" in refused.stderr and "--allow-dirty" in refused.stderr
    assert not log.exists()

    allowed = _run_build(repo, "cpu", "--out", str(out), "--allow-dirty", path=path, log=log)
    assert allowed.returncode == 0, allowed.stderr
    stamp = json.loads((out / f"saul-cpu-{revision[:12]}-dirty.sif.json").read_text())
    assert stamp["git_revision"] == revision and stamp["git_dirty"] is True
    assert "SAUL_GIT_DIRTY=true" in log.read_text().splitlines()


def test_repository_without_commits(tmp_path):
    repo = _make_repo(tmp_path, commit=False)
    out, log = tmp_path / "images", tmp_path / "argv"
    path = f"{_fake_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}"
    refused = _run_build(repo, "cuda", "--out", str(out), path=path, log=log)
    assert refused.returncode == 2 and "no commit yet" in refused.stderr

    allowed = _run_build(repo, "cuda", "--out", str(out), "--allow-dirty", path=path, log=log)
    assert allowed.returncode == 0, allowed.stderr
    stamp = json.loads((out / "saul-cuda-norev-dirty.sif.json").read_text())
    assert stamp["git_revision"] == "none" and stamp["git_dirty"] is True


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the switch to --fakeroot by dropping from root to nobody")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed to drop to nobody")
def test_uses_fakeroot_when_not_root(world_dir):
    repo = _make_repo(world_dir)
    for path in [world_dir, *world_dir.rglob("*")]:  # readable by nobody, without changing tracked modes
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o444))
    fake_bin = _fake_bin(world_dir)
    out, log = world_dir / "images", world_dir / "argv"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    result = _run_build(repo, "rocm", "--out", str(out), path=f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
                        log=log, prefix=nobody)
    assert result.returncode == 0, result.stderr
    argv = log.read_text().splitlines()
    assert argv[:3] == ["build", "--force", "--fakeroot"]


# --- a real build ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apptainer") is None, reason=NO_APPTAINER)
def test_real_apptainer_build_of_the_cpu_image(tmp_path):
    """Needs internet (base image, PyPI). Builds the CPU image from this checkout and reads its labels."""
    out = tmp_path / "images"
    result = subprocess.run(["bash", str(BUILD_SH), "cpu", "--out", str(out), "--allow-dirty"],
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-4000:]
    (stamp_path,) = out.glob("saul-cpu-*.sif.json")
    stamp = json.loads(stamp_path.read_text())
    image = Path(stamp["image"])
    labels = subprocess.run(["apptainer", "inspect", "--labels", str(image)], check=True, capture_output=True,
                            text=True).stdout
    assert stamp["git_revision"] in labels
    probe = subprocess.run(["apptainer", "exec", str(image), "python3", "-c",
                            "import torch, saul; print(torch.__version__)"],
                           check=True, capture_output=True, text=True).stdout
    assert probe.startswith("2.13.0")
