"""stage=pipeline on the local site, end to end through jobs/submit.py: prepare -> cpt -> eval of the tiny
model. A stage that does not end done stops the chain; the same command again skips what finished,
resumes the unfinished stage and runs the rest; lineage and model cards come out of the real stages."""
import json

from saul.eval.fixtures import write_legalbench_task, write_mmlu
from tests.integration import e2e


def pipeline_args(runs, inputs, *extra):
    task, mmlu_dir = inputs
    return ["stage=pipeline", "model=tiny-mixtral", "site=local", f"runs_root={runs}", "run=p", "nproc=1",
            "pipeline.stages=[prepare,cpt,eval]", "data.num_documents=60", "train.max_steps=4",
            "checkpoint.every_steps=2", f"pipeline.eval.eval.tasks=[{task}]", f"pipeline.eval.eval.mmlu_dir={mmlu_dir}",
            "pipeline.eval.eval.mmlu_subjects=[jurisprudence]", "pipeline.eval.eval.max_new_tokens=2", *extra]


def status_json(runs):
    result = e2e.subprocess.run([e2e.sys.executable, str(e2e.REPO / "jobs" / "status.py"), f"runs_root={runs}", "run=p",
                                 "--json"], capture_output=True, text=True, env=e2e.env(), timeout=60)
    assert result.returncode == 0, result.stderr
    return {s["stage"]: s for s in json.loads(result.stdout)["stages"]}


def attempts(stage_dir):
    return [r for r in e2e.records(stage_dir / "ledger.jsonl") if r.get("event") == "attempt_end"]


def test_a_stopped_stage_stops_the_chain_and_the_same_command_finishes_it(tmp_path):
    inputs = (write_legalbench_task(tmp_path / "tasks", "indemnity", n_test=4),
              write_mmlu(tmp_path / "mmlu", ["jurisprudence"], n_dev=5, n_test=2))
    runs = tmp_path / "runs"
    run = runs / "p"

    first = e2e.submit(*pipeline_args(runs, inputs, "pipeline.cpt.train.stop_after_steps=2"))
    assert first.returncode == 75, first.stdout + first.stderr
    assert "pipeline: stage cpt stopped after a checkpoint; not run: eval; re-submit the same command" in first.stderr
    assert not (run / "eval").exists()
    states = status_json(runs)
    assert [states[s]["state"] for s in ("prepare", "cpt", "eval")] == ["done", "stopped (resumable)", "waiting"]
    assert states["eval"]["dependency"] == "cpt" and states["prepare"]["energy_j"] > 0
    assert (run / "prepare" / "lineage.json").is_file() and not (run / "cpt" / "lineage.json").exists()

    second = e2e.submit(*pipeline_args(runs, inputs))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "prepare  done: skipped" in second.stdout and "=== pipeline: stage prepare" not in second.stdout
    assert [r["exit_code"] for r in attempts(run / "prepare")] == [0]
    cpt_ends = attempts(run / "cpt")
    assert [(r["exit_code"], r["step_start"], r["step_end"]) for r in cpt_ends] == [(75, 0, 2), (0, 2, 4)]
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["models"] == ["base", "cpt"]  # the chain's default: the starting model next to each stage
    # The end: wall time per stage (only the stages this submission ran), the table, where things are.
    end = second.stdout[second.stdout.index("pipeline of run p finished: wall time per stage: cpt "):]
    assert "prepare" not in end.splitlines()[0] and "eval " in end.splitlines()[0]
    assert "| indemnity (other) |" in end and f"reports: {run / 'eval' / 'report.md'}" in end
    assert f"model cards: {run / 'cpt' / 'final' / 'README.md'}" in end and "lineage: python jobs/status.py run=p" in end

    cpt = json.loads((run / "cpt" / "lineage.json").read_text())
    ev = json.loads((run / "eval" / "lineage.json").read_text())
    prep = json.loads((run / "prepare" / "lineage.json").read_text())
    assert cpt["data"]["fingerprint"] == prep["output"]["fingerprint"]
    assert cpt["started_from"]["random_init"] and cpt["output"]["step"] == 4
    assert {m["label"]: m["sha256"] for m in ev["models"]}["cpt"] == cpt["output"]["sha256"]
    card = (run / "cpt" / "final" / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0") and "As `cpt` in the run's evaluation, next to base" in card
    assert all(s["state"] == "done" for s in status_json(runs).values())

    third = e2e.submit(*pipeline_args(runs, inputs))
    assert third.returncode == 0 and "every stage of run p is finished; nothing to do" in third.stdout
    assert len(attempts(run / "cpt")) == 2 and len(attempts(run / "eval")) == 1
