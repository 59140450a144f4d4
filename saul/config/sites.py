"""Site files (site_configs/*.yaml) and the choice of site: explicit, environment, Slurm cluster name, local."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional

from omegaconf import OmegaConf

from saul.config.errors import ConfigError, did_you_mean

REPO_ROOT = Path(__file__).resolve().parents[2]
SITE_DIR_ENV = "SAUL_SITE_CONFIGS"  # a directory of extra/overriding site files
SITE_ENV = "SAUL_SITE"


def site_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(SITE_DIR_ENV):
        dirs.append(Path(os.environ[SITE_DIR_ENV]))
    dirs.append(REPO_ROOT / "site_configs")
    return dirs


def available_sites() -> Dict[str, Path]:
    """name -> file; a file in $SAUL_SITE_CONFIGS shadows the shipped one of the same name."""
    found: Dict[str, Path] = {}
    for directory in reversed(site_dirs()):
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")):
                found[path.stem] = path
    return found


def load_site_file(name: str):
    sites = available_sites()
    if not sites:
        looked = " and ".join(str(d) for d in site_dirs())
        raise ConfigError(
            f"no site files in {looked}: install from a checkout with `pip install -e .` (site_configs/ stays "
            f"in the checkout) or point ${SITE_DIR_ENV} at a directory of site files"
        )
    if name not in sites:
        raise ConfigError(
            f"unknown site '{name}'{did_you_mean(name, sites)}; available: {', '.join(sorted(sites))}"
        )
    try:
        return OmegaConf.load(sites[name])
    except Exception as exc:  # a YAML syntax error names the file and line
        raise ConfigError(f"cannot read site file {sites[name]}: {exc}".replace("\n", " ")) from None


@dataclass(frozen=True)
class SiteChoice:
    name: str
    reason: str


def slurm_cluster_name(env: Mapping[str, str]) -> Optional[str]:
    """ClusterName from the slurm.conf clients would use, without asking the controller (fast, offline)."""
    conf = Path(env.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    try:
        text = conf.read_text()
    except OSError:
        return None
    match = re.search(r"^\s*ClusterName\s*=\s*(\S+)", text, re.MULTILINE | re.IGNORECASE)
    return match.group(1) if match else None


def choose_site(explicit: Optional[str], env: Mapping[str, str] = os.environ) -> SiteChoice:
    if explicit:
        return SiteChoice(explicit, "given on the command line")
    if env.get(SITE_ENV):
        return SiteChoice(env[SITE_ENV], f"from ${SITE_ENV}")
    cluster = slurm_cluster_name(env)
    if cluster:
        for name, path in available_sites().items():
            data = OmegaConf.load(path)
            if str(data.get("cluster_name", "")).lower() == cluster.lower():
                return SiteChoice(name, f"Slurm cluster '{cluster}' matches site_configs/{path.name}")
        return SiteChoice("local", f"Slurm cluster '{cluster}' matches no site file; running locally")
    return SiteChoice("local", "no Slurm configuration found")
