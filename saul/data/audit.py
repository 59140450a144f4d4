"""The audit trail of a prepare: what was thrown away and why, what was kept, and the funnel.

    <dataset>/audit/removed.jsonl  one line per removed document:
                                   {source, doc_id, step, reason, detail}
    <dataset>/audit/kept.jsonl     one line per kept document: {source, doc_id, tokens, copies}
                                   (tokens = its own tokens x copies in the mix)
    <dataset>/audit/report.md      per step and source: documents, words and tokens in/out, the
                                   mixture's shares, dedup parameters and recall curve
    <dataset>/audit/funnel.png     the funnel as a plot (documents and tokens)
Units: words are whitespace-separated words of the text as the step sees it (raw text into
cleaning, cleaned text after); tokens are the model's tokens (the dataset's own tokenizer) of a
document's CLEANED text plus the EOS the packer appends, for every step, removed documents
included (0 for one without text: unreadable, empty). So token counts fall only where documents
are removed (cleaning's rule/repetition, perplexity, decontamination, dedup, mixture), and what
leaves one step is what enters the next; the mixture's tokens out are the packed tokens.
Reasons: extraction_failed, empty, rule, repetition, perplexity, exact_duplicate,
near_duplicate, decontaminated, mixture. Written inside the dataset's temporary directory, so
they appear atomically with it.
"""
from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence

from saul.data.atomic import write_bytes_atomic, write_text_atomic

REASONS = ("extraction_failed", "empty", "rule", "repetition", "perplexity", "exact_duplicate",
           "near_duplicate", "decontaminated", "mixture")
STEPS = ("extraction", "cleaning", "perplexity", "decontamination", "exact_dedup", "near_dedup",
         "mixture")


def jsonl_bytes(records: Iterable[Mapping]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


def funnel(stats: Iterable[Mapping]) -> Dict[str, Dict[str, Dict[str, int]]]:
    """step -> source -> {docs_in, docs_out, words_in, words_out, tokens_in, tokens_out}, summed
    over pieces (units: the module's docstring)."""
    out: Dict[str, Dict[str, Dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for row in stats:
        cell = out[row["step"]][row["source"]]
        for key in ("docs_in", "docs_out", "words_in", "words_out"):
            cell[key] += int(row.get(key, 0))
        for key in ("tokens_in", "tokens_out"):
            if key in row:
                cell[key] += int(row[key])
    return {step: {src: dict(v) for src, v in by_src.items()} for step, by_src in out.items()}


def _plot(table: Mapping[str, Mapping[str, Mapping[str, int]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s in STEPS if s in table]
    sources = sorted({src for s in steps for src in table[s]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, unit in zip(axes, ("docs", "tokens")):
        bottom = [0] * (len(steps) + 1)
        labels = ["input"] + steps
        for src in sources:
            first = table[steps[0]].get(src, {}).get(f"{unit}_in", 0) if steps else 0
            values = [first] + [table[s].get(src, {}).get(f"{unit}_out", 0) for s in steps]
            ax.bar(labels, values, bottom=bottom, label=src)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_title(f"{unit} left after each step")
        ax.tick_params(axis="x", rotation=45)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue(), sync_dir=False)


def write_audit(audit_dir: Path, removed: Sequence[Mapping], kept: Sequence[Mapping],
                stats: Sequence[Mapping], summary: Mapping) -> Dict:
    """Write the four audit files; returns the funnel table (for the manifest)."""
    audit_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(audit_dir / "removed.jsonl", jsonl_bytes(removed), sync_dir=False)
    write_bytes_atomic(audit_dir / "kept.jsonl", jsonl_bytes(kept), sync_dir=False)
    table = funnel(stats)
    _plot(table, audit_dir / "funnel.png")
    write_text_atomic(audit_dir / "report.md", render_report(table, removed, summary), sync_dir=False)
    return table


def render_report(table, removed: Sequence[Mapping], summary: Mapping) -> str:
    lines: List[str] = ["# Data preparation report", "", "![funnel](funnel.png)", "",
                        "## Funnel (documents, words and tokens in -> out, per step and source)", "",
                        "Tokens: the model's tokenizer on each document's cleaned text, + EOS, in every step "
                        "(removed documents included); words: whitespace-separated, raw into cleaning.", "",
                        "| step | source | docs in | docs out | words in | words out | tokens in | tokens out |",
                        "|---|---|---:|---:|---:|---:|---:|---:|"]
    for step in STEPS:
        for src, v in sorted(table.get(step, {}).items()):
            lines.append(f"| {step} | {src} | {v.get('docs_in', 0)} | {v.get('docs_out', 0)} | "
                         f"{v.get('words_in', 0)} | {v.get('words_out', 0)} | {v.get('tokens_in', '-')} | "
                         f"{v.get('tokens_out', '-')} |")
    counts: Dict[str, int] = defaultdict(int)
    for r in removed:
        counts[r["reason"]] += 1
    lines += ["", "## Removed documents by reason (details in removed.jsonl)", "",
              "| reason | documents |", "|---|---:|"]
    lines += [f"| {reason} | {counts.get(reason, 0)} |" for reason in REASONS]
    mix = summary.get("mixture", [])
    if mix:
        lines += ["", "## Mixture (tokens of the model's tokenizer)", "",
                  "| source | requested share | actual share | available tokens | tokens | sampling |",
                  "|---|---:|---:|---:|---:|---:|"]
        for m in mix:
            lines.append(f"| {m['source']} | {m['requested_share']:.2%} | {m['actual_share']:.2%} | "
                         f"{m['available_tokens']} | {m['tokens']} | x{m['sampling_factor']:.3f} |")
    dedup = summary.get("dedup")
    if dedup:
        lines += ["", f"## Near-dedup: MinHash {dedup['num_perm']} permutations, word {dedup['ngram']}-grams, "
                  f"{dedup['bands']} bands x {dedup['rows']} rows", "",
                  "| Jaccard | P(candidate pair) | P(removed: signatures agree >= 50 %) |", "|---:|---:|---:|"]
        lines += [f"| {j:.1f} | {p:.3f} | {q:.3f} |" for j, p, q in dedup["recall_curve"]]
    for key in ("tokenizer", "perplexity", "decontamination"):
        if summary.get(key):
            lines += ["", f"## {key.capitalize()}", "", "```", json.dumps(summary[key], indent=2), "```"]
    return "\n".join(lines) + "\n"
