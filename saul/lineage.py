"""Lineage: what every finished stage of a run was made from and what it made, one file per stage.

    runs/<run>/<stage>/lineage.json    written by rank 0 when the stage ends done (one writer per file)

Each record holds, for the chain from raw data to evaluation results:
    data        the packed dataset's fingerprint, its tokenizer's hash and the raw sources (prepare,
                cpt, anneal), or the instruction / preference files with their sha256 (ift, dpo)
    code        the revision the ranks ran (saul/provenance.py, from the last attempt_start)
    image       the container image path and build stamp (idem)
    config      sha256 of the resolved config (config.yaml) and the hyperparameters that shaped it
    started_from  the checkpoint the stage loaded: a stage's final/ (with that final's hash), a
                model directory (hashed), or random init (model preset + seed)
    output      the hash of final/ (every file but the model card, in name order), the dataset
                fingerprint (prepare) or results.json's hash and scores (eval)
    energy      kWh, GPU-hours, node-hours and CO2eq of the stage's attempts so far (our meters)

`record_stage(cfg, rundir, result)` is the one call at a stage's end (saul/stage_entry.py); it also
writes the model card of every final/ it touches (saul/model_card.py). `jobs/status.py run=R
--lineage` prints the chain (`chain`, `describe`). Torch-free: the login side reads it.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from saul.config.schema import PIPELINE_ORDER
from saul.data.atomic import write_json_atomic
from saul.resilience import ledger
from saul.rundir import RunDir

LINEAGE_FILE = "lineage.json"
CARD_FILE = "README.md"  # the model card inside final/: left out of final/'s hash, it is rewritten after evals
MODEL_STAGES = ("cpt", "anneal", "ift", "dpo")  # stages whose output is a final/ model
_BLOCK = 1 << 24


# ---------------------------------------------------------------- hashes
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_hash(root: Path, skip: Iterable[str] = (CARD_FILE,)) -> Optional[dict]:
    """{"sha256", "files", "bytes"} of every file under `root` (name order; `skip` top-level names left out):
    sha256 over "relative path, size, file sha256" lines. Minutes for a 281 GB final/, once per stage."""
    root = Path(root)
    if not root.is_dir():
        return None
    skipped = set(skip)
    lines, total, count = [], 0, 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in skipped:
            continue
        size = path.stat().st_size
        lines.append(f"{rel}\t{size}\t{file_sha256(path)}\n")
        total, count = total + size, count + 1
    return {"sha256": hashlib.sha256("".join(lines).encode()).hexdigest(), "files": count, "bytes": total}


def config_hash(config: dict) -> str:
    """sha256 of the resolved config (canonical JSON), without the keys that only say how it was submitted."""
    kept = {k: v for k, v in config.items() if k not in ("dry_run", "follow")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- reading
def lineage_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / LINEAGE_FILE


def read(stage_dir: Path) -> Optional[dict]:
    try:
        record = json.loads(lineage_path(stage_dir).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def stage_names(run_root: Path) -> List[str]:
    """The run's stage directories, in pipeline order (unknown names last)."""
    run_root = Path(run_root)
    if not run_root.is_dir():
        return []
    names = [p.name for p in run_root.iterdir() if (p / "config.yaml").is_file() or (p / LINEAGE_FILE).is_file()]
    order = {s: i for i, s in enumerate(PIPELINE_ORDER)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def chain(run_root: Path) -> List[dict]:
    """Every stage of the run in pipeline order: its lineage record, or {"stage", "missing": why}."""
    out = []
    for name in stage_names(run_root):
        record = read(Path(run_root) / name)
        if record is None:
            ends = [r for r in ledger.read(Path(run_root) / name / "ledger.jsonl") if r.get("event") == "attempt_end"]
            done = bool(ends) and ends[-1].get("exit_code") == 0
            record = {"stage": name, "missing": "finished, but its rank 0 wrote no lineage.json (see the warning in its "
                                                "rank 0 log)" if done else "not finished (no lineage.json yet)"}
        out.append(record)
    return out


# ---------------------------------------------------------------- what a stage was made from
def _to_dict(cfg) -> dict:
    if isinstance(cfg, dict):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def _data_dir(config: dict, rundir: RunDir) -> Path:
    path = (config.get("data") or {}).get("path")
    return Path(path) if path else rundir.default_data


def dataset_record(data_dir: Path) -> Optional[dict]:
    """Fingerprint, tokenizer hash, sources and the filter funnel of a packed dataset (its manifest)."""
    try:
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    meta = manifest.get("metadata") or {}
    inputs = meta.get("inputs") or {}
    return {
        "path": str(Path(data_dir).absolute()), "fingerprint": manifest.get("fingerprint"),
        "tokenizer_sha256": manifest.get("tokenizer_fingerprint"), "vocab_size": manifest.get("vocab_size"),
        "seq_len": manifest.get("seq_len"), "num_samples": manifest.get("num_samples"),
        "tokens": manifest.get("packed_tokens") or manifest.get("total_tokens"),
        "sources": inputs.get("sources") or [{"name": inputs.get("source", "synthetic"),
                                              "documents": inputs.get("num_documents")}],
        "source_tokens": meta.get("source_tokens"), "removed_by_reason": meta.get("removed_by_reason"),
        "funnel": meta.get("steps"), "audit": str(Path(data_dir) / meta["audit"]) if meta.get("audit") else None,
    }


def files_record(paths: Iterable[str], demo: str) -> dict:
    """Instruction / preference data: each file with its sha256, or the generated demo set."""
    files = [{"path": str(Path(p).absolute()), "sha256": file_sha256(Path(p))} for p in paths if Path(p).is_file()]
    return {"files": files} if files else {"demo": demo}


def stage_data(config: dict, rundir: RunDir) -> Optional[dict]:
    stage = rundir.stage
    if stage in ("prepare", "cpt", "anneal"):
        return dataset_record(_data_dir(config, rundir))
    if stage == "ift":
        ift = config.get("ift") or {}
        return files_record(ift.get("data") or [], f"{ift.get('demo_conversations')} generated conversations")
    if stage == "dpo":
        dpo = config.get("dpo") or {}
        return files_record(dpo.get("data") or [], f"{dpo.get('demo_pairs')} generated preference pairs")
    if stage == "eval":
        ev = config.get("eval") or {}
        return {"tasks": list(ev.get("tasks") or []), "mmlu_dir": ev.get("mmlu_dir") or None,
                "mmlu_subjects": list(ev.get("mmlu_subjects") or []) if ev.get("mmlu_dir") else []}
    return None


def model_hash(path: Path) -> Optional[dict]:
    """A final/'s hash from its stage's lineage when that stage recorded one, else computed now."""
    path = Path(path)
    if path.name == "final":
        recorded = (read(path.parent) or {}).get("output") or {}
        if recorded.get("path") == str(path.absolute()) and recorded.get("sha256"):
            return {k: recorded[k] for k in ("sha256", "files", "bytes") if k in recorded}
    return directory_hash(path)


def started_from(config: dict, rundir: RunDir) -> Optional[dict]:
    model = config.get("model") or {}
    if rundir.stage not in MODEL_STAGES:
        return None
    if model.get("init_from_stage"):
        final = rundir.run_root / model["init_from_stage"] / "final"
        return {"stage": model["init_from_stage"], "path": str(final), **(model_hash(final) or {})}
    if model.get("path"):
        return {"path": str(Path(model["path"]).absolute()), **(model_hash(Path(model["path"])) or {})}
    return {"random_init": True, "model": model.get("name"), "seed": config.get("seed")}


def hyperparameters(config: dict, records: List[dict]) -> dict:
    optim, train = config.get("optim") or {}, config.get("train") or {}
    starts = [r for r in records if r.get("event") == "attempt_start"]
    world = starts[-1].get("world_size") if starts else None
    out = {"optim": {k: optim.get(k) for k in ("lr", "betas", "weight_decay", "schedule", "warmup_steps",
                                              "schedule_steps", "min_lr_ratio", "grad_clip")},
           "train": {k: train.get(k) for k in ("max_steps", "micro_batch", "grad_accum", "seq_len")},
           "parallel": config.get("parallel"), "world_size": world, "nodes": starts[-1].get("nodes") if starts else None}
    if world and train.get("micro_batch") and train.get("grad_accum"):
        out["global_batch"] = train["micro_batch"] * train["grad_accum"] * world
    stage = config.get("stage")
    if stage in ("ift", "dpo") and isinstance(config.get(stage), dict):
        out[stage] = {k: v for k, v in config[stage].items() if k not in ("data",)}
    return out


def stage_output(config: dict, rundir: RunDir, metrics: List[dict]) -> Optional[dict]:
    stage = rundir.stage
    if stage in MODEL_STAGES:
        final = rundir.root / "final"
        steps = [r for r in metrics if "loss" in r and "event" not in r]
        last = steps[-1] if steps else {}
        return {"kind": "model", "path": str(final.absolute()), **(directory_hash(final) or {"missing": True}),
                "step": last.get("step"), "tokens": last.get("tokens"), "final_loss": last.get("loss")}
    if stage == "prepare":
        data = dataset_record(_data_dir(config, rundir)) or {}
        return {"kind": "dataset", "path": data.get("path"), "fingerprint": data.get("fingerprint")}
    if stage == "eval":
        path = rundir.root / "results.json"
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            return {"kind": "scores", "path": str(path), "missing": True}
        return {"kind": "scores", "path": str(path), "sha256": file_sha256(path), "summary": eval_summary(results)}
    return None


def eval_summary(results: dict) -> Dict[str, dict]:
    """model label -> overall balanced accuracy and MMLU accuracies, from results.json."""
    out = {}
    for label in results.get("models", []):
        res = (results.get("results") or {}).get(label) or {}
        overall = (res.get("overall") or {}).get("balanced_accuracy")
        mmlu = {s: v.get("accuracy") for s, v in (res.get("mmlu") or {}).items() if isinstance(v, dict)}
        out[label] = {"path": res.get("path"), "balanced_accuracy": overall, "mmlu": mmlu}
    return out


def evaluated_models(config: dict, rundir: RunDir) -> List[dict]:
    """What an eval compared: label, directory and its hash (stage finals take their stage's recorded hash)."""
    try:
        results = json.loads((rundir.root / "results.json").read_text())
    except (OSError, ValueError):
        return []
    out = []
    for label in results.get("models", []):
        path = Path(((results.get("results") or {}).get(label) or {}).get("path") or "")
        out.append({"label": label, "path": str(path), **(model_hash(path) or {})})
    return out


def stage_energy(stage_dir: Path) -> Optional[dict]:
    """kWh, GPU-hours, node-hours and CO2eq of every attempt metered so far (monitoring.campaign)."""
    try:
        from monitoring.campaign import collect_stage

        rows = collect_stage(Path(stage_dir)).rows
    except Exception as exc:  # a broken power file must not cost the lineage record
        return {"note": f"energy unavailable: {type(exc).__name__}: {exc}"[:300]}
    known = [r.energy_j for r in rows if r.energy_j is not None]
    joules = sum(known) if known else None
    country = next((r.country for r in rows if r.country), "")
    out = {"kwh": None if joules is None else joules / 3.6e6, "joules": joules,
           "gpu_hours": sum(r.gpu_hours for r in rows), "node_hours": sum(r.node_hours for r in rows),
           "estimated": any(r.estimated for r in rows), "country": country or None, "attempts": len(rows),
           "sources": sorted({r.source for r in rows if r.source}), "at": time.time()}
    if joules is not None and country:
        try:
            from monitoring.co2 import co2_kg

            out["co2_kg"] = co2_kg(joules / 3.6e6, country)
        except Exception as exc:  # an unknown country code: say so, keep the kWh
            out["co2_note"] = str(exc)[:200]
    return out


def stage_record(cfg, rundir: RunDir, result: Optional[dict] = None) -> dict:
    config = _to_dict(cfg)
    records = ledger.read(rundir.ledger)
    starts = [r for r in records if r.get("event") == "attempt_start"]
    ends = [r for r in records if r.get("event") == "attempt_end"]
    record = {
        "run": rundir.run, "stage": rundir.stage, "recorded_at": time.time(),
        "attempts": len(starts), "job_id": (ends[-1] if ends else {}).get("job_id"),
        "exit_code": (result or {}).get("exit_code", (ends[-1] if ends else {}).get("exit_code")),
        "code": starts[-1].get("code") if starts else None, "image": starts[-1].get("image") if starts else None,
        "config": {"path": str(rundir.config), "sha256": config_hash(config),
                   "model": (config.get("model") or {}).get("name"), "site": (config.get("site") or {}).get("name")},
        "hyperparameters": hyperparameters(config, records) if rundir.stage in MODEL_STAGES else None,
        "data": stage_data(config, rundir),
        "started_from": started_from(config, rundir),
        "output": stage_output(config, rundir, ledger.read(rundir.metrics)),
        "energy": stage_energy(rundir.root),
    }
    if rundir.stage == "eval":
        record["models"] = evaluated_models(config, rundir)
    record["warnings"] = inconsistencies(record)
    return record


def inconsistencies(record: dict) -> List[str]:
    """What the hashes say cannot be right: a trained final/ byte-identical to the model it started from
    means its training changed nothing, or the export put the starting weights back."""
    src, out = record.get("started_from") or {}, record.get("output") or {}
    if src.get("sha256") and src.get("sha256") == out.get("sha256"):
        where = f"{src['stage']}/final" if src.get("stage") else src.get("path")
        return [f"final/ of {record['stage']} is byte-identical to {where}, the model it started from "
                f"(sha256 {src['sha256'][:12]}): its training left no trace in the exported weights"]
    return []


# ---------------------------------------------------------------- the one call at a stage's end
def _is_rank0() -> bool:
    from saul.train.distributed import rank_info

    return rank_info().rank == 0


def record_stage(cfg, rundir: RunDir, result: dict, is_rank0=None) -> Optional[Path]:
    """Rank 0, stage done: write <stage>/lineage.json and the model card of every final/ this stage
    made or evaluated. Never turns a finished stage into a failure: a problem is one warning line."""
    if int(result.get("exit_code", 1)) != 0 or not (is_rank0 or _is_rank0)():
        return None
    try:
        record = stage_record(cfg, rundir, result)
        path = write_json_atomic(lineage_path(rundir.root), record)
        for warning in record["warnings"]:
            sys.stderr.write(f"warning: {warning}\n")
        from saul import model_card

        if rundir.stage in MODEL_STAGES and (rundir.root / "final").is_dir():
            model_card.write_card(rundir.run_root, rundir.stage)
        elif rundir.stage == "eval":
            for model in record.get("models", []):
                final = Path(model["path"])
                if final.name == "final" and final.parent.parent == rundir.run_root and final.is_dir():
                    model_card.write_card(rundir.run_root, final.parent.name)
        return path
    except Exception as exc:
        sys.stderr.write(f"warning: lineage of stage {rundir.stage} not recorded: {type(exc).__name__}: {exc}\n")
        return None


# ---------------------------------------------------------------- the chain as text (jobs/status.py --lineage)
def _short(value: Optional[str], n: int = 12) -> str:
    return value[:n] if isinstance(value, str) and value else "-"


def _energy_text(energy: Optional[dict]) -> str:
    if not energy or energy.get("joules") is None:
        return (energy or {}).get("note", "not metered")
    from monitoring.units import format_co2, format_energy

    text = f"{format_energy(energy['joules'])}, {energy.get('gpu_hours', 0):.2f} GPU-h, {energy.get('node_hours', 0):.3f} node-h"
    if energy.get("co2_kg") is not None:
        text += f", {format_co2(energy['co2_kg'])} CO2eq ({energy.get('country')})"
    return text + (" (estimated)" if energy.get("estimated") else "")


def describe(records: List[dict], live_energy: Optional[Dict[str, dict]] = None) -> str:
    """The chain from raw data to evaluation results, one block per stage."""
    lines = []
    for r in records:
        stage = r["stage"]
        if r.get("missing"):
            lines.append(f"{stage}: {r['missing']}")
            continue
        code = r.get("code") or {}
        revision = _short(code.get("revision")) + ("+dirty" if code.get("dirty") else "")
        image = (r.get("image") or {}).get("path") or "host Python (no container)"
        lines.append(f"{stage}: code {revision}, image {image}, config {_short(r['config']['sha256'])}")
        data = r.get("data") or {}
        if data.get("fingerprint"):
            names = ", ".join(str(s.get("name") or s.get("root")) for s in data.get("sources") or [])
            lines.append(f"  data      {_short(data['fingerprint'])} (tokenizer {_short(data.get('tokenizer_sha256'))}; "
                         f"sources: {names or '-'})")
        elif data.get("files") or data.get("demo"):
            files = ", ".join(f"{Path(f['path']).name} {_short(f['sha256'])}" for f in data.get("files", []))
            lines.append(f"  data      {files or data['demo']}")
        elif data.get("tasks") or data.get("mmlu_dir"):
            tasks = ", ".join(Path(t).name for t in data.get("tasks", []))
            lines.append(f"  tasks     {tasks or '-'}" + (f"; MMLU {', '.join(data['mmlu_subjects'])}" if data.get("mmlu_dir") else ""))
        src = r.get("started_from")
        if src:
            if src.get("random_init"):
                lines.append(f"  from      random init of {src.get('model')} (seed {src.get('seed')})")
            else:
                where = f"{src['stage']}/final" if src.get("stage") else src.get("path")
                lines.append(f"  from      {where} {_short(src.get('sha256'))}")
        for model in r.get("models", []):
            lines.append(f"  evaluated {model['label']}: {model['path']} {_short(model.get('sha256'))}")
        out = r.get("output") or {}
        if out.get("kind") == "model":
            loss = out.get("final_loss")
            lines.append(f"  output    final/ {_short(out.get('sha256'))} ({out.get('files')} files, step {out.get('step')}, "
                         f"loss {'-' if loss is None else f'{loss:.4f}'})")
        elif out.get("kind") == "dataset":
            lines.append(f"  output    dataset {_short(out.get('fingerprint'))} at {out.get('path')}")
        elif out.get("kind") == "scores":
            scores = "; ".join(f"{label} {100 * s['balanced_accuracy']:.1f}%" for label, s in (out.get("summary") or {}).items()
                               if s.get("balanced_accuracy") is not None)
            lines.append(f"  output    results.json {_short(out.get('sha256'))}" + (f" (balanced accuracy: {scores})" if scores else ""))
        energy = (live_energy or {}).get(stage, r.get("energy"))
        lines.append(f"  energy    {_energy_text(energy)}")
        lines += [f"  WARNING   {w}" for w in r.get("warnings", [])]
    return "\n".join(lines) + "\n"


def live_energies(run_root: Path, stages: Iterable[str]) -> Dict[str, dict]:
    """Energy recomputed now from the power files (a record's figure stops at its stage's end)."""
    return {s: e for s in stages if (e := stage_energy(Path(run_root) / s)) is not None}

