"""site_configs/*.yaml: pure data that must fit SiteConfig exactly and agree with the published site figures."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from saul.config.schema import GPU_VENDORS, SCHEDULERS, SiteConfig

SITE_DIR = Path(__file__).resolve().parents[2] / "site_configs"
SITE_FILES = sorted(SITE_DIR.glob("*.yaml"))
MI250X_SITES = {"adastra", "lumi"}
NVIDIA_SITES = {"jean-zay"}
REQUIRED_SITES = {"adastra", "lumi", "jean-zay", "local-slurm", "local"}


def _load(path: Path):
    """The file merged onto the schema: an unknown key or a wrong type raises here."""
    return OmegaConf.merge(OmegaConf.structured(SiteConfig), OmegaConf.load(path))


def _site(name: str):
    return _load(SITE_DIR / f"{name}.yaml")


def _cpus(cpu_list: str) -> list[int]:
    """'48-55' / '1,3,5-7' -> cpu ids; anything else is not a cpu list."""
    assert re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", cpu_list), f"not a cpu list: {cpu_list!r}"
    cpus = []
    for part in cpu_list.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def test_every_required_site_has_a_file():
    assert REQUIRED_SITES <= {p.stem for p in SITE_FILES}


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda p: p.stem)
def test_file_merges_onto_the_schema_and_resolves(path):
    cfg = _load(path)
    # Resolving catches a ${...} left in a value: shell variables must be written $VAR.
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["name"] == path.stem
    assert plain["scheduler"] in SCHEDULERS
    assert plain["gpu_vendor"] in GPU_VENDORS
    assert plain["default_nproc"] >= 1


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda p: p.stem)
def test_file_cites_its_sources(path):
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(re.search(r"https?://\S+", line) for line in header), f"{path.name}: no source URL in a comment"
    assert _load(path).source.startswith(("http://", "https://"))


def test_a_bad_key_or_type_is_rejected(tmp_path):
    """The merge is what the tests above rely on: prove it refuses what it should."""
    bad_key = tmp_path / "bad-key.yaml"
    bad_key.write_text("name: bad-key\ngpus_per_nod: 8\n")
    with pytest.raises(Exception, match="gpus_per_nod"):
        _load(bad_key)
    bad_type = tmp_path / "bad-type.yaml"
    bad_type.write_text("name: bad-type\ngpus_per_node: eight\n")
    with pytest.raises(Exception, match="gpus_per_node"):
        _load(bad_type)


@pytest.mark.parametrize("name", sorted(MI250X_SITES))
def test_mi250x_sites_count_gcds(name):
    site = _site(name)
    assert site.scheduler == "slurm" and site.gpu_vendor == "amd"
    assert site.gpus_per_node == 8 and site.gpu_packages_per_node == 4  # 4 MI250X = 8 GCDs
    assert site.device_memory_gb == 64
    assert site.peak_tflops_bf16_per_device == pytest.approx(191.5)
    assert site.default_nproc == 8
    assert site.container.gpu_flag == "--rocm"
    assert "pm_counters" in site.energy_sources and "amdsmi" in site.energy_sources
    assert site.env.NCCL_SOCKET_IFNAME == "hsn0,hsn1,hsn2,hsn3"
    assert "$SLURM_JOB_ID" in site.env.MIOPEN_USER_DB_PATH  # a MIOpen cache per job, on node-local /tmp


@pytest.mark.parametrize("name", sorted(NVIDIA_SITES))
def test_nvidia_sites(name):
    site = _site(name)
    assert site.scheduler == "slurm" and site.gpu_vendor == "nvidia"
    assert site.container.gpu_flag == "--nv"
    assert site.gpus_per_node == site.gpu_packages_per_node == site.default_nproc == 4
    assert "nvml" in site.energy_sources and "amdsmi" not in site.energy_sources


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda p: p.stem)
def test_cpu_binding_has_one_disjoint_entry_per_device(path):
    site = _load(path)
    if not site.gpu_cpu_bind:
        return  # Slurm's own --cpus-per-task binding
    assert len(site.gpu_cpu_bind) == site.gpus_per_node == site.default_nproc
    sets = [set(_cpus(entry)) for entry in site.gpu_cpu_bind]
    assert sum(len(s) for s in sets) == len(set().union(*sets)), "two ranks share a core"
    assert sum(len(s) for s in sets) <= site.cpus_per_node


def test_lumi_binding_is_the_published_mask():
    """LUMI documents --cpu-bind=mask_cpu:... with 0xfe per CCD; our lists must be exactly those masks."""
    published = ["0xfe000000000000", "0xfe00000000000000", "0xfe0000", "0xfe000000",
                 "0xfe", "0xfe00", "0xfe00000000", "0xfe0000000000"]
    masks = [hex(sum(1 << cpu for cpu in _cpus(entry))) for entry in _site("lumi").gpu_cpu_bind]
    assert masks == published
    assert _site("lumi").cpus_per_node == 56


def test_adastra_binding_gives_each_gcd_its_own_ccd():
    site = _site("adastra")
    assert [len(_cpus(entry)) for entry in site.gpu_cpu_bind] == [8] * 8
    # GCD 0-1 sit by NUMA node 3 (cores 48-63), 2-3 by 1, 4-5 by 0, 6-7 by 2
    assert site.gpu_cpu_bind[0] == "48-55" and site.gpu_cpu_bind[4] == "0-7"


@pytest.mark.parametrize("name", ["adastra", "lumi", "jean-zay"])
def test_production_sites_require_an_account_and_whole_nodes(name):
    site = _site(name)
    assert site.account_required and site.account_env and not site.account
    assert site.exclusive
    assert site.signal == "USR2"
    assert 0 < site.signal_delay_s < site.time_limit_min * 60 / 4
    assert site.container.image.endswith(".sif")


def test_countries():
    assert _site("adastra").country_iso_code == "FRA"
    assert _site("jean-zay").country_iso_code == "FRA"
    assert _site("lumi").country_iso_code == "FIN"


def test_local_slurm_is_the_test_cluster():
    site = _site("local-slurm")
    assert (site.scheduler, site.partition, site.cluster_name) == ("slurm", "debug", "saultest")
    assert site.gpus_per_node == 0 and site.container.image == ""
    assert (site.signal, site.signal_delay_s, site.default_nproc) == ("USR2", 30, 1)
    assert site.time_limit_min <= 10
    assert list(site.energy_sources) == ["pm_counters", "rapl", "estimate"]


def test_local_has_no_scheduler():
    site = _site("local")
    assert site.scheduler == "none" and site.cluster_name == "" and site.partition == ""
    assert list(site.energy_sources) == ["rapl", "estimate"]
    assert site.default_nproc == 1 and site.container.image == ""


def test_cluster_names_are_unique_for_auto_detection():
    names = [str(_load(p).cluster_name).lower() for p in SITE_FILES if _load(p).cluster_name]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", ["adastra", "lumi"])
def test_the_image_path_resolves_on_the_login_node_from_what_a_user_exports_there(name, tmp_path):
    """The image is checked at submit, on the login node: its path may only use variables set there
    (not Slurm's job variables, which exist only inside the job)."""
    from jobs.slurm_launcher import image_path

    env = {"SAUL_ACCOUNT": "project_465000000", "WORKDIR": str(tmp_path)}
    resolved = image_path(_site(name), env, must_exist=False)
    assert "$" not in resolved and resolved.endswith("saul-rocm.sif")
