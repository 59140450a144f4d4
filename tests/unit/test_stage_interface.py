"""The stage interface and the post-training stages' configuration: every stage is a module with a
preset, the per-model stage presets (tiny IFT/DPO rows, the paper's IFT/DPO scale on ADASTRA),
DPO's reference in the memory fit check, and bad post-training input refused at submit."""
import subprocess
import sys
from pathlib import Path

import pytest

from saul.config.compose import PRESETS, compose
from saul.config.errors import ConfigError
from saul.config.model_size import reference_gb_per_rank, training_state_gb_per_rank
from saul.config.schema import STAGES
from saul.config.validate import validate
from saul.stages import load_stage

REPO = Path(__file__).resolve().parents[2]


def composed(*overrides):
    return compose(["run=t", *overrides], env={}).cfg


def test_every_stage_is_one_module_and_one_preset():
    for name in STAGES:
        assert load_stage(name).name == name
        assert (PRESETS / "stage" / f"{name}.yaml").is_file()


def test_tiny_post_training_gets_rows_that_fit_its_conversations_and_cpt_keeps_its_own():
    for stage in ("ift", "dpo"):
        cfg = composed(f"stage={stage}", "model=tiny-mixtral", "site=local")
        assert (cfg.train.seq_len, cfg.train.max_steps) == (512, 0)  # 0: one epoch, derived from the data
        assert cfg.train.seq_len <= cfg.model.max_position_embeddings
        validate(cfg)
    assert composed("stage=cpt", "model=tiny-mixtral", "site=local").train.seq_len == 64
    # The command line still wins over the model's stage preset.
    assert composed("stage=ift", "model=tiny-mixtral", "site=local", "train.seq_len=256").train.seq_len == 256


@pytest.mark.parametrize("model", ["mixtral-8x7b", "mixtral-8x22b"])
def test_the_paper_post_training_scale_is_16_adastra_nodes_and_fits(model):
    for stage in ("ift", "dpo"):
        cfg = composed(f"stage={stage}", f"model={model}", "site=adastra", "dry_run=true")
        assert (cfg.nodes, cfg.nproc) == (16, 8)  # 64 MI250X packages = 128 GCD ranks
        validate(cfg)
    assert composed("stage=cpt", f"model={model}", "site=adastra").nodes == 1  # other stages: unchanged


def test_dpo_fit_check_counts_the_reference_and_refuses_what_cannot_fit():
    cfg = composed("stage=dpo", "model=mixtral-8x22b", "site=adastra", "dry_run=true", "nodes=2")
    world = 2 * 8
    policy = training_state_gb_per_rank(cfg.model, world, zero3=True)
    reference = reference_gb_per_rank(cfg.model, world, zero3=True)
    assert reference == pytest.approx(policy / 8)  # frozen bf16 weights: 2 of the policy's 16 bytes/param
    with pytest.raises(ConfigError, match="frozen reference"):
        validate(cfg)
    # A plan the policy alone would fit but policy + reference does not is refused too.
    site_gb = policy + reference / 2
    with pytest.raises(ConfigError, match="frozen reference"):
        validate(composed("stage=dpo", "model=mixtral-8x22b", "site=adastra", "dry_run=true", "nodes=2",
                          f"site.device_memory_gb={site_gb}"))
    validate(composed("stage=ift", "model=mixtral-8x22b", "site=adastra", "dry_run=true", "nodes=2",
                      f"site.device_memory_gb={site_gb}"))


@pytest.mark.parametrize("overrides,message", [
    (["stage=dpo", "dpo.loss_type=[sigmoid,nope]"], "dpo.loss_type=['sigmoid', 'nope']: unknown ['nope']"),
    (["stage=dpo", "dpo.loss_weights=[1.0,2.0]"], "dpo.loss_weights has 2 values for 1 loss types"),
    (["stage=dpo", "dpo.beta=0"], "dpo.beta=0.0 is out of range"),
    (["stage=ift", "ift.data=[/nonexistent/ift.jsonl]"], "ift.data[0]=/nonexistent/ift.jsonl: no such file"),
    (["stage=ift", "ift.epochs=0"], "ift.epochs=0 is out of range"),
    (["stage=ift", "model.init_from_stage=cpt"], "model.init_from_stage=cpt: no final model at"),
    (["stage=dpo"], "starts from random weights but finds no tokenizer"),
    (["stage=cpt", "train.max_steps=0"], "train.max_steps=0 is out of range"),
])
def test_bad_post_training_input_exits_2_with_one_line_and_writes_nothing(overrides, message, tmp_path):
    runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "submit.py"), *overrides, "model=tiny-mixtral",
                             "site=local", f"runs_root={runs}", "run=bad"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not runs.exists()


def test_a_bad_instruction_line_stops_the_rank_with_exit_2_naming_file_and_line(tmp_path):
    """Found only when the rank reads the file: one error line, exit 2, the attempt_end says why, no
    checkpoint and no final model."""
    from saul.data.prepare import prepare_dataset
    from saul.resilience import ledger

    data = tmp_path / "data"
    prepare_dataset(composed("stage=prepare", "model=tiny-mixtral", "data.num_documents=20").data, 64, 1, data)
    bad = tmp_path / "ift.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
                   '{"messages": [oops\n')
    runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "submit.py"), "stage=ift", "model=tiny-mixtral",
                             "site=local", f"runs_root={runs}", "run=bad", f"data.path={data}", "nproc=1",
                             f"ift.data=[{bad}]"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    stage = runs / "bad" / "ift"
    assert f"{bad}:2: not valid JSON" in (result.stdout + result.stderr)
    end = [r for r in ledger.read(stage / "ledger.jsonl") if r.get("event") == "attempt_end"]
    assert end[-1]["exit_code"] == 2 and f"{bad}:2" in end[-1]["reason"]
    assert not (stage / "checkpoints").exists() and not (stage / "final").exists()
