"""The Apptainer image a Slurm job's ranks run in, checked on the login node before anything is queued.

The ranks import the project's code from the checkout (bound into the container, first on PYTHONPATH); the image
brings Python and the dependencies. So an image fits a checkout when it was built from the same dependency files
(containers/saul-<flavor>.def, containers/requirements-image.txt, constraints.txt), whatever revision it was built
at: containers/build.sh writes their hash into the label org.saul.deps_sha256 and this module recomputes it.

Labels are read from the SIF file itself (its descriptor table and the `inspect-metadata.json` object Apptainer
writes), so the check needs no container runtime on the login node and reads a few kilobytes, never the image.
Layout: https://github.com/apptainer/sif (pkg/sif: header, rawDescriptor), little-endian, packed.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Dict, Optional

from saul.config.errors import ConfigError
from saul.config.sites import REPO_ROOT

DEPS_FILES = ("containers/saul-{flavor}.def", "containers/requirements-image.txt", "constraints.txt")
DEPS_LABEL, FLAVOR_LABEL, REVISION_LABEL = "org.saul.deps_sha256", "org.saul.flavor", "org.saul.git_revision"

SIF_MAGIC = b"SIF_MAGIC\0"
_HEADER = struct.Struct("<32s10s3s3s16sqqqqqqqq")  # launch, magic, version, arch, uuid, times, descriptor table...
_DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")  # type, used, ids, offset, size, ..., name, extra
_GENERIC_JSON = 0x4006  # sif.DataGenericJSON
_MAX_JSON_BYTES = 1 << 20


DEFAULT_IMAGE_CACHE = "/var/cache/saul-images"  # containers/build.sh --cache; $SAUL_IMAGE_CACHE overrides


class ImageError(ValueError):
    """The file is not a SIF image that can be read."""


def deps_sha256(flavor: str, repo: Path = REPO_ROOT) -> Optional[str]:
    """The hash build.sh labels images with: sha256 of `sha256sum <the dependency files>`'s output."""
    lines = []
    for pattern in DEPS_FILES:
        relative = pattern.format(flavor=flavor)
        path = Path(repo) / relative
        if not path.is_file():
            return None
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {relative}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def cached_image(flavor: str, repo: Path = REPO_ROOT, env=os.environ) -> Path:
    """Where `containers/build.sh <flavor> --cache` puts the image of this checkout's dependency files."""
    cache = Path(env.get("SAUL_IMAGE_CACHE") or DEFAULT_IMAGE_CACHE)
    return cache / f"saul-{flavor}-{(deps_sha256(flavor, repo) or 'unknown')[:16]}.sif"


def sif_labels(image: Path) -> Dict[str, str]:
    """The labels `apptainer inspect --labels` shows, read from the SIF's descriptors; {} when it has none."""
    with open(image, "rb") as f:
        header = f.read(_HEADER.size)
        if len(header) < _HEADER.size or header[32:42] != SIF_MAGIC:
            raise ImageError("it is not a SIF image (no SIF_MAGIC in its header)")
        fields = _HEADER.unpack(header)
        total, table_offset = fields[8], fields[9]
        f.seek(table_offset)
        table = f.read(total * _DESCRIPTOR.size)
        if len(table) < total * _DESCRIPTOR.size:
            raise ImageError("its descriptor table is cut short (an interrupted copy?)")
        labels: Dict[str, str] = {}
        for index in range(total):
            kind, used, *_, offset, size, _padded, _c, _m, _u, _g, name, _extra = _DESCRIPTOR.unpack_from(
                table, index * _DESCRIPTOR.size)
            if not used or kind != _GENERIC_JSON or size > _MAX_JSON_BYTES:
                continue
            f.seek(offset)
            try:
                metadata = json.loads(f.read(size))
                labels.update(metadata["data"]["attributes"].get("labels") or {})
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # another JSON object (not Apptainer's inspect metadata)
        return labels


def check_image(site_name: str, image: str, repo: Path = REPO_ROOT) -> None:
    """Refuse an image that is missing, unreadable, not a SIF file, or built from other dependency files."""
    path = Path(image)
    if not path.is_file():
        raise ConfigError(f"site '{site_name}': container image {image} does not exist; build it with "
                          f"`make image` or containers/build.sh and copy it there, or set site.container.image=")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"site '{site_name}': container image {image} is not readable by this user; "
                          f"`chmod a+r {image}` or point site.container.image= at a readable copy")
    try:
        labels = sif_labels(path)
    except (OSError, ImageError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"site '{site_name}': container image {image} cannot be used: {why}; rebuild it with "
                          f"containers/build.sh or copy it again") from None
    flavor = labels.get(FLAVOR_LABEL)
    built_from = labels.get(DEPS_LABEL)
    if not flavor or not built_from:
        raise ConfigError(f"site '{site_name}': container image {image} has no {DEPS_LABEL} label, so nothing says "
                          f"which dependency files it holds; build it with containers/build.sh (`make image` for "
                          f"the CPU image)")
    expected = deps_sha256(flavor, repo)
    if expected is None:
        raise ConfigError(f"site '{site_name}': container image {image} is a '{flavor}' image, but this checkout "
                          f"has no containers/saul-{flavor}.def to compare it with")
    if built_from != expected:
        files = ", ".join(p.format(flavor=flavor) for p in DEPS_FILES)
        revision = labels.get(REVISION_LABEL, "unknown")[:12]
        raise ConfigError(f"site '{site_name}': container image {image} was built from revision {revision} whose "
                          f"dependency files ({files}) differ from this checkout's; rebuild it "
                          f"(containers/build.sh {flavor} --cache, or `make image`) and set site.container.image=")


def bind_paths(cfg, runs_root: Path, repo: Path = REPO_ROOT) -> list:
    """What the ranks must see inside the image: the runs (outputs), the checkout (code), the data and model
    directories the stage reads when they lie elsewhere, then the site's own binds."""
    binds = [str(runs_root), str(repo)]
    for extra in (getattr(cfg.data, "path", ""), getattr(cfg.model, "path", "")):
        if extra and os.path.isabs(extra) and not any(Path(extra).is_relative_to(b) for b in binds):
            binds.append(extra)
    return binds + [b for b in cfg.site.container.binds if b not in binds]
