"""What code and which container image an attempt ran: recorded in every `attempt_start`.

Code revision: `git` in the repository the ranks import `saul` from (sha, dirty flag for tracked
files, and a digest of the uncommitted diff so two dirty attempts can still be told apart).
Where `git` is missing (a container image without it) or the tree is not a repository, the image's
build stamp says which revision the image was built from. Container: the image path Apptainer /
Singularity export inside the container, plus the stamp `containers/build.sh` writes into the
image. Cheap on purpose: three short git calls once per attempt, never a checksum of a multi-GB
image.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import List, Mapping, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_STAMP = Path("/opt/saul/image-stamp.json")  # keys: git_revision, git_dirty, built_at
GIT_TIMEOUT_S = 10.0


def read_stamp(path: Optional[Path] = None) -> Optional[dict]:
    try:
        stamp = json.loads(Path(path or IMAGE_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _git(repo: Path, *args: str) -> str:
    # safe.directory: a repository owned by another user (bind-mounted into a container) is still read.
    result = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], capture_output=True,
                            timeout=GIT_TIMEOUT_S, check=True)
    return result.stdout.decode("utf-8", "replace")


def code_revision(repo: Optional[Path] = None, stamp: Optional[Path] = None) -> dict:
    """{"revision", "dirty", "diff_sha1", "source": git | image-stamp | unknown, "note"?}."""
    repo = repo or REPO_ROOT
    try:
        revision = _git(repo, "rev-parse", "HEAD").strip()
        diff = _git(repo, "diff", "HEAD", "--no-ext-diff", "--binary").encode()
    except FileNotFoundError:
        why = "git not installed"
    except subprocess.TimeoutExpired:
        why = f"git took more than {GIT_TIMEOUT_S:g}s"
    except subprocess.CalledProcessError as exc:
        lines = exc.stderr.decode("utf-8", "replace").strip().splitlines()
        why = f"git failed: {lines[-1] if lines else f'exit code {exc.returncode}'}"
    else:
        return {"revision": revision, "dirty": bool(diff), "source": "git",
                "diff_sha1": hashlib.sha1(diff).hexdigest()[:16] if diff else None}
    image = read_stamp(stamp)
    if image and image.get("git_revision"):
        return {"revision": image["git_revision"], "dirty": bool(image.get("git_dirty")), "diff_sha1": None,
                "source": "image-stamp", "note": f"{why}: revision the image was built from"}
    return {"revision": None, "dirty": None, "diff_sha1": None, "source": "unknown", "note": why}


def container_image(environ: Mapping[str, str] = os.environ, stamp: Optional[Path] = None) -> Optional[dict]:
    """{"path", "stamp"} inside an Apptainer/Singularity container, None outside."""
    path = environ.get("APPTAINER_CONTAINER") or environ.get("SINGULARITY_CONTAINER")
    if not path:
        return None
    return {"path": path, "stamp": read_stamp(stamp)}


def changes(before: Optional[dict], after: dict) -> List[list]:
    """[[key, old, new], ...] between two attempt_start records' `code` and `image` (config_change's shape)."""
    if not before or "code" not in before:
        return []  # the first attempt, or one recorded before provenance existed: nothing to compare
    out = []
    for key in ("revision", "dirty", "diff_sha1"):
        old, new = (before.get("code") or {}).get(key), (after.get("code") or {}).get(key)
        if old != new:
            out.append([f"code.{key}", old, new])
    old_image, new_image = before.get("image") or {}, after.get("image") or {}
    if old_image.get("path") != new_image.get("path"):
        out.append(["image.path", old_image.get("path"), new_image.get("path")])
    old_stamp, new_stamp = old_image.get("stamp") or {}, new_image.get("stamp") or {}
    for key in sorted(set(old_stamp) | set(new_stamp)):
        if old_stamp.get(key) != new_stamp.get(key):
            out.append([f"image.stamp.{key}", old_stamp.get(key), new_stamp.get(key)])
    return out
