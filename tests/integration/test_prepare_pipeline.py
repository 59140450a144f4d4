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
from saul.data.extract import files_for, resolve_sources
from saul.data.buckets import band_file
from saul.data.pieces import DONE_MARKER, deal, piece_bytes, piece_dir, plan_pieces
from saul.data.pipeline import run_prepare
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
    _tokens_flow_through_the_funnel(steps, removed, ds.manifest["total_tokens"])


def _tokens_flow_through_the_funnel(steps: dict, removed: list, packed_tokens: int) -> None:
    """Every step counts the model's tokens in and out, per source: what leaves a step enters the
    next one the source goes through, and the mixture's output is what was packed."""
    order = ["extraction", "cleaning", "perplexity", "decontamination", "exact_dedup", "near_dedup", "mixture"]
    for source in steps["extraction"]:
        chain = [steps[s][source] for s in order if source in steps.get(s, {})]
        assert all("tokens_in" in c and "tokens_out" in c for c in chain)
        assert all(a["tokens_out"] == b["tokens_in"] and a["docs_out"] == b["docs_in"] for a, b in zip(chain, chain[1:]))
        for step in order[1:-1]:  # a step that removed documents removed tokens, and only then
            cell = steps.get(step, {}).get(source)
            if cell:
                gone = sum(1 for r in removed if r["step"] == step and r["source"] == source)
                assert cell["docs_in"] - cell["docs_out"] == gone
                assert (cell["tokens_in"] > cell["tokens_out"]) == (gone > 0 and step != "extraction")
    assert sum(steps["mixture"][s]["tokens_out"] for s in steps["mixture"]) == packed_tokens


def _audit(data: Path) -> dict:
    return {name: (data / "audit" / name).read_bytes() for name in ("removed.jsonl", "kept.jsonl", "report.md")}


def _same_output_split_over_two_ranks(data: Path, one_rank: Path) -> None:
    """Small pieces (the dump cut into byte ranges, the Parquet file into row groups) over 2 ranks:
    the dataset and the audit of one rank with one piece per file, and both ranks did pieces and bands."""
    assert _fingerprint(data) == _fingerprint(one_rank)
    assert (data / "shard-00000.bin").read_bytes() == (one_rank / "shard-00000.bin").read_bytes()
    assert _audit(data) == _audit(one_rank)
    meta = json.loads((data / "manifest.json").read_text(encoding="utf-8"))["metadata"]
    assert set(meta["shard_cpu_seconds_by_rank"]) == {"0", "1"}
    assert meta["near_dedup_bands_by_rank"] == {"0": 21, "1": 21}  # 42 bands, half each


SMALL_PIECES = "data.piece_mb=0.01"  # ~10 KB: the 160 KB dump in 17 byte ranges, the Parquet file in row groups


def test_two_local_ranks_make_the_same_dataset(raw_corpus, one_rank, tmp_path):
    root, _ = raw_corpus
    proc = e2e.submit(*_overrides(root, [SMALL_PIECES]), "nproc=2", f"runs_root={tmp_path}", "run=two")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    _same_output_split_over_two_ranks(tmp_path / "two" / "data", one_rank)


