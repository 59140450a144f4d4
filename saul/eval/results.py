"""What an eval leaves in `runs/<run>/eval/`:

    done/<model>/<task>.json      one file per finished (model, task): its scores. Written last, so
                                  its presence means "finished"; a resumed eval skips these units.
    predictions/<task>.jsonl      per example: model, index, answer (gold), prediction (parsed;
                                  null = parse failure), output (raw; for MMLU the choices'
                                  log-likelihoods); every evaluated model's rows, model by model
    results.json                  per model: tasks, categories, overall, MMLU accuracies
    report.md                     the Markdown comparison table (tasks, categories, overall, MMLU)
    comparison.png                the bar chart: categories, overall and MMLU per model

Only rank 0 writes, every file atomically (temp + rename).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from saul.data.atomic import write_json_atomic, write_text_atomic
from saul.eval import scoring
from saul.resilience.ledger import read as read_jsonl


def done_path(root: Path, model: str, task: str) -> Path:
    return root / "done" / model / f"{task}.json"


def read_done(root: Path, model: str, task: str) -> Optional[dict]:
    try:
        return json.loads(done_path(root, model, task).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def mark_done(root: Path, model: str, task: str, score: dict) -> None:
    path = done_path(root, model, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, score)


def write_predictions(root: Path, task: str, model: str, rows: Sequence[dict]) -> Path:
    """Replace this model's rows of predictions/<task>.jsonl, keeping the other models' rows."""
    path = root / "predictions" / f"{task}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = [r for r in read_jsonl(path) if r.get("model") != model]
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in kept + [dict(r, model=model) for r in rows]]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path


def collect(root: Path, models: Sequence[dict], tasks: Sequence[str], subjects: Sequence[str], run: str) -> dict:
    """results.json's content from the done/ files. `models`: [{"label", "path"}] in report order."""
    out: Dict[str, dict] = {}
    for m in models:
        label = m["label"]
        task_scores = {t: read_done(root, label, t) for t in tasks}
        missing = [t for t, s in task_scores.items() if s is None]
        missing += [s for s in subjects if read_done(root, label, f"mmlu_{s}") is None]
        if missing:
            raise RuntimeError(f"model {label}: no result for {', '.join(missing)}")
        entry = {"path": m["path"], "tasks": task_scores, **scoring.summarize(task_scores)}
        entry["mmlu"] = {s: read_done(root, label, f"mmlu_{s}") for s in subjects}
        out[label] = entry
    return {"run": run, "models": [m["label"] for m in models], "results": out}


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(results: dict) -> str:
    models: List[str] = results["models"]
    res = results["results"]
    first = res[models[0]]
    head = "| | " + " | ".join(models) + " |\n|---|" + "---:|" * len(models) + "\n"
    lines = ["# Evaluation of run " + results["run"], "",
             "Balanced accuracy (%) per LegalBench task, macro average per reasoning category and over tasks; "
             "MMLU accuracy (%), 5-shot log-likelihood.", "", head.rstrip("\n")]
    for task, score in first["tasks"].items():
        lines.append(f"| {task} ({score['category']}) | " + " | ".join(_pct(res[m]["tasks"][task]["balanced_accuracy"])
                                                                    for m in models) + " |")
    for cat in first["categories"]:
        lines.append(f"| **{cat}** | " + " | ".join(_pct(res[m]["categories"][cat]["balanced_accuracy"]) for m in models) + " |")
    if first["overall"]:
        lines.append("| **overall** | " + " | ".join(_pct(res[m]["overall"]["balanced_accuracy"]) for m in models) + " |")
    for subject in first["mmlu"]:
        lines.append(f"| MMLU {subject} | " + " | ".join(_pct(res[m]["mmlu"][subject]["accuracy"]) for m in models) + " |")
    if first["tasks"]:
        lines += ["", "Parse failures (outputs holding no valid label), per task:", "", head.rstrip("\n")]
        for task in first["tasks"]:
            lines.append(f"| {task} | " + " | ".join(
                f"{res[m]['tasks'][task]['parse_failures']}/{res[m]['tasks'][task]['n']}" for m in models) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(results: dict, path: Path) -> Optional[Path]:
    """Grouped bars like the paper's Figures 2-4: one group per category (+ overall, MMLU subjects),
    one bar per model."""
    from monitoring.plots import plt, save_figure

    models = results["models"]
    res = results["results"]
    first = res[models[0]]
    groups = [(c, lambda r, c=c: r["categories"][c]["balanced_accuracy"]) for c in first["categories"]]
    if first["overall"]:
        groups.append(("overall", lambda r: r["overall"]["balanced_accuracy"]))
    groups += [(f"MMLU\n{s}", lambda r, s=s: r["mmlu"][s]["accuracy"]) for s in first["mmlu"]]
    if not groups:
        return None
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(models)) ** 0.5), 4.0))
    for i, model in enumerate(models):
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [100 * get(res[model]) for _, get in groups], width, label=model)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([name for name, _ in groups])
    ax.set_ylabel("balanced accuracy / accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"run {results['run']}: LegalBench categories and MMLU legal subsets")
    ax.legend()
    return save_figure(fig, path)


def write_reports(root: Path, results: dict) -> Dict[str, Path]:
    written = {"results": write_json_atomic(root / "results.json", results),
               "table": write_text_atomic(root / "report.md", markdown(results))}
    chart = bar_chart(results, root / "comparison.png")
    if chart:
        written["chart"] = chart
    return written
