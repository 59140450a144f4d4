"""LegalBench-format task folders: tsv variants, prompts, normalization, label parsing, bad inputs."""
from pathlib import Path

import pytest

from saul.eval import legalbench
from saul.eval.fixtures import write_legalbench_task
from saul.eval.legalbench import TaskError, load_task, normalize, parse_label, task_folders

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "legalbench"
needs_shared = pytest.mark.skipif(not (SHARED / "hearsay" / "test.tsv").is_file(),
                                  reason=f"LegalBench sample tasks not at {SHARED} (the project's shared data)")


def write(folder: Path, prompt: str, test: str, train: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base_prompt.txt").write_text(prompt)
    (folder / "test.tsv").write_text(test)
    if train:
        (folder / "train.tsv").write_text(train)
    return folder


@pytest.mark.parametrize("output, labels, expected", [
    ("Yes", ["yes", "no"], "yes"),
    (" No.", ["yes", "no"], "no"),
    ("The answer is: No, because the statement was made in court. Yes, really.", ["yes", "no"], "no"),
    ("YES!! It is hearsay", ["yes", "no"], "yes"),
    ("It is not hearsay", ["yes", "no"], None),  # 'not' is not the label 'no'
    ("Nope", ["yes", "no"], None),
    ("", ["yes", "no"], None),
    ("no action is available", ["no", "no action"], "no action"),  # longest label at the same position
    ("Answer: descriptive mark", ["generic", "descriptive", "suggestive"], "descriptive"),
])
def test_first_valid_label_in_verbose_outputs(output, labels, expected):
    assert parse_label(output, labels) == expected


def test_normalization_is_legalbenchs():
    assert normalize("  Yes. ") == "yes"
    assert normalize("Rule-Conclusion!") == "ruleconclusion"


@pytest.mark.parametrize("label_column", ["answer", "label"])
@pytest.mark.parametrize("with_index", [True, False])
def test_tsv_variants(tmp_path, label_column, with_index):
    folder = write_legalbench_task(tmp_path, "clauses", n_test=5, label_column=label_column, with_index=with_index)
    task = load_task(folder)
    assert len(task.examples) == 5 and len(task.train) == 4
    assert [e.index for e in task.examples] == ([str(100 + i) for i in range(5)] if with_index else ["0", "1", "2", "3", "4"])
    assert {e.answer for e in task.examples} <= {"Yes", "No"}
    assert set(task.labels) <= {"yes", "no"}
    prompt = task.prompt(task.examples[0])
    assert prompt.endswith(f"Clause: {task.examples[0].fields['text']}\nA:") and "{{" not in prompt


def test_few_shot_puts_train_rows_before_the_query(tmp_path):
    task = load_task(write_legalbench_task(tmp_path, "clauses", n_test=3))
    prompt = task.prompt(task.examples[0], few_shot=2)
    head = "Does the clause oblige one party to indemnify the other? Answer Yes or No.\n\n"
    shots = "".join(f"Clause: {ex.fields['text']}\nA: {ex.answer}\n\n" for ex in task.train[:2])
    assert prompt == head + shots + f"Clause: {task.examples[0].fields['text']}\nA:"


@needs_shared
def test_shared_legalbench_tasks_load():
    folders = task_folders([str(SHARED)])
    assert [f.name for f in folders] == ["hearsay", "proa"]
    hearsay = load_task(SHARED / "hearsay")
    assert len(hearsay.examples) == 95 and set(hearsay.labels) == {"yes", "no"}
    assert hearsay.examples[0].index == "0"  # no index column: the row number
    assert '"Real Madrid was the best soccer team in the world."' in hearsay.train[2].fields["text"]  # quotes kept


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("no_test", "has no test.tsv"),
    ("placeholder", "uses placeholder {{facts}} but test.tsv has no such column"),
    ("no_label", "has no gold label column: name it 'answer' or 'label'"),
    ("ragged", "line 3 does not have the header's 2 tab-separated fields"),
    ("duplicate_index", "index 7 appears more than once"),
])
def test_bad_task_folders_say_what_is_wrong(tmp_path, case, message):
    folder = tmp_path / "task"
    if case == "no_test":
        folder.mkdir()
        (folder / "base_prompt.txt").write_text("Q: {{text}}\nA:")
    elif case == "placeholder":
        write(folder, "Q: {{facts}}\nA:", "answer\ttext\nYes\tx\n")
    elif case == "no_label":
        write(folder, "Q: {{text}}\nA:", "gold\ttext\nYes\tx\n")
    elif case == "ragged":
        write(folder, "Q: {{text}}\nA:", "answer\ttext\nYes\tx\nNo\n")
    elif case == "duplicate_index":
        write(folder, "Q: {{text}}\nA:", "index\tanswer\ttext\n7\tYes\tx\n7\tNo\ty\n")
    with pytest.raises(TaskError) as err:
        load_task(folder)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_suite_folder_expands_to_its_tasks(tmp_path):
    write_legalbench_task(tmp_path / "suite", "b_task")
    write_legalbench_task(tmp_path / "suite", "a_task")
    assert [p.name for p in task_folders([str(tmp_path / "suite")])] == ["a_task", "b_task"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match="neither a task folder"):
        task_folders([str(tmp_path / "empty")])
    with pytest.raises(TaskError, match="two task folders are named 'a_task'"):
        task_folders([str(tmp_path / "suite"), str(tmp_path / "suite" / "a_task")])


def test_placeholder_grammar():
    assert legalbench.fill("{{ text }} / {{other}}", {"text": "a", "other": "b"}) == "a / b"
