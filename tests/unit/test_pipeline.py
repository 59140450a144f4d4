"""stage=pipeline on the login side (jobs/pipeline.py): the command line, the chain's links, what is
checked before anything is written, and which stages a re-submission skips. No stage runs here:
tests/integration/test_pipeline_local.py and test_pipeline_slurm.py run real ones."""
import json

import pytest
from omegaconf import OmegaConf

from jobs import pipeline, submit
from saul.config.compose import compose
from saul.config.errors import ConfigError
from saul.config.schema import PIPELINE_ORDER, STAGES
from saul.eval.fixtures import write_legalbench_task
from saul.resilience import ledger


@pytest.fixture
def task(tmp_path):
    return write_legalbench_task(tmp_path / "tasks", "indemnity", n_test=4)


def base_args(runs, task, *extra):
    return ["stage=pipeline", "model=tiny-mixtral", "site=local", f"runs_root={runs}", "run=r",
            "pipeline.stages=[prepare,cpt,eval]", f"pipeline.eval.eval.tasks=[{task}]", *extra]


# ---------------------------------------------------------------- the command line
def test_stage_scoped_settings_go_to_their_stage_only():
    stages, shared, own, dry = pipeline.split_argv(
        ["stage=pipeline", "pipeline.stages=[prepare,cpt]", "nproc=2", "pipeline.cpt.optim.lr=1e-3",
         "+pipeline.cpt.site.env.X=1", "--dry-run"])
    assert stages == ["prepare", "cpt"] and shared == ["nproc=2"] and dry
    assert own == {"cpt": ["optim.lr=1e-3", "+site.env.X=1"]}
    assert pipeline.stage_argv("cpt", stages, shared, own) == ["stage=cpt", "nproc=2", "optim.lr=1e-3", "+site.env.X=1"]
    assert pipeline.stage_argv("prepare", stages, shared, own) == ["stage=prepare", "nproc=2"]


def test_default_stages_are_every_stage_this_version_has_in_pipeline_order():
    stages, _, _, _ = pipeline.split_argv(["stage=pipeline"])
    assert stages == [s for s in PIPELINE_ORDER if s in STAGES]
    assert stages[0] == "prepare" and stages[-1] == "eval"


@pytest.mark.parametrize("arg, message", [
    ("pipeline.stages=[prepare,cpd]", "unknown stage 'cpd' (did you mean 'cpt'?)"),
    ("pipeline.stages=[cpt,prepare]", "is out of order: stages run as prepare,cpt"),
    ("pipeline.stages=[cpt,cpt]", "'cpt' is listed twice"),
    ("pipeline.stages=[]", "pipeline.stages is empty"),
    ("pipeline.stages={a:1}", "'pipeline.stages={a:1}': "),
    ("pipeline.cpd.optim.lr=1", "pipeline settings are pipeline.stages=[...] and pipeline.<stage>.<key>=value"),
    ("pipeline.cpt.stage=eval", "a stage's name is fixed by pipeline.stages"),
    ("pipeline.anneal.optim.lr=1", "stage anneal is not in pipeline.stages=[prepare,cpt]"),
])
def test_bad_pipeline_settings_are_refused(arg, message):
    with pytest.raises(ConfigError, match=None) as err:
        pipeline.split_argv(["pipeline.stages=[prepare,cpt]", arg] if not arg.startswith("pipeline.stages") else [arg])
    assert message in str(err.value)


def test_pipeline_settings_outside_a_pipeline_are_refused():
    with pytest.raises(ConfigError, match="pipeline.\\* settings belong to stage=pipeline"):
        compose(["stage=cpt", "pipeline.stages=[cpt]"])
    with pytest.raises(ConfigError, match="or pipeline"):
        compose(["stage=pipelin"])