@pytest.mark.slurm
def test_two_slurm_nodes_make_the_same_dataset(slurm_cluster, raw_corpus, one_rank, tmp_path):
    root, _ = raw_corpus
    env = slurm_cluster.client_environ(e2e.env_extra())
    proc = subprocess.run([*e2e.SUBMIT, *_overrides(root, [SMALL_PIECES], site="local-slurm"), "nodes=2",
                           "follow=true", f"runs_root={tmp_path}", "run=slurm"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = e2e.records(tmp_path / "slurm" / "prepare" / "ledger.jsonl")
    assert any(r["event"] == "attempt_start" and r.get("world_size") == 2 for r in records)
    _same_output_split_over_two_ranks(tmp_path / "slurm" / "data", one_rank)


def test_killed_prepare_redoes_only_unfinished_work_on_any_rank_count(raw_corpus, one_rank, tmp_path):
    root, _ = raw_corpus
    cfg = compose(_overrides(root, ["data.piece_mb=0.02"]), env={}).cfg
    out = tmp_path / "data"
    other_size = compose(_overrides(root, ["data.piece_mb=0.05"]), env={}).cfg
    assert run_prepare(other_size, out, rank=0, world=1, should_stop=lambda: True).status == "stopped"
    stale = tmp_path / ".data.work-0123456789abcdef"  # an earlier build's, for other inputs
    (stale / "piece-00000").mkdir(parents=True)
    assert len(list(tmp_path.glob(".data.work-*"))) == 2
    # Rank 1 of 2 finishes its pieces, then is stopped while waiting for rank 0's.
    pieces = plan_pieces(files_for(resolve_sources(cfg.data)), piece_bytes(0.02))
    rank1 = deal(pieces, 2)[1]
    assert len(pieces) >= 8 and rank1
    earlier = set(tmp_path.glob(".data.work-*"))

    def rank1_done():
        new = [p for p in tmp_path.glob(".data.work-*") if p not in earlier]
        return bool(new) and all((piece_dir(new[0], i) / DONE_MARKER).is_file() for i in rank1)

    first = run_prepare(cfg, out, rank=1, world=2, should_stop=rank1_done)
    assert first.status == "stopped" and first.shards_run == len(rank1) and first.shards_total == len(pieces)
    work = next(p for p in tmp_path.glob(".data.work-*") if p not in earlier)
    calls = []  # rank 0 of 3 (another rank count) is killed after a few parts
    assert run_prepare(cfg, out, rank=0, world=3,
                       should_stop=lambda: calls.append(1) or len(calls) > 4).status == "stopped"
    assert not out.exists()
    assert list(tmp_path.glob(".data.work-*")) == [work]  # the other inputs' and piece size's are gone
    finished = {int(p.parent.name.split("-")[1]) for p in work.glob(f"*/{DONE_MARKER}")}
    assert len(rank1) < len(finished) < len(pieces)
    # Rank 0 of 2: its unfinished pieces, then its bands (0, 2, ...); stopped waiting for rank 1's bands.
    even = [band_file(work, b) for b in range(0, 42, 2)]
    second = run_prepare(cfg, out, rank=0, world=2, should_stop=lambda: all(f.is_file() for f in even))
    assert second.status == "stopped" and second.shards_run == len(set(deal(pieces, 2)[0]) - finished)
    assert sorted((work / "bands").glob("band-*")) == even
    # One rank finishes: no piece and no band runs twice.
    resumed = run_prepare(cfg, out, rank=0, world=1)
    assert resumed.status == "done" and resumed.shards_run == 0
    assert resumed.manifest["metadata"]["near_dedup_bands_by_rank"] == {"0": 42}
    assert list(tmp_path.glob(".data.work-*")) == []  # nothing stale stays
    assert resumed.manifest["fingerprint"] == _fingerprint(one_rank) and _audit(out) == _audit(one_rank)
    # Same inputs: reused, on any rank count and piece size; a stale work directory still goes.
    before = (out / "manifest.json").stat().st_mtime_ns
    stale.mkdir()
    assert run_prepare(cfg, out, rank=0, world=1).shards_run == 0
    assert not stale.exists()
    assert run_prepare(other_size, out, rank=0, world=2).shards_run == 0
    assert (out / "manifest.json").stat().st_mtime_ns == before


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


def test_perplexity_filter_is_a_per_source_choice(raw_corpus, tmp_path):
    root, planted = raw_corpus
    if not (root / "legal.arpa").is_file():
        pytest.skip("lmplz missing (run scripts/install-kenlm.sh): no KenLM model to filter with")
    sources = (f"data.sources=[{{path:{root}/legal,perplexity:false}},"
               f"{{path:{root}/replay,role:replay,weight:0.02,perplexity:true}},{{path:{root}/math,role:math,weight:0.05}}]")
    cfg = compose([*_overrides(root)[:3], sources, f"data.kenlm_model={root}/legal.arpa"], env={}).cfg
    manifest = run_prepare(cfg, tmp_path / "data").manifest
    removed = [json.loads(line) for line in (tmp_path / "data/audit/removed.jsonl").read_text().splitlines()]
    by_step = {r["doc_id"]: r["reason"] for r in removed if r["reason"] == "perplexity"}
    assert by_step and all(doc_id.startswith("wiki.jsonl#") for doc_id in by_step)  # general text vs a legal LM
    assert set(manifest["metadata"]["steps"]["perplexity"]) == {"replay"}
    assert manifest["metadata"]["summary"]["perplexity"]["sources"] == ["replay"]
    kept = (tmp_path / "data/audit/kept.jsonl").read_text()
    mash = planted["junk"][0]  # the keyboard mash passes the rules; only KenLM catches it, and legal skips it here
    assert f'"doc_id": "dumps/{mash}"' in kept


@pytest.mark.parametrize("setting, message", [
    ("{path:SRC,perplexity:true}", "data.sources[0].perplexity=true but data.kenlm_model is empty"),
    ("{path:SRC,perplexity:maybe}", "perplexity"),
])
def test_bad_perplexity_setting_is_refused_at_submit(raw_corpus, tmp_path, setting, message):
    root, _ = raw_corpus
    proc = subprocess.run([sys.executable, str(REPO / "jobs/submit.py"), "stage=prepare", "model=tiny-mixtral",
                           "site=local", f"runs_root={tmp_path}", "run=bad",
                           f"data.sources=[{setting.replace('SRC', str(root / 'legal'))}]"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not (tmp_path / "bad").exists()


def test_bad_piece_size_is_refused_at_submit(raw_corpus, tmp_path):
    root, _ = raw_corpus
    proc = subprocess.run([sys.executable, str(REPO / "jobs/submit.py"), *_overrides(root, ["data.piece_mb=0"]),
                           f"runs_root={tmp_path}", "run=bad"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data.piece_mb=0.0 is out of range")


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
