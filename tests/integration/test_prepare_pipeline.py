"""The real prepare stage end to end: raw PDFs/HTML/JSONL/Parquet -> audited, packed dataset,
on 1 rank, 2 local ranks and 2 Slurm nodes (the same dataset every time)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import e2e

from saul.config.compose import compose
from saul.config.errors import ConfigError
from saul.config.validate import check_data
from saul.data.dataset import PackedDataset
from saul.data.pipeline import DONE_MARKER, run_prepare
from saul.data.synthetic import generate_corpus
from tests.data_fixtures import LEGALBENCH, raw_corpus  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]


def _overrides(root, extra=(), site="local"):
    ov = ["stage=prepare", "model=tiny-mixtral", f"site={site}",
          f"data.sources=[{{path:{root}/legal}},{{path:{root}/replay,role:replay,weight:0.02}},"
          f"{{path:{root}/math,role:math,weight:0.05}}]"]
    if (root / "legal.arpa").is_file():
        ov.append(f"data.kenlm_model={root}/legal.arpa")
    if LEGALBENCH.is_dir():
        ov.append(f"data.decontaminate=[{LEGALBENCH}]")
    return ov + list(extra)


@pytest.fixture(scope="module")
def one_rank(raw_corpus, tmp_path_factory):
    """runs/real/data made by `jobs/submit.py stage=prepare` on one local rank."""
    root, _ = raw_corpus
    runs = tmp_path_factory.mktemp("runs")
    proc = e2e.submit(*_overrides(root), f"runs_root={runs}", "run=real")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return runs / "real" / "data"


def _fingerprint(data: Path) -> str:
    return json.loads((data / "manifest.json").read_text(encoding="utf-8"))["fingerprint"]


def test_submit_runs_the_real_pipeline_with_its_audit(raw_corpus, one_rank):
    root, planted = raw_corpus
    data = one_rank
    ds = PackedDataset(data)
    ds.verify(full=True)
    meta = ds.manifest["metadata"]
    removed = [json.loads(line) for line in (data / "audit/removed.jsonl").read_text().splitlines()]
    kept = [json.loads(line) for line in (data / "audit/kept.jsonl").read_text().splitlines()]
    assert all(set(r) == {"source", "doc_id", "step", "reason", "detail"} for r in removed)
    assert all({"source", "doc_id", "tokens"} <= set(k) for k in kept)
    by_id = {r["doc_id"]: r for r in removed}
    dump = "dumps/dump.jsonl"
    for dup, first in planted["exact"]:
        assert by_id[dump + dup[len("dump.jsonl"):]]["reason"] == "exact_duplicate"
    near = [by_id.get(dump + d[len("dump.jsonl"):], {}).get("reason") for d, _ in planted["near"]]
    assert near == ["near_duplicate"] * len(planted["near"])  # every planted near pair found
    assert meta["removed_by_reason"]["near_duplicate"] == len(planted["near"])  # and no false positive
    junk = {by_id[dump + j[len("dump.jsonl"):]]["reason"] for j in planted["junk"]}
    assert junk <= {"rule", "repetition", "perplexity"}
    if (root / "legal.arpa").is_file():
        assert "perplexity" in junk  # the keyboard mash is caught by KenLM
    for c in planted["contaminated"]:
        assert by_id[dump + c[len("dump.jsonl"):]]["reason"] == "decontaminated"
    failed = {r["doc_id"].split("/")[-1] for r in removed if r["reason"] == "extraction_failed"}
    assert failed == set(planted["unreadable"])
    shares = {m["source"]: m for m in meta["summary"]["mixture"]}
    assert abs(shares["replay"]["actual_share"] - 0.02) < 0.01 and abs(shares["math"]["actual_share"] - 0.05) < 0.01
    assert sum(meta["source_tokens"].values()) == ds.manifest["total_tokens"]
    assert (data / "audit/funnel.png").stat().st_size > 1000 and "near_dedup" in (data / "audit/report.md").read_text()
    # The manifest carries each step's counters per source, and its CPU seconds.
    steps = meta["steps"]
    assert {"extraction", "cleaning", "exact_dedup", "near_dedup", "mixture"} <= set(steps)
    assert steps["near_dedup"]["legal"]["docs_in"] - steps["near_dedup"]["legal"]["docs_out"] == len(planted["near"])
    assert steps["mixture"]["replay"]["tokens_out"] == shares["replay"]["tokens"]
    assert {"extraction", "cleaning", "minhash_signatures", "tokenization"} <= set(meta["cpu_seconds"])


def test_two_local_ranks_make_the_same_dataset(raw_corpus, one_rank, tmp_path):
    root, _ = raw_corpus
    proc = e2e.submit(*_overrides(root), "nproc=2", f"runs_root={tmp_path}", "run=two")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert _fingerprint(tmp_path / "two" / "data") == _fingerprint(one_rank)


@pytest.mark.slurm
def test_two_slurm_nodes_make_the_same_dataset(slurm_cluster, raw_corpus, one_rank, tmp_path):
    root, _ = raw_corpus
    env = slurm_cluster.client_environ(e2e.env_extra())
    proc = subprocess.run([*e2e.SUBMIT, *_overrides(root, site="local-slurm"), "nodes=2", "follow=true",
                           f"runs_root={tmp_path}", "run=slurm"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = e2e.records(tmp_path / "slurm" / "prepare" / "ledger.jsonl")
    assert any(r["event"] == "attempt_start" and r.get("world_size") == 2 for r in records)
    assert _fingerprint(tmp_path / "slurm" / "data") == _fingerprint(one_rank)


def test_killed_prepare_redoes_only_unfinished_shards(raw_corpus, tmp_path):
    root, _ = raw_corpus
    cfg = compose(_overrides(root, ["data.num_shards=4"]), env={}).cfg
    out = tmp_path / "data"
    # Rank 1 of 2 finishes its shards (1 and 3); rank 0 is "killed" after its first shard.
    assert run_prepare(cfg, out, rank=1, world=2).status == "shards_done"
    calls = []
    stopped = run_prepare(cfg, out, rank=0, world=2, should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert stopped.status == "stopped" and not out.exists()
    work = next(tmp_path.glob(".data.work-*"))
    finished = {p.parent.name: p.stat().st_mtime_ns for p in work.glob(f"*/{DONE_MARKER}")}
    assert "shard-00001" in finished and "shard-00003" in finished and len(finished) < 4
    resumed = run_prepare(cfg, out, rank=0, world=1)
    assert resumed.status == "done" and resumed.shards_run == 4 - len(finished)
    assert not work.exists()  # shards cleaned up once the dataset is in place
    # Same inputs: reused. Same output as one uninterrupted rank.
    before = (out / "manifest.json").stat().st_mtime_ns
    again = run_prepare(cfg, out, rank=0, world=1)
    assert again.shards_run == 0 and again.manifest["fingerprint"] == resumed.manifest["fingerprint"]
    assert (out / "manifest.json").stat().st_mtime_ns == before
    # Another rank count, another shard split: still the same inputs, so the dataset is reused.
    other = compose(_overrides(root, ["data.num_shards=0"]), env={}).cfg
    assert run_prepare(other, out, rank=0, world=2).shards_run == 0
    assert (out / "manifest.json").stat().st_mtime_ns == before
    single = run_prepare(cfg, tmp_path / "single", rank=0, world=1)
    assert single.manifest["fingerprint"] == resumed.manifest["fingerprint"]


def test_changed_inputs_give_a_new_dataset(raw_corpus, tmp_path):
    src, _ = raw_corpus
    root = tmp_path / "raw"
    shutil.copytree(src, root)
    cfg = compose(_overrides(root), env={}).cfg
    first = run_prepare(cfg, tmp_path / "data")
    with open(root / "legal" / "dumps" / "more.jsonl", "w", encoding="utf-8") as f:  # one more legal document
        f.write(json.dumps({"text": generate_corpus(1, 99)[0].text}) + "\n")
    second = run_prepare(cfg, tmp_path / "data")
    assert second.shards_run > 0 and second.manifest["fingerprint"] != first.manifest["fingerprint"]
    kept = (tmp_path / "data" / "audit" / "kept.jsonl").read_text(encoding="utf-8")
    assert '"doc_id": "dumps/more.jsonl#0"' in kept


def test_bad_inputs_give_one_error_line_and_nothing_written(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "jobs/submit.py"), "stage=prepare", "model=tiny-mixtral",
                           "site=local", f"runs_root={tmp_path}", "run=bad",
                           f"data.sources=[{{path:{tmp_path}/nowhere}}]"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "does not exist" in proc.stderr
    assert not (tmp_path / "bad" / "data").exists()


def test_training_refuses_a_foreign_vocabulary(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"seq_len": 8192, "vocab_size": 1000}))
    cfg = compose(["stage=cpt", "model=mixtral-8x7b", "site=local", f"data.path={data}"], env={}).cfg
    with pytest.raises(ConfigError, match="vocabulary of 1000 tokens but model mixtral-8x7b has 32000"):
        check_data(cfg, None)
