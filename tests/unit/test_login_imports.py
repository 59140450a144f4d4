"""The login side runs on the base install: no torch, deepspeed, transformers (the `train` extra).

A subprocess installs an import hook that refuses the compute-side packages, then imports every
module of jobs/, saul/config, saul/resilience and monitoring/ and runs what a user runs on a login
node (submit --dry-run on the local site and on ADASTRA, status, the energy report): any import
of a refused package on those paths fails the test with the importing module's traceback.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Everything only the `train` extra of setup.cfg brings.
COMPUTE_ONLY = ("torch", "deepspeed", "transformers", "trl", "accelerate", "datasets", "safetensors", "tokenizers")

LOGIN_SIDE = textwrap.dedent("""
    import importlib, pkgutil, sys
    from importlib.abc import MetaPathFinder

    REFUSED = set(sys.argv[1].split(","))

    class Refuse(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in REFUSED:
                raise ImportError(f"login side imported {name}")
            return None

    sys.meta_path.insert(0, Refuse())
    import jobs, monitoring, saul.config, saul.resilience
    names = ["saul.rundir", "saul.exit_codes", "saul.slurm_commands"]
    for package in (jobs, monitoring, saul.config, saul.resilience):
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for name in names:
        importlib.import_module(name)
    runs = sys.argv[2]
    from jobs import status, submit
    from monitoring import report
    codes = [
        submit.main(["stage=prepare", "model=tiny-mixtral", "site=local", f"runs_root={runs}", "--dry-run"]),
        submit.main(["stage=cpt", "model=tiny-mixtral", "site=local", "nproc=2", f"runs_root={runs}", "--dry-run"]),
        submit.main(["stage=cpt", "nodes=96", "site=adastra", f"runs_root={runs}", "--dry-run"]),
        status.main([f"runs_root={runs}"]),
        report.main([f"runs_root={runs}", "kind=energy"]),
    ]
    print("imported", len(names), "modules; exit codes", codes)
    print("leaked:", sorted(m for m in sys.modules if m.split(".")[0] in REFUSED))
""")


def test_login_side_imports_and_runs_without_the_compute_packages(tmp_path):
    runs = tmp_path / "runs"
    (runs / "r" / "prepare").mkdir(parents=True)  # a stage directory for status and the report to read
    (runs / "r" / "prepare" / "ledger.jsonl").write_text("")
    result = subprocess.run(
        [sys.executable, "-c", LOGIN_SIDE, ",".join(COMPUTE_ONLY), str(runs)],
        cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()
    assert summary[-1] == "leaked: []"
    assert summary[-2].endswith("exit codes [0, 0, 0, 0, 0]"), result.stdout[-3000:] + result.stderr[-3000:]
    assert "# sbatch script" in result.stdout  # the ADASTRA dry run rendered its batch script


def test_the_hook_refuses_what_it_should(tmp_path):
    """The check itself can fail: a module that imports torch is caught."""
    bad = tmp_path / "uses_torch.py"
    bad.write_text("import torch\n")
    hook = LOGIN_SIDE.split("import jobs, monitoring")[0] + "import uses_torch\n"
    result = subprocess.run([sys.executable, "-c", hook, ",".join(COMPUTE_ONLY), str(tmp_path)],
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "login side imported torch" in result.stderr
