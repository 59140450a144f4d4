"""What reaches the batch script's shell: injected values stay text (the rendered lines are run with bash),
secrets stay out of every file, and the host Python the helpers need is checked with the fix in the message."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from jobs import slurm_launcher
from saul.config.compose import compose
from saul.config.errors import ConfigError
from saul.config.validate import validate
from saul.rundir import RunDir
from saul.shell_values import node_expanded

REPO = Path(__file__).resolve().parents[2]


def rendered(tmp_path, *overrides, env=None, sets=None):
    """(cfg, (script, rank command)) of a dry run; `sets`: values as a site file could hold them (no CLI grammar)."""
    cfg = compose(["stage=cpt", "model=tiny-mixtral", "site=local-slurm", f"runs_root={tmp_path / 'runs'}", "run=r",
                   "dry_run=true", *overrides], env={}).cfg
    for key, value in (sets or {}).items():
        OmegaConf.update(cfg, key, value, force_add=True)
    validate(cfg)
    return cfg, slurm_launcher.render_batch_script(cfg, RunDir.from_config(cfg), env=env or {})


def setup_section(script: str) -> str:
    """The setup lines up to (not including) the first call of a helper: modules, python check, exports."""
    lines = script.split("# setup\n")[1].splitlines()
    return "\n".join(line for line in lines[:next(i for i, l in enumerate(lines) if "before_job" in l)])


def run_bash(text: str, cwd: Path, env_extra=None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "SLURM_JOB_ID": "77", **(env_extra or {})}
    # `module` is a shell function on clusters; here it only prints what it was asked to load.
    prelude = 'module() { printf "module:%s\\n" "$@"; }\n'
    return subprocess.run(["bash", "-c", prelude + text], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


# "\\${": OmegaConf's escape; the value the script gets is "${X:-$(touch pwned)}".
INJECTIONS = ["a$(touch pwned)b", "a`touch pwned`b", 'a"; touch pwned; "b', "\\${X:-$(touch pwned)}", "a\\$(touch pwned)",
              "$(touch pwned)$HOME"]


@pytest.mark.parametrize("value", INJECTIONS)
def test_an_injected_site_env_value_is_exported_as_text_and_runs_nothing(tmp_path, value):
    cfg, (script, _) = rendered(tmp_path, sets={"site.env.INJECTED": value})
    result = run_bash(setup_section(script) + '\nprintf "%s" "$INJECTED"', tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "pwned").exists()
    # Only $NAME / ${NAME} expand on the node (here HOME); everything else arrives as written.
    assert result.stdout == cfg.site.env.INJECTED.replace("$HOME", str(tmp_path))


def test_node_variables_in_env_binds_and_image_expand_on_the_node_and_nothing_else(tmp_path):
    _, (script, command) = rendered(
        tmp_path, "site.container.image='$HOME/$(touch pwned).sif'",
        sets={"site.env.CACHE": "$HOME/cache-\\${SLURM_JOB_ID}", "site.container.binds": ["$HOME/data", "/x`touch pwned`"]})
    result = run_bash(setup_section(script) + '\nprintf "%s" "$CACHE"', tmp_path)
    assert result.stdout == f"{tmp_path}/cache-77"
    # The rank command as srun would run it, with the container launcher (the image runtime, or the
    # wrapper script run by bash) standing in to print the arguments it got.
    stand_in = 'apptainer() { printf "%s\\n" "$@"; }\nbash() { shift; printf "%s\\n" "$@"; }\n'
    inner = command.split(" saul-rank ", 1)[1]
    ran = run_bash(stand_in + inner, tmp_path)
    assert ran.returncode == 0, ran.stderr
    args = ran.stdout.splitlines()
    assert f"{tmp_path}/$(touch pwned).sif" in args
    assert any(a.endswith(f",{tmp_path}/data,/x`touch pwned`") for a in args)
    assert not (tmp_path / "pwned").exists()


def test_modules_and_run_paths_are_literal(tmp_path):
    _, (script, _) = rendered(tmp_path, "site.modules=['python; touch pwned','cray-python/3.11']")
    result = run_bash(setup_section(script), tmp_path)
    assert "module:python; touch pwned" in result.stdout and "module:cray-python/3.11" in result.stdout
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("override, message", [
    ("+site.env.X='a\nb'", "contains a newline"),
    ("site.account='p\n#SBATCH --qos=high'", "contains a newline"),
    ("site.env_passthrough=['$(x)']", "not a valid environment variable name"),
])
def test_values_that_cannot_be_quoted_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        rendered(tmp_path, override)
    with pytest.raises(ConfigError, match="site.env.A B: not a valid environment variable name"):
        rendered(tmp_path, sets={"site.env": {"A B": "1"}})


def test_node_expanded_keeps_only_plain_variable_references():
    assert node_expanded("/tmp/$USER-${SLURM_JOB_ID}") == '"/tmp/$USER-${SLURM_JOB_ID}"'
    assert node_expanded('a"b\\c`d$(e)${f:-g}') == '"a\\"b\\\\c\\`d\\$(e)\\${f:-g}"'


@pytest.mark.parametrize("name", ["HF_TOKEN", "wandb_api_key", "AWS_SECRET", "DB_PASSWORD", "TOKEN"])
def test_credential_names_in_site_env_are_refused_with_the_way_out(tmp_path, name):
    with pytest.raises(ConfigError, match=rf"site.env.{name} looks like a credential.*site.env_passthrough=\[{name}\]"):
        rendered(tmp_path, f"+site.env.{name}=s3cr3t-value")


def test_passthrough_variables_travel_by_name_only(tmp_path):
    cfg, (script, command) = rendered(tmp_path, "site.env_passthrough=[HF_TOKEN]", env={"HF_TOKEN": "s3cr3t-value"})
    assert "s3cr3t-value" not in script + command
    assert "#SBATCH --export=ALL,HF_TOKEN" in script
    checks = setup_section(script)
    assert run_bash(checks, tmp_path, {"HF_TOKEN": "s3cr3t-value"}).returncode == 0
    missing = run_bash(checks, tmp_path)
    assert missing.returncode == 2 and "error: HF_TOKEN (site.env_passthrough) is not in the job's environment" in missing.stderr
    cfg.dry_run = False  # a real submit refuses at once when this shell does not set it
    os.environ.pop("HF_TOKEN", None)
    with pytest.raises(ConfigError, match="site.env_passthrough names HF_TOKEN but this shell does not set it"):
        validate(cfg)


def test_a_secret_in_site_env_is_refused_by_the_cli_before_anything_is_written(tmp_path):
    runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "submit.py"), "stage=cpt", "site=local-slurm",
                             f"runs_root={runs}", "+site.env.MY_API_KEY=s3cr3t-value"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: site.env.MY_API_KEY looks like a credential")
    assert "s3cr3t-value" not in result.stdout + result.stderr and not runs.exists()


def fake_python(tmp_path: Path, version: str) -> Path:
    """A `python3` that answers like an old interpreter when asked for its version (what the check asks)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(f"#!/bin/sh\necho {version}\n")
    fake.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("version, ok", [("3.6", False), ("2.7", False), ("3.8", True), ("3.12", True)])
