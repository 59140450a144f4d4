"""The model card of a stage's final/: README.md in the Hugging Face style, from the run's lineage.

    ---                       YAML front matter (what the Hub indexes)
    license, library_name, pipeline_tag, tags, base_model (when the chain starts from a published
    Mixtral), datasets (the raw sources' names), model-index (evaluation results, when there are some)
    ---
    # <run> / <stage>
    base model; the stages that made it (started from, steps, learning rate and schedule, global batch,
    tokens, final loss); data sources and filter statistics from the data audit; evaluation results;
    energy and CO2eq per stage and in total; the hashes that tie it together (saul/lineage.py)

Written by `saul.lineage.record_stage` when a training stage ends, and again for every final/ an eval
scored, so the card carries the newest results. Left out of final/'s hash. Torch-free.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import yaml

from saul import lineage
from saul.data.atomic import write_text_atomic

# Model presets whose random init is never used for real: their published weights are the base model.
PUBLISHED_BASE = {"mixtral-8x7b": "mistralai/Mixtral-8x7B-v0.1", "mixtral-8x22b": "mistralai/Mixtral-8x22B-v0.1"}
LICENSE = "apache-2.0"  # Mixtral's, which models trained from it keep


def ancestry(run_root: Path, stage: str) -> List[dict]:
    """The lineage records from the run's data preparation to `stage`, oldest first, following started_from."""
    run_root = Path(run_root)
    records: List[dict] = []
    name: Optional[str] = stage
    while name and name not in [r["stage"] for r in records]:
        record = lineage.read(run_root / name)
        if record is None:
            break
        records.insert(0, record)
        name = (record.get("started_from") or {}).get("stage")
    fingerprints = {(r.get("data") or {}).get("fingerprint") for r in records}
    prepare = lineage.read(run_root / "prepare")
    if prepare and (prepare.get("output") or {}).get("fingerprint") in fingerprints:
        records.insert(0, prepare)
    return records


def _dataset(records: List[dict]) -> dict:
    return next(((r.get("data") or {}) for r in records if (r.get("data") or {}).get("fingerprint")), {})


def _base_model(records: List[dict]) -> tuple:
    """(Hub id or None, sentence) for where the chain's weights came from."""
    first = next((r for r in records if r.get("started_from")), None)
    if first is None:
        return None, "unknown (no lineage of the first training stage)"
    src = first["started_from"]
    if src.get("random_init"):
        hub = PUBLISHED_BASE.get(src.get("model"))
        return hub, f"random init of the `{src.get('model')}` preset (seed {src.get('seed')})"
    return None, f"`{src.get('path')}` (sha256 {str(src.get('sha256'))[:16]})"


def _eval_results(run_root: Path, final: Path) -> Optional[dict]:
    """This final/'s scores in the run's results.json: {"label", "res", "run_results"}."""
    try:
        results = json.loads((Path(run_root) / "eval" / "results.json").read_text())
    except (OSError, ValueError):
        return None
    for label in results.get("models", []):
        res = results["results"][label]
        if Path(res.get("path", "")).absolute() == final.absolute():
            return {"label": label, "res": res, "all": results}
    return None


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _energy(e: Optional[dict]) -> tuple:
    from monitoring.units import format_co2, format_energy

    if not e or e.get("joules") is None:
        return "-", "-", "-"
    return format_energy(e["joules"]), f"{e.get('gpu_hours', 0):.2f}", format_co2(e.get("co2_kg"))


def front_matter(run: str, stage: str, records: List[dict], scores: Optional[dict]) -> dict:
    hub, _ = _base_model(records)
    data = _dataset(records)
    meta = {"license": LICENSE, "library_name": "transformers", "pipeline_tag": "text-generation",
            "language": ["en"], "tags": ["legal", "mixtral", "moe", "saul-hpc"] + [r["stage"] for r in records
                                                                                 if r["stage"] in lineage.MODEL_STAGES]}
    if hub:
        meta["base_model"] = hub
    names = [str(s.get("name") or s.get("root")) for s in data.get("sources") or [] if s.get("name") or s.get("root")]
    if names:
        meta["datasets"] = names
    if scores:
        res = scores["res"]
        metrics = []
        if (res.get("overall") or {}).get("balanced_accuracy") is not None:
            metrics.append({"type": "balanced_accuracy", "name": "LegalBench balanced accuracy (overall)",
                            "value": round(100 * res["overall"]["balanced_accuracy"], 2)})
        for subject, s in (res.get("mmlu") or {}).items():
            metrics.append({"type": "accuracy", "name": f"MMLU {subject}", "value": round(100 * s["accuracy"], 2)})
        if metrics:
            meta["model-index"] = [{"name": f"{run}-{stage}", "results": [
                {"task": {"type": "text-generation"}, "dataset": {"name": "LegalBench / MMLU legal", "type": "legal"},
                 "metrics": metrics}]}]
    return meta


