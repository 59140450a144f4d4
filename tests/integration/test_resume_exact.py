"""Exact resume: runs interrupted by SIGTERM and by SIGKILL (plus a corrupt newest checkpoint) and
resumed with the same command see the same samples, the same loss at every step and end with
bitwise the same weights as an uninterrupted run, for DDP and for ZeRO-3 on 2 CPU processes."""
import os
import signal

import pytest

from tests.integration import e2e

STEPS = 40


def common(runs, data, run, parallel):
    return ["stage=cpt", "model=tiny-mixtral", "site=local", f"runs_root={runs}", f"run={run}", f"data.path={data}",
            "nproc=2", f"parallel={parallel}", f"train.max_steps={STEPS}", "checkpoint.every_steps=8",
            "checkpoint.keep_last=3", "train.log_every=1", "train.log_sample_ids=true", "optim.lr=1e-3"]


def final_weights(runs, run):
    return (runs / run / "cpt" / "final" / "model.safetensors").read_bytes()


def assert_same_training(clean, other):
    """Every record of `other` (including steps logged twice around a crash) equals the clean run's."""
    assert sorted(other) == sorted(clean) == list(range(1, STEPS + 1))
    for step, recs in other.items():
        want = clean[step][0]
        for rec in recs:
            assert rec["sample_ids"] == want["sample_ids"], f"step {step}: different samples"
            assert rec["loss"] == want["loss"], f"step {step}: loss {rec['loss']} != {want['loss']}"


