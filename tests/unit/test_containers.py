"""containers/: the Apptainer definition files and build.sh.

The build command line is checked with a fake `apptainer` first on PATH (it records its argv and creates the
output file): a real build takes minutes. The real build and real jobs inside the image are in
tests/integration/test_container_slurm.py; scripts/install-apptainer.sh installs Apptainer on this machine kind.
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
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from jobs.container_image import cached_image, deps_sha256

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
BUILD_SH = CONTAINERS / "build.sh"
FLAVORS = ("rocm", "cuda", "cpu")
GPU_FLAVORS = ("rocm", "cuda")

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


def _labels(sections: dict[str, str]) -> dict[str, str]:
    return dict(line.split(None, 1) for line in sections["labels"].splitlines() if line.strip())


def _with_defaults(text: str, sections: dict[str, str]) -> str:
    """A section's text with every {{ VAR }} replaced by its %arguments default, as `apptainer build` does."""
    args = arguments(sections)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: args[m.group(1)], text)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_def_file_has_the_sections_we_rely_on(flavor):
    _, sections = parse_def(CONTAINERS / f"saul-{flavor}.def")
    for name in ("arguments", "labels", "files", "post", "environment", "runscript", "test"):
        assert name in sections, f"saul-{flavor}.def has no %{name}"
    labels = _labels(sections)
    assert labels["org.saul.git_revision"] == "{{ SAUL_GIT_REVISION }}"
    assert labels["org.saul.deps_sha256"] == "{{ SAUL_DEPS_SHA256 }}"  # what jobs/container_image.py checks
    assert labels["org.saul.flavor"] == flavor
    assert "requirements-image.txt" in sections["post"]
    for module in ("torch", "transformers"):
        assert re.search(rf"import .*\b{module}\b", sections["test"]), f"%test does not import {module}"
    assert "device_count()" in sections["test"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_every_image_writes_the_stamp_the_ranks_read(flavor):
    _, sections = parse_def(CONTAINERS / f"saul-{flavor}.def")
    post = _with_defaults(sections["post"], sections)
    (line,) = [ln for ln in post.splitlines() if "image-stamp" not in ln and '"git_revision"' in ln]
    template = line.strip().split("'")[1]
    values = ("0123abcd", "false", "2026-01-01T00:00:00Z", "f" * 64)
    stamp = json.loads((template.replace("\\n", "") % values))
    assert {"git_revision", "git_dirty", "built_at"} <= set(stamp) and stamp["flavor"] == flavor
    assert stamp["git_dirty"] is False and stamp["deps_sha256"] == "f" * 64
    assert "/opt/saul/image-stamp.json" in post  # saul/provenance.py IMAGE_STAMP


@pytest.mark.parametrize("flavor", GPU_FLAVORS)
def test_gpu_images_build_on_a_pinned_vendor_image_and_install_the_project(flavor):
    header, sections = parse_def(CONTAINERS / f"saul-{flavor}.def")
    assert header["Bootstrap"] == "docker"
    image, _, tag = header["From"].rpartition(":")
    assert image and tag and tag != "latest", f"base image must be pinned: {header['From']}"
    # the repository goes in through %files and is installed without touching the pinned dependencies
    assert "{{ SAUL_SRC_DIR }} /opt/saul/src" in sections["files"]
    assert "pip install --no-cache-dir --no-deps /opt/saul/src" in sections["post"]
    assert re.search(r"import .*\bsaul\b", sections["test"])


@pytest.mark.parametrize("flavor", FLAVORS)
def test_shell_sections_are_valid_bash(flavor):
    """What can be checked without the vendor stack: each shell section parses once its {{ }} are filled."""
    _, sections = parse_def(CONTAINERS / f"saul-{flavor}.def")
    for name in ("setup", "post", "environment", "runscript", "test"):
        if name in sections:
            result = subprocess.run(["bash", "-n"], input=_with_defaults(sections[name], sections), text=True,
                                    capture_output=True)
            assert result.returncode == 0, f"saul-{flavor}.def %{name}: {result.stderr}"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_files_the_build_reads_from_the_source_copy_exist(flavor):
    """%files sources and /opt/saul/src/<path> in %post name files of this repository (build.sh stages it)."""
    _, sections = parse_def(CONTAINERS / f"saul-{flavor}.def")
    from_src = [m.lstrip("/") for m in re.findall(r"\{\{ SAUL_SRC_DIR \}\}(\S*)", sections["files"])]
    from_src += re.findall(r"/opt/saul/src/([\w./-]+)", sections["post"])
    assert from_src, "the build reads nothing from the repository?"
    for relative in filter(None, from_src):
        assert (REPO / relative).exists(), f"saul-{flavor}.def reads {relative}, which is not in the repository"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_every_template_variable_has_a_default(flavor):
    text = (CONTAINERS / f"saul-{flavor}.def").read_text()
    _, sections = parse_def(CONTAINERS / f"saul-{flavor}.def")
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))
    assert used <= set(arguments(sections)), f"no %arguments default for {used - set(arguments(sections))}"
    assert {"SAUL_GIT_REVISION", "SAUL_GIT_DIRTY", "SAUL_BUILD_DATE", "SAUL_DEPS_SHA256", "SAUL_SRC_DIR"} <= used
    # build.sh passes these to every flavor, and apptainer refuses a --build-arg the file does not declare
    assert {"SAUL_DEPS_SHA256", "SAUL_INPUTS_DIR"} <= set(arguments(sections))


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


