"""Balanced accuracy on known predictions (worked by hand), categories, MMLU files and prompts."""
import json

import pytest

from saul.config.errors import ConfigError
from saul.eval import mmlu, scoring
from saul.eval.fixtures import write_mmlu


def test_balanced_accuracy_by_hand():
    gold = ["yes", "yes", "yes", "no", "no"]
    # recall(yes) = 2/3, recall(no) = 1/2 -> (2/3 + 1/2) / 2 = 7/12; plain accuracy would say 3/5
    assert scoring.balanced_accuracy(gold, ["yes", "no", "yes", "no", "yes"]) == pytest.approx(7 / 12)
    # answering "yes" to everything is worth 0.5 whatever the class balance
    assert scoring.balanced_accuracy(gold, ["yes"] * 5) == pytest.approx(0.5)


def test_parse_failures_count_wrong_and_are_reported():
    gold = ["yes", "no", "no", "no"]
    predicted = ["yes", None, "no", None]  # recall(yes) = 1, recall(no) = 1/3
    score = scoring.task_score("hearsay", gold, predicted, "conclusion")
    assert score["balanced_accuracy"] == pytest.approx((1 + 1 / 3) / 2)
    assert (score["n"], score["parse_failures"], score["parse_failure_rate"]) == (4, 2, 0.5)


def test_categories_are_macro_averages_and_overall_is_over_tasks():
    tasks = {
        "hearsay": {"balanced_accuracy": 0.9, "category": scoring.category_of("hearsay")},
        "abercrombie": {"balanced_accuracy": 0.5, "category": scoring.category_of("abercrombie")},
        "proa": {"balanced_accuracy": 0.7, "category": scoring.category_of("proa")},
    }
    summary = scoring.summarize(tasks)
    assert summary["categories"] == {"conclusion": {"balanced_accuracy": pytest.approx(0.7), "tasks": 2},
                                     "interpretation": {"balanced_accuracy": pytest.approx(0.7), "tasks": 1}}
    assert summary["overall"] == {"balanced_accuracy": pytest.approx(0.7), "tasks": 3}


@pytest.mark.parametrize("task, category", [
    ("learned_hands_torts", "issue"), ("citation_prediction_open", "rule"), ("diversity_3", "conclusion"),
    ("cuad_audit_rights", "interpretation"), ("textualism_tool_plain", "rhetoric"), ("my_new_task", "other"),
])
def test_category_table(task, category):
    assert scoring.category_of(task) == category
    assert scoring.category_of(task, {task: "rule"}) == "rule"


def test_mmlu_csv_and_jsonl_read_the_same_questions(tmp_path):
    write_mmlu(tmp_path / "j", ["jurisprudence"], n_dev=5, n_test=4, fmt="jsonl", seed=3)
    write_mmlu(tmp_path / "c", ["jurisprudence"], n_dev=5, n_test=4, fmt="csv", seed=3)
    a = mmlu.load_subject(tmp_path / "j", "jurisprudence", 5)
    b = mmlu.load_subject(tmp_path / "c", "jurisprudence", 5)
    assert a.test == b.test and a.dev == b.dev and len(a.test) == 4
    first = json.loads((tmp_path / "j" / "test" / "jurisprudence_test.jsonl").read_text().splitlines()[0])
    assert a.test[0].choices[a.test[0].answer] == first["choices"][first["answer"]]


def test_mmlu_prompt_is_five_shot_with_answers(tmp_path):
    write_mmlu(tmp_path, ["international_law"], n_dev=5, n_test=2)
    subject = mmlu.load_subject(tmp_path, "international_law", 5)
    prompt = subject.prompt(subject.test[0], 5)
    assert prompt.startswith("The following are multiple choice questions (with answers) about international law.")
    assert prompt.count("\nAnswer:") == 6 and prompt.endswith("D. " + subject.test[0].choices[3] + "\nAnswer:")
    for q in subject.dev:
        assert f"Answer: {mmlu.LETTERS[q.answer]}\n\n" in prompt


def test_mmlu_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        mmlu.load_subject(tmp_path / "nope", "jurisprudence", 5)
    write_mmlu(tmp_path, ["jurisprudence"], n_dev=2, n_test=2)
    with pytest.raises(ConfigError, match="has 2 dev examples but eval.mmlu_shots=5"):
        mmlu.load_subject(tmp_path, "jurisprudence", 5)
    with pytest.raises(ConfigError, match="no dev/professional_law_dev.csv or .jsonl"):
        mmlu.load_subject(tmp_path, "professional_law", 0)
    (tmp_path / "test" / "jurisprudence_test.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    with pytest.raises(ConfigError, match="choices must be a list of 4"):
        mmlu.load_subject(tmp_path, "jurisprudence", 0)