@pytest.mark.parametrize("parallel", ["ddp", "zero3"])
def test_interrupted_and_resumed_runs_match_an_uninterrupted_one(parallel, packed_data, tmp_path):
    runs = tmp_path / "runs"
    clean = e2e.submit(*common(runs, packed_data, "clean", parallel))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    clean_steps = e2e.by_step(runs / "clean" / "cpt" / "metrics.jsonl")

    # SIGTERM to the launcher: ranks agree on a stop step, checkpoint, exit 75; the same command resumes.
    args = common(runs, packed_data, "term", parallel)
    stage = runs / "term" / "cpt"
    proc = e2e.start(*args)
    e2e.wait_for_step(stage / "metrics.jsonl", 3, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, out
    stopped_at = max(e2e.by_step(stage / "metrics.jsonl"))
    assert stopped_at < STEPS and (stage / "checkpoints" / f"step-{stopped_at:08d}").is_dir()
    resumed = e2e.submit(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from step-{stopped_at:08d}" in resumed.stdout
    assert_same_training(clean_steps, e2e.by_step(stage / "metrics.jsonl"))
    assert final_weights(runs, "term") == final_weights(runs, "clean")

    # SIGKILL of one rank: the launcher stops the other; then the newest checkpoint is truncated,
    # so the resume must skip it and replay from the one before.
    args = common(runs, packed_data, "kill", parallel)
    stage = runs / "kill" / "cpt"
    proc = e2e.start(*args)
    e2e.wait_for_step(stage / "metrics.jsonl", 18, proc)
    os.kill(e2e.rank_processes(stage)[1].pid, signal.SIGKILL)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode not in (0, 75), out
    checkpoints = sorted((stage / "checkpoints").glob("step-*"))
    assert len(checkpoints) >= 2
    newest, previous = checkpoints[-1], checkpoints[-2]
    victim = max((p for p in newest.rglob("*") if p.is_file() and p.name != "manifest.json"),
                 key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as fh:
        fh.truncate(victim.stat().st_size // 2)
    resumed = e2e.submit(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"skipping checkpoint {newest.name}" in resumed.stdout
    assert f"resumed from {previous.name}" in resumed.stdout
    kill_steps = e2e.by_step(stage / "metrics.jsonl")
    assert any(len(recs) > 1 for recs in kill_steps.values()), "work after the checkpoint must have been redone"
    assert_same_training(clean_steps, kill_steps)
    assert final_weights(runs, "kill") == final_weights(runs, "clean")

    if parallel == "ddp":  # DDP saves asynchronously by default: SIGKILL rank 0 while its background write runs
        args = [a.replace("every_steps=8", "every_steps=2") for a in common(runs, packed_data, "async", parallel)]
        stage = runs / "async" / "cpt"
        proc = e2e.start(*args)
        half_done = kill_rank0_during_a_background_save(stage, proc)
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode not in (0, 75), out
        half_step = int(half_done.name.rsplit("-", 1)[1])
        committed = [int(p.name.split("-")[1]) for p in (stage / "checkpoints").glob("step-*")]
        assert half_done.is_dir() and half_step not in committed
        resumed = e2e.submit(*args)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"resumed from step-{max(committed):08d}" in resumed.stdout
        assert_same_training(clean_steps, e2e.by_step(stage / "metrics.jsonl"))
        assert final_weights(runs, "async") == final_weights(runs, "clean")
        saves = [r for r in e2e.records(stage / "metrics.jsonl") if r.get("event") == "checkpoint"]
        assert saves and all(r["mode"] == "async" and r["background_s"] > 0 for r in saves)


def kill_rank0_during_a_background_save(stage, proc):
    """SIGSTOP rank 0 when a `.tmp-step-N` holds files (its background thread is writing); if the save is still
    uncommitted while it is stopped, SIGKILL it there (else let it go on to the next save). The `.tmp-` path."""
    e2e.wait_for_step(stage / "metrics.jsonl", 5, proc)  # past two committed saves (every 2 steps)
    rank0 = e2e.rank_processes(stage)[0]
    checkpoints = stage / "checkpoints"
    while proc.poll() is None:
        tmp = next((p for p in checkpoints.glob(".tmp-step-*") if any(p.iterdir())), None) if checkpoints.is_dir() else None
        if tmp is None:
            continue
        rank0.send_signal(signal.SIGSTOP)
        if tmp.is_dir() and not (checkpoints / tmp.name[len(".tmp-"):]).exists():
            rank0.send_signal(signal.SIGKILL)
            return tmp
        rank0.send_signal(signal.SIGCONT)
    raise AssertionError(f"the run ended before a save could be caught in flight:\n{proc.stdout.read()}")


POSTTRAIN_STEPS = 10
FAST_POSTTRAIN = {("ift", "ddp"), ("dpo", "zero3")}  # the other two pairs share these code paths: slow suite


def posttrain_args(runs, data, run, stage, parallel):
    demo = "ift.demo_conversations=24" if stage == "ift" else "dpo.demo_pairs=16"
    # Random init with the packed data's tokenizer (no cpt run needed); 10 steps cross the epoch end.
    return [f"stage={stage}", "model=tiny-mixtral", "site=local", f"runs_root={runs}", f"run={run}",
            f"data.path={data}", "nproc=2", f"parallel={parallel}", demo, "train.micro_batch=2",
            "train.grad_accum=1", f"train.max_steps={POSTTRAIN_STEPS}", "checkpoint.every_steps=3",
            "train.log_every=1", "train.log_sample_ids=true", "train.threads_per_rank=1"]


@pytest.mark.parametrize("stage,parallel", [
    pytest.param(s, p, marks=() if (s, p) in FAST_POSTTRAIN else pytest.mark.slow)
    for s in ("ift", "dpo") for p in ("ddp", "zero3")])
def test_killed_post_training_resumes_exactly(stage, parallel, packed_data, tmp_path):
    """IFT and DPO: SIGKILL of one rank mid-run, re-run: the same losses (and DPO figures) at every
    step and bitwise the same final weights as an uninterrupted run; DPO reloads its stored
    reference log-probabilities instead of recomputing them."""
    runs = tmp_path / "runs"
    clean = e2e.submit(*posttrain_args(runs, packed_data, "clean", stage, parallel))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    clean_steps = e2e.by_step(runs / "clean" / stage / "metrics.jsonl")
    assert sorted(clean_steps) == list(range(1, POSTTRAIN_STEPS + 1))

    args = posttrain_args(runs, packed_data, "kill", stage, parallel)
    stage_dir = runs / "kill" / stage
    proc = e2e.start(*args)
    e2e.wait_for_step(stage_dir / "metrics.jsonl", 4, proc)
    os.kill(e2e.rank_processes(stage_dir)[1].pid, signal.SIGKILL)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode not in (0, 75), out
    resumed = e2e.submit(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from step-" in resumed.stdout
    if stage == "dpo":
        assert "reference log-probabilities reloaded" in resumed.stdout
    steps = e2e.by_step(stage_dir / "metrics.jsonl")
    assert sorted(steps) == sorted(clean_steps)
    assert any(len(recs) > 1 for recs in steps.values()), "work after the checkpoint must have been redone"
    figures = ["loss", "sample_ids"] + (["rewards/chosen", "rewards/margins", "rewards/accuracies"]
                                        if stage == "dpo" else [])
    for step, recs in steps.items():
        for rec in recs:
            for key in figures:
                assert rec[key] == clean_steps[step][0][key], f"step {step}: {key} differs"
    final = f"{stage}/final/model.safetensors"
    assert (runs / "kill" / final).read_bytes() == (runs / "clean" / final).read_bytes()
    # The data counts reach the ledger's attempt_end and metrics.jsonl.
    end = [r for r in e2e.records(stage_dir / "ledger.jsonl") if r.get("event") == "attempt_end"][-1]
    assert end["data"]["kept"] > 0 and end["data"]["read"] == (24 if stage == "ift" else 16)
    assert any(r.get("event") == "data" for r in e2e.records(stage_dir / "metrics.jsonl"))