def render(run_root: Path, stage: str) -> str:
    run_root = Path(run_root)
    records = ancestry(run_root, stage)
    final = run_root / stage / "final"
    scores = _eval_results(run_root, final)
    meta = front_matter(run_root.name, stage, records, scores)
    _, base_sentence = _base_model(records)
    me = next((r for r in records if r["stage"] == stage), {})
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# {run_root.name} / {stage}", "",
             f"A Mixtral-family mixture-of-experts model adapted to legal text with saul-hpc, stage `{stage}` of run "
             f"`{run_root.name}` (final/ sha256 `{str((me.get('output') or {}).get('sha256'))[:16]}`).", "",
             f"**Base model:** {base_sentence}.", "", "## Stages and hyperparameters", "",
             "| stage | started from | steps | lr (schedule) | global batch | tokens | final loss |",
             "|---|---|---:|---|---:|---:|---:|"]
    for r in records:
        if r["stage"] not in lineage.MODEL_STAGES:
            continue
        hp, out, src = r.get("hyperparameters") or {}, r.get("output") or {}, r.get("started_from") or {}
        optim = hp.get("optim") or {}
        origin = ("random init" if src.get("random_init") else f"{src['stage']}/final" if src.get("stage")
                  else Path(str(src.get("path"))).name)
        loss = out.get("final_loss")
        lines.append(f"| {r['stage']} | {origin} | {out.get('step')} | {optim.get('lr')} ({optim.get('schedule')}) | "
                     f"{hp.get('global_batch', '-')} | {out.get('tokens') or '-'} | "
                     f"{'-' if loss is None else f'{loss:.4f}'} |")
    lines += _data_section(_dataset(records))
    lines += _eval_section(scores)
    lines += ["", "## Energy and CO2", "", "| stage | energy | GPU-hours | CO2eq |", "|---|---:|---:|---:|"]
    total_j, total_gpu, total_co2 = 0.0, 0.0, 0.0
    for r in records:
        e = lineage.stage_energy(run_root / r["stage"]) or r.get("energy") or {}  # now: meters may have run on
        lines.append(f"| {r['stage']} | " + " | ".join(_energy(e)) + " |")
        total_j += e.get("joules") or 0.0
        total_gpu += e.get("gpu_hours") or 0.0
        total_co2 += e.get("co2_kg") or 0.0
    lines.append("| **total** | " + " | ".join(_energy({"joules": total_j, "gpu_hours": total_gpu, "co2_kg": total_co2}))
                 + " |")
    lines += ["", "Measured by one power meter per node (monitoring/meter.py); CO2eq from codecarbon's offline carbon "
              "intensity of the site's country.", "", "## Lineage", ""]
    for r in records:
        code = r.get("code") or {}
        lines.append(f"- `{r['stage']}`: code `{str(code.get('revision'))[:12]}`{' (dirty)' if code.get('dirty') else ''}, "
                     f"config sha256 `{r['config']['sha256'][:16]}`, image `{(r.get('image') or {}).get('path') or 'none'}`")
    lines += ["", f"Full records: `{run_root.name}/<stage>/lineage.json`; `python jobs/status.py run={run_root.name} "
              f"--lineage` prints the chain."]
    return "\n".join(lines) + "\n"


def _data_section(data: dict) -> List[str]:
    if not data:
        return []
    lines = ["", "## Data", "", f"Packed dataset `{str(data.get('fingerprint'))[:16]}`: {data.get('num_samples')} "
             f"sequences of {data.get('seq_len')} tokens, tokenizer `{str(data.get('tokenizer_sha256'))[:16]}` "
             f"({data.get('vocab_size')} tokens).", "", "| source | role | weight | tokens |", "|---|---|---:|---:|"]
    tokens = data.get("source_tokens") or {}
    for s in data.get("sources") or []:
        name = s.get("name") or s.get("root")
        lines.append(f"| {name} | {s.get('role', '-')} | {s.get('weight') if s.get('weight') is not None else '-'} | "
                     f"{tokens.get(name, '-') if isinstance(tokens, dict) else '-'} |")
    removed = data.get("removed_by_reason") or {}
    if removed:
        lines += ["", "Documents removed by the filters (data audit): "
                  + ", ".join(f"{reason} {count}" for reason, count in sorted(removed.items())) + "."]
    if data.get("audit"):
        lines.append(f"Audit trail: `{data['audit']}/report.md`.")
    return lines


def _eval_section(scores: Optional[dict]) -> List[str]:
    if not scores:
        return ["", "## Evaluation", "", "Not evaluated yet (`stage=eval`)."]
    res, label, models = scores["res"], scores["label"], scores["all"]["models"]
    others = ", ".join(m for m in models if m != label) or "no other model"
    lines = ["", "## Evaluation", "", f"As `{label}` in the run's evaluation, next to {others}: "
             "balanced accuracy (%) on LegalBench-format tasks, accuracy (%) on MMLU legal subsets.", "",
             "| task | category | score | parse failures |", "|---|---|---:|---:|"]
    for task, s in (res.get("tasks") or {}).items():
        lines.append(f"| {task} | {s.get('category')} | {_pct(s.get('balanced_accuracy'))} | {s.get('parse_failures')}/{s.get('n')} |")
    for cat, s in (res.get("categories") or {}).items():
        lines.append(f"| **{cat}** | | {_pct(s.get('balanced_accuracy'))} | |")
    if (res.get("overall") or {}).get("balanced_accuracy") is not None:
        lines.append(f"| **overall** | | {_pct(res['overall']['balanced_accuracy'])} | |")
    for subject, s in (res.get("mmlu") or {}).items():
        lines.append(f"| MMLU {subject} | | {_pct(s.get('accuracy'))} | |")
    return lines


def write_card(run_root: Path, stage: str) -> Path:
    """final/README.md of `stage`, atomically."""
    return write_text_atomic(Path(run_root) / stage / "final" / lineage.CARD_FILE, render(run_root, stage))