def test_cpu_image_needs_no_docker_hub_and_uses_the_project_torch_pin():
    header, sections = parse_def(CONTAINERS / "saul-cpu.def")
    assert header["Bootstrap"] == "debootstrap" and header["OSVersion"] == "bookworm"
    assert header["MirrorURL"] == "{{ DEBIAN_MIRROR }}" and arguments(sections)["DEBIAN_MIRROR"].startswith("http")
    (pin,) = re.findall(r"^torch==(\S+)", (REPO / "constraints.txt").read_text(), re.M)
    # the wheel build.sh fetched for the constraints' pin, then every other package under the same constraints
    assert f'inputs/wheels/torch-{pin}*.whl' in sections["post"]
    assert '-c "$build/constraints.txt" -r "$build/requirements-image.txt"' in sections["post"]
    assert "PIP_CONFIG_FILE=/dev/null" in sections["post"]  # the build host's pip.conf stays out
    assert 'export PATH="/opt/saul/venv/bin:$PATH"' in sections["environment"]
    assert "/opt/saul/src" not in sections["files"]  # code comes from the checkout: one image per dependency set


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


TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def _make_wheelhouse(root: Path) -> Path:
    """A folder with a small, valid wheel named like the CPU torch wheel: what `pip download torch==2.13.0`
    takes on this machine, without copying the real 190 MB file in every test."""
    wheels = root / "wheelhouse"
    wheels.mkdir()
    info = "torch-2.13.0+cpu.dist-info"
    files = {f"{info}/METADATA": "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                              "Tag: cp311-cp311-manylinux_2_28_x86_64\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheels / TORCH_WHEEL, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return wheels


def _make_repo(root: Path, commit: bool = True) -> Path:
    """A tiny git repository holding a copy of containers/ (build.sh works on the repo it lives in)."""
    _make_wheelhouse(root)
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


def _run_build(repo: Path, *args: str, path: str, log: Path | None = None, prefix: list[str] | None = None,
               extra_env: dict | None = None):
    env = {
        "PATH": path,
        "HOME": str(repo.parent),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        # build.sh may run as another user than the repository owner (fakeroot test)
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
        # pip (the CPU image's torch wheel) sees only the test's wheelhouse, not this machine's configuration
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(repo.parent / "wheelhouse"),
    }
    if log is not None:
        env["FAKE_APPTAINER_LOG"] = str(log)
    env.update(extra_env or {})
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
    partial = Path(argv[-2])  # written under a temporary name, renamed when complete
    assert argv[-1] == str(definition) and partial.parent == out and not partial.exists() and image.is_file()
    # debootstrap (the CPU image) needs --fakeroot even as root; the others only when not root
    assert ("--fakeroot" in argv) == (os.geteuid() != 0 or flavor == "cpu")
    build_args = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--build-arg")
    assert build_args["SAUL_GIT_REVISION"] == revision
    assert build_args["SAUL_GIT_DIRTY"] == "false"
    assert build_args["SAUL_DEPS_SHA256"] == deps_sha256(flavor, repo)  # the hash the submit-time check uses
    staged, inputs = Path(build_args["SAUL_SRC_DIR"]), Path(build_args["SAUL_INPUTS_DIR"])
    assert staged.parent == out and not staged.exists()  # staging copy removed after the build
    assert inputs.parent == out and not inputs.exists()

    stamp = json.loads((out / f"{image.name}.json").read_text())
    assert stamp["git_revision"] == revision and stamp["git_dirty"] is False
    assert stamp["flavor"] == flavor and stamp["image"] == str(image)
    assert stamp["def_file"] == f"containers/saul-{flavor}.def"
    assert stamp["def_sha256"] == hashlib.sha256(definition.read_bytes()).hexdigest()
    assert stamp["deps_sha256"] == build_args["SAUL_DEPS_SHA256"]
    assert stamp["image_bytes"] == 0 and stamp["build_seconds"] >= 0
    assert stamp["apptainer_version"] == "apptainer version 1.4.5"
    datetime.strptime(stamp["built_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert build_args["SAUL_BUILD_DATE"] == stamp["built_at"]
    assert result.stdout.splitlines()[-1] == str(image) and "site.container.image=" in result.stderr


def test_stages_only_files_git_knows(tmp_path):  # rocm: no wheel to fetch, the staging is the same
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
    result = _run_build(repo, "rocm", "--out", str(tmp_path / "images"),
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

    refused = _run_build(repo, "rocm", "--out", str(out), path=path, log=log)
    assert refused.returncode == 2
    assert "uncommitted or untracked changes" in refused.stderr and "--allow-dirty" in refused.stderr
    assert not log.exists()

    allowed = _run_build(repo, "rocm", "--out", str(out), "--allow-dirty", path=path, log=log)
    assert allowed.returncode == 0, allowed.stderr
    stamp = json.loads((out / f"saul-rocm-{revision[:12]}-dirty.sif.json").read_text())
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


def _commit(repo: Path, message: str) -> None:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


def test_cache_reuses_the_image_of_the_same_dependency_files(tmp_path):
    repo = _make_repo(tmp_path)
    cache, log = tmp_path / "cache", tmp_path / "argv"
    path = f"{_fake_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}"
    env_cache = {"SAUL_IMAGE_CACHE": str(cache)}

    first = _run_build(repo, "rocm", "--cache", path=path, log=log, extra_env=env_cache)
    assert first.returncode == 0, first.stderr
    image = cached_image("rocm", repo, env_cache)  # where the tests and the benchmark look for it
    assert first.stdout.splitlines()[-1] == str(image) and image.is_file()

    # Another commit that leaves the dependency files alone, and an unrelated uncommitted file: same image.
    (repo / "README.md").write_text("docs\n")
    _commit(repo, "docs")
    (repo / "scratch.txt").write_text("not committed\n")
    log.unlink()
    again = _run_build(repo, "rocm", "--cache", path=path, log=log, extra_env=env_cache)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == str(image) and "cached image" in again.stderr
    assert not log.exists()  # apptainer was not called

    # A changed requirement is another image; uncommitted, it is refused (the image could not be traced).
    requirements = repo / "containers" / "requirements-image.txt"
    requirements.write_text(requirements.read_text() + "sympy==1.14.0\n")
    refused = _run_build(repo, "rocm", "--cache", path=path, log=log, extra_env=env_cache)
    assert refused.returncode == 2 and "containers/requirements-image.txt" in refused.stderr
    _commit(repo, "one more requirement")
    rebuilt = _run_build(repo, "rocm", "--cache", path=path, log=log, extra_env=env_cache)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.splitlines()[-1] != str(image) and log.exists()
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [image.name, image.name + ".json", Path(rebuilt.stdout.splitlines()[-1]).name,
         Path(rebuilt.stdout.splitlines()[-1]).name + ".json"])


def test_a_failed_build_leaves_no_image(tmp_path):
    repo = _make_repo(tmp_path)
    bin_dir = _fake_bin(tmp_path)
    # writes part of the image, then fails (as a build that runs out of disk or network would)
    failing = FAKE_APPTAINER.replace(': > "$arg"', 'echo partial > "$arg"').replace("done\nexit 0", "done\nexit 1")
    assert failing.count("exit 1") == 1
    (bin_dir / "apptainer").write_text(failing)
    cache = tmp_path / "cache"
    result = _run_build(repo, "rocm", "--cache", path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                        log=tmp_path / "argv", extra_env={"SAUL_IMAGE_CACHE": str(cache)})
    assert result.returncode == 1
    assert list(cache.iterdir()) == []  # no image, no stamp, no partial file, no staging folders


def test_cpu_build_gets_the_constraints_torch_wheel(tmp_path):
    """The CPU image's torch comes from the wheel pip takes on the build host for constraints.txt's pin."""
    repo = _make_repo(tmp_path)
    bin_dir = _fake_bin(tmp_path)
    lister = FAKE_APPTAINER.replace(
        'printf \'%s\\n\' "$@" > "$FAKE_APPTAINER_LOG"',
        'printf \'%s\\n\' "$@" > "$FAKE_APPTAINER_LOG"\n'
        'for a in "$@"; do case "$a" in SAUL_INPUTS_DIR=*) (cd "${a#SAUL_INPUTS_DIR=}" && find . -type f | sort) '
        '> "$FAKE_APPTAINER_LOG.inputs";; esac; done',
    )
    (bin_dir / "apptainer").write_text(lister)
    log = tmp_path / "argv"
    result = _run_build(repo, "cpu", "--out", str(tmp_path / "images"),
                        path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", log=log)
    assert result.returncode == 0, result.stderr
    inputs = Path(f"{log}.inputs").read_text().split()
    assert f"./wheels/{TORCH_WHEEL}" in inputs

    (repo / "constraints.txt").write_text("numpy\n")  # no torch pin: refused, with the reason
    _commit(repo, "no pin")
    refused = _run_build(repo, "cpu", "--out", str(tmp_path / "images"),
                         path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", log=log)
    assert refused.returncode == 2 and "pins no torch==" in refused.stderr
