"""config.yaml across submits: the LR horizon is settled once, and old run directories resume under new code."""
import pytest
from omegaconf import OmegaConf

from jobs.frozen_config import differences, freeze_or_check, resolve_schedule_steps
from saul.config.compose import compose
from saul.config.errors import ConfigError
from saul.resilience import ledger


def cfg_of(*overrides):
    return compose(["stage=cpt", "model=tiny-mixtral", "site=local", "run=r", *overrides], env={}).cfg


def test_schedule_horizon_is_max_steps_of_the_first_submit_and_stays(tmp_path):
    path, log = tmp_path / "config.yaml", tmp_path / "ledger.jsonl"
    freeze_or_check(path, cfg_of("train.max_steps=100"), log)
    assert OmegaConf.load(path).optim.schedule_steps == 100
    summary = freeze_or_check(path, cfg_of("train.max_steps=250"), log)
    assert summary == "resuming with changes: train.max_steps: 100 -> 250"
    frozen = OmegaConf.load(path)
    assert frozen.optim.schedule_steps == 100 and frozen.train.max_steps == 250


def test_an_explicit_horizon_is_kept_and_cannot_change_later(tmp_path):
    path, log = tmp_path / "config.yaml", tmp_path / "ledger.jsonl"
    freeze_or_check(path, cfg_of("train.max_steps=100", "optim.schedule_steps=400"), log)
    assert OmegaConf.load(path).optim.schedule_steps == 400
    with pytest.raises(ConfigError, match=r"was started with optim.schedule_steps=400; this submit asks "
                                          r"optim.schedule_steps=200"):
        freeze_or_check(path, cfg_of("optim.schedule_steps=200"), log)


def test_a_config_from_before_the_horizon_key_resumes_on_its_own_curve(tmp_path):
    """Old config.yaml files have no optim.schedule_steps: their ranks scheduled over train.max_steps."""
    path, log = tmp_path / "config.yaml", tmp_path / "ledger.jsonl"
    old = OmegaConf.to_container(cfg_of("train.max_steps=100"))
    del old["optim"]["schedule_steps"]
    path.write_text(OmegaConf.to_yaml(old))
    cfg = cfg_of("train.max_steps=300")
    resolve_schedule_steps(cfg, OmegaConf.load(path))
    assert cfg.optim.schedule_steps == 100
    assert freeze_or_check(path, cfg, log) == "resuming with changes: train.max_steps: 100 -> 300"
    assert [r["event"] for r in ledger.read(log)] == ["config_change"]


def test_a_key_added_to_the_schema_since_is_no_difference_at_its_default():
    old = OmegaConf.to_container(cfg_of())
    del old["model"]["activation_checkpointing"]
    assert differences(OmegaConf.create(old), cfg_of()) == []
    changed = cfg_of("model.activation_checkpointing=true")
    assert differences(OmegaConf.create(old), changed) == [("model.activation_checkpointing", None, True)]


def test_prepare_piece_size_may_change_between_submits_but_the_sources_may_not(tmp_path):
    """data.piece_mb only cuts prepare's work (same dataset for any value); the inputs are what it makes."""
    path, log = tmp_path / "config.yaml", tmp_path / "ledger.jsonl"
    sources = "data.sources=[{path:/data/legal,role:legal}]"
    prep = lambda *o: compose(["stage=prepare", "model=tiny-mixtral", "site=local", "run=r", sources, *o], env={}).cfg
    freeze_or_check(path, prep("data.piece_mb=64"), log)
    assert freeze_or_check(path, prep("data.piece_mb=1"), log) == "resuming with changes: data.piece_mb: 64.0 -> 1.0"
    with pytest.raises(ConfigError, match=r"was started with data.sources="):
        freeze_or_check(path, compose(["stage=prepare", "model=tiny-mixtral", "site=local", "run=r",
                                       "data.sources=[{path:/data/other,role:legal}]"], env={}).cfg, log)
