"""`jobs/submit.py` as a user meets it: bad input, dry runs, frozen config, the local demo path."""
import pytest

from tests.integration import e2e

BASE = ["model=tiny-mixtral", "site=local"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["stage=cpt", "nodez=2"], "unknown key 'nodez' (did you mean 'nodes'?)"),
        (["stage=cpt", "nodes=0"], "nodes=0 is out of range"),
        (["stage=cpt", "optim.lr=-1"], "optim.lr=-1.0 is out of range"),
        (["stage=cpt", "optim.lr=fast"], "could not be converted to Float"),
        (["stage=dpx"], "unknown stage 'dpx'"),
        (["stage=cpt", "site=nowhere"], "unknown site 'nowhere'"),
        (["stage=cpt", "--fast"], "unknown option '--fast'"),
        (["stage=cpt", "data.path=/no/such/dataset"], "no packed dataset at /no/such/dataset"),
        (["stage=cpt"], "no packed dataset at"),  # this run was never prepared
        (["stage=cpt", "nodes=2"], "has no Slurm, so it runs on 1 node"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, message):
    runs = tmp_path / "runs"
    result = e2e.submit(*BASE, f"runs_root={runs}", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not runs.exists()


def test_dry_run_prints_plan_and_config_without_side_effects(tmp_path):
    runs = tmp_path / "runs"
    for flag in ("dry_run=true", "--dry-run"):
        result = e2e.submit("stage=cpt", *BASE, f"runs_root={runs}", "nproc=2", flag)
        assert result.returncode == 0, result.stderr
        assert "ranks:       2 = 1 node(s) x 2 process(es) per node" in result.stdout
        assert "python -m saul.stage_entry" in result.stdout
        assert "# resolved config" in result.stdout and "betas:\n  - 0.99\n  - 0.9" in result.stdout
        assert "warning: when run for real: no packed dataset" in result.stderr
    assert not runs.exists()


def test_resubmit_may_change_how_but_not_what(packed_data, tmp_path):
    runs = tmp_path / "runs"
    args = ["stage=cpt", *BASE, f"runs_root={runs}", "run=r", f"data.path={packed_data}", "train.max_steps=2",
            "checkpoint.every_steps=2"]
    first = e2e.submit(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "new stage: config frozen" in first.stdout
    frozen = (runs / "r" / "cpt" / "config.yaml").read_text()

    refused = e2e.submit(*args, "optim.lr=1e-3")
    assert refused.returncode == 2
    assert "was started with optim.lr=2e-05; this submit asks optim.lr=0.001" in refused.stderr
    assert (runs / "r" / "cpt" / "config.yaml").read_text() == frozen

    longer = e2e.submit(*args[:-2], "train.max_steps=4", "checkpoint.every_steps=2")
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert "train.max_steps: 2 -> 4" in longer.stdout
    assert "resumed from step-00000002" in longer.stdout
    # code_change: the working tree changed between the two submits (a checkout being edited)
    ledger = [r for r in e2e.records(runs / "r" / "cpt" / "ledger.jsonl") if r["event"] != "code_change"]
    assert [r["event"] for r in ledger] == ["attempt_start", "attempt_end", "config_change", "attempt_start",
                                            "attempt_end"]
    assert ledger[-1]["step_start"] == 2 and ledger[-1]["step_end"] == 4 and ledger[-1]["exit_code"] == 0


def test_stage_refuses_a_dataset_packed_for_another_sequence_length(packed_data, tmp_path):
    result = e2e.submit("stage=cpt", *BASE, f"runs_root={tmp_path}", f"data.path={packed_data}", "train.seq_len=128")
    assert result.returncode == 2
    assert "packed to seq_len=64 but train.seq_len=128" in result.stderr


@pytest.mark.parametrize("every, says", [("20", "checkpoint every 20 steps"),
                                         ("auto", "checkpoint at Young's interval (every_steps=auto")])
def test_the_plan_says_the_checkpoint_cadence_in_words(tmp_path, every, says):
    result = e2e.submit("stage=cpt", *BASE, f"runs_root={tmp_path}", f"checkpoint.every_steps={every}", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert says in result.stdout and "every auto steps" not in result.stdout
