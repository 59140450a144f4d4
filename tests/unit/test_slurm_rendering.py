"""What a submit to a real site would run, pinned: the ADASTRA sbatch script and per-rank command for
96 nodes (golden files), the Apptainer command line, device and CPU binding, and the refusals that
must happen at submit time rather than in the queue."""
import os
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from jobs import slurm_launcher
from saul.binding import bind_rank, parse_cpu_list
from saul.config.compose import compose
from saul.config.errors import ConfigError
from saul.config.sites import REPO_ROOT
from saul.rundir import RunDir

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ADASTRA_ENV = {"SAUL_ACCOUNT": "gda2301", "WORKDIR": "/lus/work/CT6/someone"}


def adastra(*extra):
    cfg = compose(["stage=cpt", "site=adastra", "nodes=96", "run=saul54b", "runs_root=/lus/work/saul/runs", *extra],
                  env={}).cfg
    return cfg, RunDir.from_config(cfg)


def normalised(text: str) -> str:
    return text.replace(str(REPO_ROOT), "<repo>").replace(os.path.realpath(REPO_ROOT), "<repo>")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SAUL_REGENERATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed: inspect, then regenerate with SAUL_REGENERATE_GOLDEN=1"


def test_adastra_96_node_batch_script_and_rank_command_are_pinned():
    cfg, rundir = adastra()
    script, command = slurm_launcher.render_batch_script(cfg, rundir, env=ADASTRA_ENV)
    check_golden("adastra-cpt-96.sbatch", normalised(script))
    check_golden("adastra-cpt-96.rank-command", normalised(command) + "\n")


def test_lumi_16_node_batch_script_is_pinned():
    cfg = compose(["stage=cpt", "site=lumi", "nodes=16", "run=saul54b", "runs_root=/scratch/project_465000000/runs"],
                  env={}).cfg
    script, _ = slurm_launcher.render_batch_script(cfg, RunDir.from_config(cfg), env={"SAUL_ACCOUNT": "project_465000000"})
    check_golden("lumi-cpt-16.sbatch", normalised(script))


def test_slurm_binds_each_rank_to_the_cores_of_its_gcd_with_the_masks_lumi_documents():
    # docs.lumi-supercomputer.eu/runjobs/scheduled-jobs/distribution-binding/: the CPU_BIND masks for 8 GCDs
    documented = "fe000000000000,fe00000000000000,fe0000,fe000000,fe,fe00,fe00000000,fe0000000000"
    cfg = compose(["stage=cpt", "site=lumi", "nodes=2"], env={}).cfg
    script, _ = slurm_launcher.render_batch_script(cfg, RunDir.from_config(cfg), env={"SAUL_ACCOUNT": "p"})
    ranks_srun = next(line for line in script.splitlines() if "--job-name=saul-ranks" in line)
    masks = ranks_srun.split("--cpu-bind=mask_cpu:")[1].split()[0].split(",")
    assert [m[2:] for m in masks] == documented.split(",")
    adastra_cfg, _ = adastra()
    assert slurm_launcher.cpu_masks(adastra_cfg.site, 8)[0] == hex(0xFF << 48)  # cores 48-55
    # Fewer ranks than devices: one mask per rank; no map (or a partial one): Slurm's default binding.
    assert len(slurm_launcher.cpu_bind_args(cfg.site, 4)[0].split(",")) == 4
    assert slurm_launcher.cpu_bind_args(OmegaConf.create({"gpu_cpu_bind": []}), 8) == []
    assert slurm_launcher.cpu_bind_args(OmegaConf.create({"gpu_cpu_bind": ["0-7"]}), 2) == []
    with pytest.raises(ConfigError, match="not a CPU list"):
        slurm_launcher.cpu_masks(OmegaConf.create({"gpu_cpu_bind": ["cores 0 to 7"]}), 1)


def test_no_wckey_unless_the_site_sets_one():
    cfg, rundir = adastra()
    script, _ = slurm_launcher.render_batch_script(cfg, rundir, env=ADASTRA_ENV)
    assert "--wckey" not in script  # submitit's default --wckey=submitit is rejected where wckeys are enforced
    cfg, rundir = adastra("site.wckey=saullm")
    script, _ = slurm_launcher.render_batch_script(cfg, rundir, env=ADASTRA_ENV)
    assert "#SBATCH --wckey=saullm" in script


def test_the_dry_run_rendering_is_what_a_submit_hands_to_sbatch(tmp_path):
    """render_batch_script avoids submitit's executor (it refuses to exist without srun): same text anyway."""
    if not shutil.which("srun"):
        pytest.skip("srun is not installed here: submitit's executor cannot be built to compare with")
    cfg = compose(["stage=cpt", "site=local-slurm", "nodes=2", f"runs_root={tmp_path}", "run=r"], env={}).cfg
    rundir = RunDir.from_config(cfg)
    script, command = slurm_launcher.render_batch_script(cfg, rundir, env={})
    executor = slurm_launcher.make_executor(cfg, rundir, env={})
    assert executor._submitit_command_str == command
    assert executor._make_submission_file_text(command, "uid") == script
    assert executor._make_submission_command(Path("x.sh"))[-2:] == ["sbatch", "x.sh"]  # behind `timeout`