# ---------------------------------------------------------------- the chain's links
def test_each_training_stage_starts_from_the_previous_one_and_eval_compares_them_all():
    stages = ["prepare", "cpt", "anneal", "eval"]
    assert pipeline.chain_links("prepare", stages, []) == []
    assert pipeline.chain_links("cpt", stages, []) == []  # the first: random init or the user's model.path
    assert pipeline.chain_links("anneal", stages, []) == ["model.init_from_stage=cpt", "model.path="]
    assert pipeline.chain_links("eval", stages, []) == ["eval.models=[base,cpt,anneal]"]


def test_the_users_own_stage_settings_replace_the_links():
    stages = ["cpt", "anneal", "eval"]
    assert pipeline.chain_links("anneal", stages, ["model.path=/m"]) == []
    assert pipeline.chain_links("eval", stages, ["eval.models=[anneal]"]) == []
    assert pipeline.stage_argv("anneal", stages, [], {"anneal": ["model.init_from_stage=cpt"]}) == [
        "stage=anneal", "model.init_from_stage=cpt"]


# ---------------------------------------------------------------- checked before anything is written
def test_a_fresh_pipeline_plans_every_stage_and_writes_nothing(tmp_path, task):
    runs = tmp_path / "runs"
    plan = pipeline.plan(base_args(runs, task, "pipeline.cpt.optim.lr=1e-3")[1:])
    assert [p.name for p in plan.stages] == ["prepare", "cpt", "eval"]
    assert not any(p.finished for p in plan.stages)
    cpt, ev = plan.stages[1].cfg, plan.stages[2].cfg
    assert cpt.optim.lr == 1e-3 and plan.stages[0].cfg.optim.lr != 1e-3
    assert list(ev.eval.models) == ["base", "cpt"]
    assert not runs.exists()
    text = pipeline.describe(plan)
    assert "prepare -> cpt -> eval" in text and "to run: 1 node(s) x 1 rank(s)" in text


