"""Lineage records (saul/lineage.py) and model cards (saul/model_card.py) of finished stages, from run
directories laid out as the stages leave them (config.yaml, ledger, metrics, final/, the dataset
manifest, a real meter's power log), and `jobs/status.py --lineage`. The real stages write them in
tests/integration/test_pipeline_local.py."""
import json
import time

import pytest
import yaml
from omegaconf import OmegaConf

from jobs import status
from monitoring.units import format_energy
from saul import lineage, model_card
from saul.config.compose import compose
from saul.resilience import ledger
from saul.rundir import RunDir
from tests.unit.energy_fixtures import sysfs_tmp  # noqa: F401  (fixture)
from tests.unit.test_energy_report import write_meter_log

CODE = {"revision": "a" * 40, "dirty": False, "diff_sha1": None, "source": "git"}


def make_stage(runs, stage, *overrides, final_bytes=b"weights", loss=2.5, watts=None, scratch=None):
    cfg = compose([f"stage={stage}", "model=tiny-mixtral", "site=local", f"runs_root={runs}", "run=r", *overrides]).cfg
    rundir = RunDir.from_config(cfg)
    rundir.root.mkdir(parents=True, exist_ok=True)
    rundir.config.write_text(OmegaConf.to_yaml(cfg))
    now = time.time()
    ledger.append(rundir.ledger, {"event": "attempt_start", "attempt": 1, "job_id": "7", "world_size": 2, "nodes": 1,
                                  "code": CODE, "image": None, "time": now - 30})
    ledger.append(rundir.ledger, {"event": "attempt_end", "attempt": 1, "job_id": "7", "exit_code": 0, "time": now})
    if stage in lineage.MODEL_STAGES:
        ledger.append(rundir.metrics, {"step": 60, "loss": loss, "tokens": 30720, "max_steps": 60})
        final = rundir.root / "final"
        final.mkdir()
        (final / "config.json").write_text('{"model_type": "mixtral"}')
        (final / "model.safetensors").write_bytes(final_bytes)
    if watts:
        write_meter_log(rundir.power, scratch, "n1", "7", 1, now - 30, now, watts, clean=True)
    return cfg, rundir


def write_dataset(runs):
    data = runs / "r" / "data"
    (data / "audit").mkdir(parents=True)
    manifest = {"fingerprint": "f" * 64, "tokenizer_fingerprint": "t" * 64, "vocab_size": 1000, "seq_len": 64,
                "num_samples": 10, "packed_tokens": 640,
                "metadata": {"inputs": {"sources": [{"name": "court-opinions", "role": "legal", "weight": None},
                                                    {"name": "slimpajama", "role": "replay", "weight": 0.02}]},
                             "source_tokens": {"court-opinions": 600, "slimpajama": 40},
                             "removed_by_reason": {"near_duplicate": 3, "perplexity": 2}, "audit": "audit"}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_a_directory_hash_follows_content_and_names_but_not_the_model_card(tmp_path):
    d = tmp_path / "final"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"abc")
    first = lineage.directory_hash(d)
    (d / "README.md").write_text("card")
    assert lineage.directory_hash(d) == first and first["files"] == 1 and first["bytes"] == 3
    (d / "model.safetensors").write_bytes(b"abd")
    assert lineage.directory_hash(d)["sha256"] != first["sha256"]
    (d / "model.safetensors").rename(d / "other.safetensors")
    assert lineage.directory_hash(d)["sha256"] not in (first["sha256"],)
    assert lineage.directory_hash(tmp_path / "missing") is None


def test_only_rank_0_of_a_stage_that_ended_done_records(tmp_path):
    cfg, rundir = make_stage(tmp_path, "cpt")
    assert lineage.record_stage(cfg, rundir, {"exit_code": 75}, is_rank0=lambda: True) is None
    assert lineage.record_stage(cfg, rundir, {"exit_code": 0}, is_rank0=lambda: False) is None
    assert not (rundir.root / "lineage.json").exists() and not (rundir.root / "final" / "README.md").exists()


