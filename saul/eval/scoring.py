"""Scores: balanced accuracy per task, macro averages per reasoning category and overall, MMLU accuracy.

Balanced accuracy is scikit-learn's `balanced_accuracy_score` on normalized labels, as
LegalBench computes it: the mean recall over the gold classes, so a model answering "Yes" to
everything scores 0.5 on a binary task whatever the class balance. A parse failure is an empty
prediction: it matches no gold class and counts wrong.

Categories are the five reasoning types the SaulLM papers report (issue, rule, conclusion,
interpretation, rhetoric), from LegalBench's task -> type assignment, written here as name
patterns; `eval.categories` overrides or extends it per task. A task in none is "other".
"""
from __future__ import annotations

import fnmatch
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

CATEGORIES = ("issue", "rule", "conclusion", "interpretation", "rhetoric")
OTHER = "other"

# LegalBench's assignment of its 162 tasks, as patterns (families share a prefix).
CATEGORY_PATTERNS: Dict[str, Sequence[str]] = {
    "issue": ("corporate_lobbying", "learned_hands_*"),
    "rule": ("rule_qa", "international_citizenship_questions", "nys_judicial_ethics", "citation_prediction_*"),
    "conclusion": ("abercrombie", "diversity_[1-6]", "hearsay", "personal_jurisdiction", "successor_liability",
                   "telemarketing_sales_rule", "ucc_v_common_law"),
    "interpretation": ("consumer_contracts_qa", "contract_nli_*", "contract_qa", "cuad_*", "insurance_policy_interpretation",
                       "jcrew_blocker", "maud_*", "opp115_*", "privacy_policy_entailment", "privacy_policy_qa", "proa",
                       "ssla_*", "sara_entailment", "sara_numeric", "supply_chain_disclosure_*", "unfair_tos"),
    "rhetoric": ("canada_tax_court_outcomes", "definition_classification", "definition_extraction",
                 "function_of_decision_section", "legal_reasoning_causality", "oral_argument_question_purpose",
                 "overruling", "scalr", "textualism_tool_*"),
}


def category_of(task: str, overrides: Optional[Mapping[str, str]] = None) -> str:
    if overrides and task in overrides:
        return overrides[task]
    for category, patterns in CATEGORY_PATTERNS.items():
        if any(fnmatch.fnmatchcase(task, p) for p in patterns):
            return category
    return OTHER


def balanced_accuracy(gold: Sequence[str], predicted: Sequence[Optional[str]]) -> float:
    """scikit-learn's balanced accuracy; None (parse failure) becomes '' and counts wrong."""
    from sklearn.metrics import balanced_accuracy_score

    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    if not gold:
        raise ValueError("balanced accuracy of an empty task")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": parse failures do
        return float(balanced_accuracy_score(list(gold), ["" if p is None else p for p in predicted]))


def task_score(task: str, gold: Sequence[str], predicted: Sequence[Optional[str]], category: str) -> dict:
    failures = sum(p is None for p in predicted)
    return {"balanced_accuracy": balanced_accuracy(gold, predicted), "n": len(gold), "parse_failures": failures,
            "parse_failure_rate": failures / len(gold), "category": category}


def summarize(tasks: Mapping[str, dict]) -> dict:
    """Per category: the macro average of its tasks' balanced accuracies; overall: the macro
    average over tasks (every task weighs the same, whatever its size)."""
    by_category: Dict[str, List[float]] = {}
    for score in tasks.values():
        by_category.setdefault(score["category"], []).append(score["balanced_accuracy"])
    order = [c for c in CATEGORIES if c in by_category] + sorted(set(by_category) - set(CATEGORIES))
    categories = {c: {"balanced_accuracy": sum(v) / len(v), "tasks": len(v)} for c in order for v in [by_category[c]]}
    values = [s["balanced_accuracy"] for s in tasks.values()]
    overall = {"balanced_accuracy": sum(values) / len(values), "tasks": len(values)} if values else None
    return {"categories": categories, "overall": overall}


def accuracy(gold: Sequence[int], predicted: Sequence[int]) -> float:
    if not gold:
        raise ValueError("accuracy of an empty subject")
    return sum(int(g == p) for g, p in zip(gold, predicted)) / len(gold)
