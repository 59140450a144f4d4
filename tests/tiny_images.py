"""Real but tiny Apptainer images for tests: `Bootstrap: scratch` with this host's `cat` and its libraries, the
labels a case needs and a stamp at /opt/saul/image-stamp.json. Built in a few seconds, unlike the CPU image."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NO_APPTAINER = "apptainer is not installed on this machine (scripts/install-apptainer.sh installs it)"
CAT_FILES = ("/usr/bin/cat", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2")


def build_tiny_image(path: Path, labels: dict) -> Path:
    """A SIF image at `path` (skips the test where apptainer or the host files are missing)."""
    if shutil.which("apptainer") is None:
        pytest.skip(NO_APPTAINER)
    missing = [f for f in CAT_FILES if not os.path.exists(f)]
    if missing:
        pytest.skip(f"this host lacks {missing} to put in a tiny image")
    definition = path.with_suffix(".def")
    definition.write_text(
        "Bootstrap: scratch\n\n%labels\n" + "".join(f"    {k} {v}\n" for k, v in labels.items())
        + "\n%files\n" + "".join(f"    {f} {f}\n" for f in CAT_FILES)
        + "\n%setup\n    mkdir -p ${APPTAINER_ROOTFS}/opt/saul\n"
        + "    echo '{\"git_revision\": \"tiny\"}' > ${APPTAINER_ROOTFS}/opt/saul/image-stamp.json\n")
    result = subprocess.run(["apptainer", "build", "--force", str(path), str(definition)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return path
