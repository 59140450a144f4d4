"""A dry run on a laptop: no Slurm client anywhere on PATH, and the ADASTRA plan and batch script still render."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_dry_run_for_a_slurm_site_needs_no_slurm_installed(tmp_path):
    bin_dir = tmp_path / "bin"  # PATH holds the Python interpreter and nothing else: no srun, sbatch, squeue
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "PYTHONPATH": str(REPO), "SAUL_ACCOUNT": "gda2301",
           "LANG": os.environ.get("LANG", "C.UTF-8")}
    result = subprocess.run([str(bin_dir / "python"), str(REPO / "jobs" / "submit.py"), "stage=cpt", "nodes=96",
                             "site=adastra", f"runs_root={tmp_path / 'runs'}", "--dry-run"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "#SBATCH --nodes=96" in result.stdout and "#SBATCH --account=gda2301" in result.stdout
    assert "--cpu-bind=mask_cpu:0xff000000000000," in result.stdout and "--job-name=saul-ranks" in result.stdout
    assert not (tmp_path / "runs").exists()
