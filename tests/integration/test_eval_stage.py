"""stage=eval end to end through jobs/submit.py on 2 local ranks: a stopped eval and (slow) a SIGKILLed eval
resume without redoing finished tasks; bad inputs exit 2, nothing written."""
import json
import os
import signal
import time

import pytest

from saul.eval.fixtures import write_legalbench_task, write_mmlu
from tests.integration import e2e


@pytest.fixture(scope="module")
def eval_inputs(packed_data, tmp_path_factory):
    """A tiny Mixtral saved by our code with the prepared tokenizer, a LegalBench-format task, MMLU files."""
    import torch  # noqa: F401  (the model is built in this process)
    from omegaconf import OmegaConf

    from saul.config.compose import compose
    from saul.eval.generation import materialize_random_init

    root = tmp_path_factory.mktemp("eval-inputs")
    model_cfg = compose(["model=tiny-mixtral", "site=local"]).cfg.model
    model = materialize_random_init(OmegaConf.create(OmegaConf.to_container(model_cfg)), 7, packed_data / "tokenizer",
                                    root / "tiny")
    task = write_legalbench_task(root / "tasks", "indemnity", n_test=10)
    mmlu_dir = write_mmlu(root / "mmlu", ["jurisprudence"], n_dev=5, n_test=6)
    return model, task, mmlu_dir


def args(runs, run, inputs, *extra):
    model, task, mmlu_dir = inputs
    return ["stage=eval", "model=tiny-mixtral", "site=local", f"runs_root={runs}", f"run={run}", "nproc=2",
            f"model.path={model}", f"eval.tasks=[{task}]", f"eval.mmlu_dir={mmlu_dir}",
            "eval.mmlu_subjects=[jurisprudence]", "eval.max_new_tokens=4", "eval.batch_size=4", *extra]


def done_files(stage):
    return {p.relative_to(stage / "done").as_posix(): p.stat().st_mtime_ns for p in (stage / "done").glob("*/*.json")}


def scores(stage):
    res = json.loads((stage / "results.json").read_text())["results"]["tiny"]
    return res["tasks"], res["mmlu"], res["overall"]


def test_a_stopped_eval_resumes_with_the_unfinished_tasks_only(eval_inputs, tmp_path):
    """Clean stop after one task (what a time-limit signal does between tasks): exit 75, then resume."""
    runs = tmp_path / "runs"
    stopped = args(runs, "stop", eval_inputs, "eval.stop_after_tasks=1")
    stage = runs / "stop" / "eval"
    first = e2e.submit(*stopped)
    assert first.returncode == 75, first.stdout + first.stderr
    kept = done_files(stage)
    assert list(kept) == ["tiny/indemnity.json"]
    assert not (stage / "results.json").exists()
    second = e2e.submit(*stopped)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 finished before (tiny/indemnity), kept" in second.stdout
    assert "tiny indemnity" not in second.stdout  # not evaluated again
    assert {k: v for k, v in done_files(stage).items() if k in kept} == kept
    ends = [r for r in e2e.records(stage / "ledger.jsonl") if r.get("event") == "attempt_end"]
    assert [(r["exit_code"], r["tasks_this_attempt"]) for r in ends] == [(75, 1), (0, 1)]
    tasks, mmlu_scores, overall = scores(stage)
    assert tasks["indemnity"]["n"] == 10 and tasks["indemnity"]["category"] == "other"
    assert mmlu_scores["jurisprudence"]["n"] == 6 and overall["tasks"] == 1
    rows = e2e.records(stage / "predictions" / "indemnity.jsonl")
    assert sorted(r["index"] for r in rows) == [str(100 + i) for i in range(10)]
    assert all({"index", "answer", "prediction", "output", "model"} <= set(r) for r in rows)
    assert (stage / "report.md").read_text().startswith("# Evaluation of run stop")
    assert (stage / "comparison.png").stat().st_size > 0


@pytest.mark.slow
def test_a_killed_eval_resumes_with_the_unfinished_tasks_only(eval_inputs, tmp_path):
    """SIGKILL of a rank as soon as the first task is finished; the same command finishes the rest,
    with the same scores as an eval that was not killed."""
    runs = tmp_path / "runs"
    clean = e2e.submit(*args(runs, "clean", eval_inputs))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    killed = args(runs, "kill", eval_inputs)
    kstage = runs / "kill" / "eval"
    proc = e2e.start(*killed)
    deadline = time.time() + 240
    while not done_files(kstage) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    ranks = e2e.rank_processes(kstage)
    if ranks:
        os.kill(ranks[1].pid, signal.SIGKILL)
    out = proc.communicate(timeout=240)[0]
    before = done_files(kstage)
    assert before, out
    if proc.returncode == 0:
        pytest.fail("the eval finished before the kill landed: make its second task longer")
    resumed = e2e.submit(*killed)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{len(before)} finished before" in resumed.stdout
    assert {k: v for k, v in done_files(kstage).items() if k in before} == before

    assert scores(runs / "clean" / "eval") == scores(kstage)
    assert e2e.records(runs / "clean" / "eval" / "predictions" / "indemnity.jsonl") == \
        e2e.records(kstage / "predictions" / "indemnity.jsonl")


@pytest.mark.parametrize("bad, message", [
    (["eval.tasks=[/nonexistent/task]"], "eval.tasks: /nonexistent/task does not exist"),
    (["eval.max_new_tokens=0"], "eval.max_new_tokens=0 is out of range"),
    (["eval.models=[dpo]"], "eval.models: stage 'dpo' has no final model"),
    (["model.path=", "eval.models=[]"], "stage=eval needs a model"),
])
def test_bad_eval_input_exits_2_and_writes_nothing(eval_inputs, tmp_path, bad, message):
    runs = tmp_path / "runs"
    result = e2e.submit(*args(runs, "bad", eval_inputs), *bad)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not runs.exists()