def test_a_training_stage_records_its_data_code_config_start_output_and_energy(tmp_path, sysfs_tmp):
    write_dataset(tmp_path)
    prep_cfg, prep = make_stage(tmp_path, "prepare")
    lineage.record_stage(prep_cfg, prep, {"exit_code": 0}, is_rank0=lambda: True)
    cfg, rundir = make_stage(tmp_path, "cpt", watts=200.0, scratch=sysfs_tmp)
    path = lineage.record_stage(cfg, rundir, {"exit_code": 0}, is_rank0=lambda: True)
    record = json.loads(path.read_text())
    assert record["data"]["fingerprint"] == "f" * 64 and record["data"]["tokenizer_sha256"] == "t" * 64
    assert [s["name"] for s in record["data"]["sources"]] == ["court-opinions", "slimpajama"]
    assert record["code"] == CODE and record["config"]["sha256"] == lineage.config_hash(OmegaConf.to_container(cfg))
    assert record["started_from"] == {"random_init": True, "model": "tiny-mixtral", "seed": cfg.seed}
    out = record["output"]
    assert out["sha256"] == lineage.directory_hash(rundir.root / "final")["sha256"]  # the card is left out
    assert (out["step"], out["tokens"], out["final_loss"]) == (60, 30720, 2.5)
    assert record["hyperparameters"]["global_batch"] == cfg.train.micro_batch * cfg.train.grad_accum * 2
    assert record["energy"]["joules"] == pytest.approx(200.0 * 30, rel=0.05)
    assert record["energy"]["co2_kg"] > 0 and record["energy"]["country"] == "FRA"

    card = (rundir.root / "final" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["license"] == "apache-2.0" and "cpt" in meta["tags"] and "base_model" not in meta
    assert meta["datasets"] == ["court-opinions", "slimpajama"]
    assert "| cpt | random init | 60 | 2e-05 (cosine) |" in card
    assert "near_duplicate 3, perplexity 2" in card and "Not evaluated yet" in card
    assert "| prepare | - |" in card and f"| cpt | {format_energy(record['energy']['joules'])} |" in card


def test_a_later_stage_records_the_hash_of_the_final_it_started_from(tmp_path):
    write_dataset(tmp_path)
    cpt_cfg, cpt = make_stage(tmp_path, "cpt")
    lineage.record_stage(cpt_cfg, cpt, {"exit_code": 0}, is_rank0=lambda: True)
    cfg, anneal = make_stage(tmp_path, "anneal", "model.init_from_stage=cpt", final_bytes=b"annealed")
    record = json.loads(lineage.record_stage(cfg, anneal, {"exit_code": 0}, is_rank0=lambda: True).read_text())
    cpt_hash = json.loads((cpt.root / "lineage.json").read_text())["output"]["sha256"]
    assert record["started_from"]["stage"] == "cpt" and record["started_from"]["sha256"] == cpt_hash
    assert record["output"]["sha256"] != cpt_hash
    card = (anneal.root / "final" / "README.md").read_text()
    assert "| cpt | random init |" in card and "| anneal | cpt/final |" in card  # the whole chain


def test_an_eval_records_what_it_compared_and_puts_the_scores_in_their_model_cards(tmp_path):
    write_dataset(tmp_path)
    cpt_cfg, cpt = make_stage(tmp_path, "cpt")
    lineage.record_stage(cpt_cfg, cpt, {"exit_code": 0}, is_rank0=lambda: True)
    cfg, ev = make_stage(tmp_path, "eval", "eval.models=[cpt]", "eval.tasks=[/nowhere]")
    task = {"balanced_accuracy": 0.75, "n": 8, "parse_failures": 1, "category": "rule"}
    results = {"run": "r", "models": ["cpt"], "results": {"cpt": {
        "path": str(cpt.root / "final"), "tasks": {"hearsay": task},
        "categories": {"rule": {"balanced_accuracy": 0.75}}, "overall": {"balanced_accuracy": 0.75, "tasks": 1},
        "mmlu": {"jurisprudence": {"accuracy": 0.5, "n": 4}}}}}
    (ev.root / "results.json").write_text(json.dumps(results))
    record = json.loads(lineage.record_stage(cfg, ev, {"exit_code": 0}, is_rank0=lambda: True).read_text())
    cpt_hash = json.loads((cpt.root / "lineage.json").read_text())["output"]["sha256"]
    assert record["models"] == [{"label": "cpt", "path": str(cpt.root / "final"), "sha256": cpt_hash, "files": 2,
                                 "bytes": len(b"weights") + len('{"model_type": "mixtral"}')}]
    assert record["output"]["summary"]["cpt"]["balanced_accuracy"] == 0.75

    card = (cpt.root / "final" / "README.md").read_text()
    metrics = front_matter(card)["model-index"][0]["results"][0]["metrics"]
    assert [(m["name"], m["value"]) for m in metrics] == [("LegalBench balanced accuracy (overall)", 75.0),
                                                           ("MMLU jurisprudence", 50.0)]
    assert "| hearsay | rule | 75.0 | 1/8 |" in card and "| MMLU jurisprudence | | 50.0 | |" in card


def test_a_problem_while_recording_is_a_warning_never_a_failed_stage(tmp_path, capsys):
    cfg, rundir = make_stage(tmp_path, "cpt")
    (rundir.root / "lineage.json").mkdir()  # cannot be replaced by a file
    assert lineage.record_stage(cfg, rundir, {"exit_code": 0}, is_rank0=lambda: True) is None
    assert "warning: lineage of stage cpt not recorded" in capsys.readouterr().err


def test_status_lineage_prints_the_chain_from_data_to_scores(tmp_path, capsys):
    write_dataset(tmp_path)
    for stage in ("prepare", "cpt"):
        cfg, rundir = make_stage(tmp_path, stage)
        lineage.record_stage(cfg, rundir, {"exit_code": 0}, is_rank0=lambda: True)
    make_stage(tmp_path, "anneal", "model.init_from_stage=cpt")  # ended, but never recorded
    assert status.main([f"runs_root={tmp_path}", "run=r", "--lineage"]) == 0
    out = capsys.readouterr().out
    cpt_hash = json.loads((tmp_path / "r" / "cpt" / "lineage.json").read_text())["output"]["sha256"]
    assert out.index("prepare:") < out.index("cpt:") < out.index("anneal:")
    assert f"cpt: code {'a' * 12}, image host Python (no container)" in out
    assert "data      ffffffffffff (tokenizer tttttttttttt; sources: court-opinions, slimpajama)" in out
    assert f"output    final/ {cpt_hash[:12]} (2 files, step 60, loss 2.5000)" in out
    assert "anneal: finished, but its rank 0 wrote no lineage.json" in out  # make_stage's ledger says done
    ledger.append(tmp_path / "r" / "anneal" / "ledger.jsonl", {"event": "attempt_start", "attempt": 2})
    ledger.append(tmp_path / "r" / "anneal" / "ledger.jsonl", {"event": "attempt_end", "attempt": 2, "exit_code": 75})
    assert status.main([f"runs_root={tmp_path}", "run=r", "--lineage"]) == 0
    assert "anneal: not finished (no lineage.json yet)" in capsys.readouterr().out
    assert status.main([f"runs_root={tmp_path}", "--lineage"]) == 2
    assert "--lineage shows one run's chain: add run=NAME" in capsys.readouterr().err


def test_a_final_identical_to_the_model_it_started_from_is_flagged(tmp_path, capsys):
    write_dataset(tmp_path)
    cpt_cfg, cpt = make_stage(tmp_path, "cpt")
    lineage.record_stage(cpt_cfg, cpt, {"exit_code": 0}, is_rank0=lambda: True)
    cfg, ift = make_stage(tmp_path, "ift", "model.init_from_stage=cpt")  # the same weights as cpt's final/
    record = json.loads(lineage.record_stage(cfg, ift, {"exit_code": 0}, is_rank0=lambda: True).read_text())
    assert len(record["warnings"]) == 1 and "byte-identical to cpt/final" in record["warnings"][0]
    assert "warning: final/ of ift is byte-identical to cpt/final" in capsys.readouterr().err
    assert status.main([f"runs_root={tmp_path}", "run=r", "--lineage"]) == 0
    assert "  WARNING   final/ of ift is byte-identical" in capsys.readouterr().out
    anneal_cfg, anneal = make_stage(tmp_path, "anneal", "model.init_from_stage=cpt", final_bytes=b"trained")
    assert lineage.stage_record(anneal_cfg, anneal)["warnings"] == []