@pytest.mark.parametrize("extra, message", [
    ("pipeline.eval.eval.max_new_tokens=0", "pipeline stage eval: eval.max_new_tokens=0 is out of range"),
    ("pipeline.cpt.train.seq_len=32", "pipeline stage cpt: train.seq_len=32 but prepare packs to 64"),
    ("pipeline.cpt.optim.lr=-1", "pipeline stage cpt: optim.lr=-1.0 is out of range"),
])
def test_a_bad_stage_setting_exits_2_naming_the_stage_and_writes_nothing(tmp_path, task, capsys, extra, message):
    runs = tmp_path / "runs"
    assert submit.main(base_args(runs, task, extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not runs.exists()


def test_a_stage_that_starts_from_nothing_in_or_before_the_chain_is_refused(tmp_path, capsys):
    code = submit.main(["stage=pipeline", "model=tiny-mixtral", "site=local", f"runs_root={tmp_path}", "run=r",
                        "pipeline.stages=[anneal]", "pipeline.anneal.model.init_from_stage=cpt"])
    assert code == 2
    assert "model.init_from_stage=cpt: no final model" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- what a re-submission skips
MANIFEST = json.dumps({"seq_len": 64, "vocab_size": 1000})  # what cpt's submit-time check reads


def finish(runs, stage_argv, output_files, exit_code=0):
    """A stage as a finished run leaves it: frozen config.yaml, an attempt_end, its output."""
    cfg = compose(stage_argv).cfg
    stage_dir = runs / "r" / cfg.stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    cfg.optim.schedule_steps = cfg.train.max_steps
    (stage_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    ledger.append(stage_dir / "ledger.jsonl", {"event": "attempt_start", "attempt": 1})
    ledger.append(stage_dir / "ledger.jsonl", {"event": "attempt_end", "attempt": 1, "exit_code": exit_code})
    for path, text in output_files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_finished_stages_are_skipped_and_the_rest_is_checked_against_their_outputs(tmp_path, task):
    runs = tmp_path / "runs"
    args = base_args(runs, task)
    plan = pipeline.plan(args[1:])
    finish(runs, plan.stages[0].argv, {runs / "r" / "data" / "manifest.json": MANIFEST})
    again = pipeline.plan(args[1:])
    assert [p.finished for p in again.stages] == [True, False, False]
    assert "prepare  done: skipped" in pipeline.describe(again)
    # prepare is done, so cpt's dataset is checked now: one packed to another length is refused here
    (runs / "r" / "data" / "manifest.json").write_text(json.dumps({"seq_len": 128, "vocab_size": 1000}))
    with pytest.raises(ConfigError, match="pipeline stage cpt: dataset .* is packed to seq_len=128"):
        pipeline.plan(args[1:])


def test_a_stage_whose_last_attempt_failed_is_not_finished(tmp_path, task):
    runs = tmp_path / "runs"
    plan = pipeline.plan(base_args(runs, task)[1:])
    finish(runs, plan.stages[0].argv, {runs / "r" / "data" / "manifest.json": "{}"}, exit_code=1)
    assert [p.finished for p in pipeline.plan(base_args(runs, task)[1:]).stages] == [False, False, False]


def test_a_changed_setting_a_started_stage_cannot_take_is_refused_before_any_stage_runs(tmp_path, task, capsys):
    runs = tmp_path / "runs"
    plan = pipeline.plan(base_args(runs, task)[1:])
    finish(runs, plan.stages[0].argv, {runs / "r" / "data" / "manifest.json": MANIFEST})
    assert submit.main(base_args(runs, task, "seed=7")) == 2
    assert "stage prepare of run 'r' was started with seed=1234; this pipeline asks seed=7" in capsys.readouterr().err
    assert not (runs / "r" / "cpt").exists() and not (runs / "r" / "pipeline.json").exists()


def test_a_finished_stage_with_a_changed_run_setting_says_it_is_not_applied(tmp_path, task):
    runs = tmp_path / "runs"
    plan = pipeline.plan(base_args(runs, task)[1:])
    finish(runs, plan.stages[0].argv, {runs / "r" / "data" / "manifest.json": MANIFEST})
    text = pipeline.describe(pipeline.plan(base_args(runs, task, "pipeline.prepare.time_limit_min=7")[1:]))
    assert "prepare  done: skipped; changed settings not applied (time_limit_min): submit stage=prepare alone" in text


def test_every_stage_finished_means_nothing_to_do(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["stage=pipeline", "model=tiny-mixtral", "site=local", f"runs_root={runs}", "run=r", "pipeline.stages=[prepare]"]
    finish(runs, pipeline.plan(args[1:]).stages[0].argv, {runs / "r" / "data" / "manifest.json": "{}"})
    assert submit.main(args) == 0
    assert "every stage of run r is finished; nothing to do" in capsys.readouterr().out


def test_the_whole_recipe_plans_before_any_stage_has_run(tmp_path, task):
    runs = tmp_path / "runs"
    plan = pipeline.plan(base_args(runs, task, "pipeline.stages=[prepare,cpt,anneal,ift,dpo,eval]")[1:])
    by_name = {p.name: p.cfg for p in plan.stages}
    assert [by_name[s].model.init_from_stage for s in ("cpt", "anneal", "ift", "dpo")] == ["", "cpt", "anneal", "ift"]
    assert list(by_name["eval"].eval.models) == ["base", "cpt", "anneal", "ift", "dpo"]
    assert not runs.exists()


def test_a_dry_run_shows_every_stage_and_says_what_a_real_submit_would_refuse(tmp_path, task, capsys):
    runs = tmp_path / "runs"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"seq_len": 128, "vocab_size": 1000}))
    code = submit.main(base_args(runs, task, "pipeline.stages=[cpt,eval]", f"data.path={tmp_path / 'data'}",
                                 "--dry-run"))
    out, err = capsys.readouterr()
    assert code == 0
    assert "warning: pipeline stage cpt: when run for real: dataset" in err and "packed to seq_len=128" in err
    assert "=== pipeline: stage cpt (1/2) ===" in out and "=== pipeline: stage eval (2/2) ===" in out
    assert not runs.exists()