def test_the_host_python_is_checked_once_with_the_fix_in_the_message(tmp_path, version, ok):
    _, (script, _) = rendered(tmp_path)
    checks = "\n".join(l for l in setup_section(script).splitlines() if "export" not in l)
    result = run_bash(checks, tmp_path, {"PATH": f"{fake_python(tmp_path, version)}:{os.environ['PATH']}"})
    if ok:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 2
        assert f"need Python >= 3.8 on the node, but python3 is {version}: set site.host_python=" in result.stderr


def test_a_missing_host_python_is_named(tmp_path):
    _, (script, _) = rendered(tmp_path, "site.host_python=/opt/nowhere/python3")
    checks = "\n".join(l for l in setup_section(script).splitlines() if "export" not in l)
    result = run_bash(checks, tmp_path)
    assert result.returncode == 2 and "but /opt/nowhere/python3 is missing" in result.stderr
    # Every batch-host helper runs on the checked interpreter, none on a bare `python3`.
    helpers = re.findall(r'("\$SAUL_HOST_PYTHON"|\bpython3?) -m (saul\.resilience\.\w+|monitoring\.accounting)\b', script)
    assert {module for _, module in helpers} >= {"saul.resilience.before_job", "saul.resilience.after_job",
                                                  "saul.resilience.watchdog", "saul.resilience.step_restart"}
    assert {python for python, _ in helpers} == {'"$SAUL_HOST_PYTHON"'}


BATCH_HELPERS = ["saul.resilience.before_job", "saul.resilience.after_job", "saul.resilience.watchdog",
                 "saul.resilience.rendezvous_port", "saul.resilience.node_exclusion", "saul.resilience.step_restart",
                 "saul.resilience.spares", "monitoring.accounting"]


def test_the_batch_script_helpers_need_nothing_newer_than_python_3_8_and_nothing_outside_the_stdlib():
    code = ("import sys, importlib\n"
            f"for m in {BATCH_HELPERS!r}: importlib.import_module(m)\n"
            "print('\\n'.join(m for m in sys.modules if m.partition('.')[0] not in sys.stdlib_module_names))")
    # -S: no site-packages at all, like a bare host python3; a third-party import fails outright.
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    ours = [m for m in result.stdout.split() if m.split(".")[0] not in ("saul", "monitoring", "__main__")]
    assert ours == [], f"the host python would need {ours}"
    for module in (m for m in result.stdout.split() if m.split(".")[0] in ("saul", "monitoring")):
        path = REPO / (module.replace(".", "/") + ".py")
        if not path.is_file():
            path = REPO / module.replace(".", "/") / "__init__.py"
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))  # SyntaxError names the line