def test_adastra_script_carries_the_site_figures():
    cfg, rundir = adastra()
    script, command = slurm_launcher.render_batch_script(cfg, rundir, env=ADASTRA_ENV)
    for line in ("#SBATCH --nodes=96", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --account=gda2301", "#SBATCH --constraint=MI250",
                 "#SBATCH --exclusive", "#SBATCH --requeue", "#SBATCH --signal=USR2@600", "#SBATCH --time=1440"):
        assert line in script
    assert command.startswith("bash -c 'echo \"binding: rank $SLURM_PROCID")  # each rank logs where Slurm put it
    assert ' saul-rank ' in command and '"/lus/work/saul/runs,' in command and "--rocm" in command
    # the image's python runs submitit's entry point through our rank guard (saul.resilience.rank_guard)
    assert ('"/lus/work/CT6/someone/containers/saul-rocm.sif" python -u -m saul.resilience.rank_guard '
            '-u -m submitit.core._submit') in command
    assert 'export MIOPEN_USER_DB_PATH="/tmp/$USER-miopen-$SLURM_JOB_ID"' in script  # expanded on the node
    assert "gda2301" not in command  # nothing secret-ish on the rank command line


def test_missing_account_or_image_is_refused_at_submit_time(tmp_path):
    cfg, _ = adastra()
    with pytest.raises(ConfigError, match="export SAUL_ACCOUNT=<project>"):
        slurm_launcher.account_for(cfg.site, env={})
    with pytest.raises(ConfigError, match="uses an unset variable"):
        slurm_launcher.image_path(cfg.site, env={})
    cfg.site.container.image = str(tmp_path / "missing.sif")
    with pytest.raises(ConfigError, match="does not exist; build it with"):
        slurm_launcher.image_path(cfg.site)


def test_sbatch_extra_lines_must_be_options():
    assert slurm_launcher.sbatch_extra_parameters(["--constraint=MI250", "--exclusive"]) == {
        "constraint": "MI250", "exclusive": True}
    with pytest.raises(ConfigError, match="must look like --option=value"):
        slurm_launcher.sbatch_extra_parameters(["constraint=MI250"])


def test_excluded_nodes_of_the_run_reach_sbatch(tmp_path):
    cfg, rundir = adastra(f"runs_root={tmp_path}")
    rundir.root.mkdir(parents=True)
    rundir.ledger.write_text('{"event": "node_excluded", "node": "g1042", "reason": "NODE_FAIL", "time": 1}\n')
    script, _ = slurm_launcher.render_batch_script(cfg, rundir, env=ADASTRA_ENV)
    assert "#SBATCH --exclude=g1042" in script


def test_each_rank_sees_one_gcd_and_the_cores_next_to_it():
    site = OmegaConf.create({"gpu_vendor": "amd", "gpus_per_node": 8,
                             "gpu_cpu_bind": [f"{os.sched_getaffinity(0).__iter__().__next__()}"] * 8})
    env = {}
    before = os.sched_getaffinity(0)
    try:
        described = bind_rank(site, 3, environ=env).described
        assert env == {"ROCR_VISIBLE_DEVICES": "3"}  # ROCr only: HIP would index into the filtered set
        assert os.sched_getaffinity(0) == {min(before)} and "cores" in described
    finally:
        os.sched_setaffinity(0, before)
    nvidia = OmegaConf.create({"gpu_vendor": "nvidia", "gpus_per_node": 4, "gpu_cpu_bind": []})
    env = {}
    bind_rank(nvidia, 2, environ=env)
    assert env == {"CUDA_VISIBLE_DEVICES": "2"}
    assert bind_rank(OmegaConf.create({"gpu_vendor": "none", "gpus_per_node": 0, "gpu_cpu_bind": []}), 0, {}).described is None


def test_cpu_lists_parse_like_the_kernel_writes_them():
    assert parse_cpu_list("48-55") == list(range(48, 56))
    assert parse_cpu_list("0-2,7,9-10") == [0, 1, 2, 7, 9, 10]


def test_the_dry_run_plan_shows_the_rank_command_the_ranks_run():
    """The plan printed at submit names the same modules, in the same order, as the rendered rank command."""
    from jobs.plan import make_plan

    cfg, rundir = adastra()
    _, command = slurm_launcher.render_batch_script(cfg, rundir, env=ADASTRA_ENV)
    shown = make_plan(cfg, rundir).rank_command
    modules = [shown[i + 1] for i, word in enumerate(shown) if word == "-m"]
    assert modules == ["saul.resilience.rank_guard", "submitit.core._submit"]
    assert " ".join(f"-u -m {m}" for m in modules) in command
