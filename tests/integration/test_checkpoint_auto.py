"""checkpoint.every_steps=auto in a real 2-rank CPT run: the first save measures the cost, then rank 0 chooses
Young's interval from it (recorded in metrics.jsonl) and both ranks save at the chosen steps."""
import pytest

from saul.resilience.checkpoint_interval import default_mtbf_s, interval_steps
from tests.integration import e2e

STEPS = 6


def test_auto_interval_is_measured_chosen_recorded_and_followed(packed_data, tmp_path):
    runs = tmp_path / "runs"
    result = e2e.submit("stage=cpt", "model=tiny-mixtral", "site=local", "nproc=2", f"runs_root={runs}", "run=auto",
                        f"data.path={packed_data}", f"train.max_steps={STEPS}", "checkpoint.every_steps=auto",
                        "checkpoint.keep_last=5", "train.threads_per_rank=1", "energy.enabled=false")
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = e2e.records(runs / "auto" / "cpt" / "metrics.jsonl")
    choices = [r for r in metrics if r.get("event") == "checkpoint_interval"]
    saves = [r for r in metrics if r.get("event") == "checkpoint"]
    assert choices[0]["step"] == 0 and choices[0]["every_steps"] == 1 and choices[0]["save_s"] is None
    measured = choices[1]
    assert measured["step"] == 1 and measured["mtbf_s"] == default_mtbf_s(2)
    assert measured["save_s"] == pytest.approx(saves[0]["seconds"], abs=1e-4)  # metrics round to 0.1 ms
    assert measured["every_steps"] == interval_steps(measured["save_s"], measured["mtbf_s"], measured["step_s"])
    # 2 ranks, no failure: Young's interval is far beyond this run; the final save ends it.
    expected = sorted({1, STEPS} | set(range(1 + measured["every_steps"], STEPS + 1, measured["every_steps"])))
    assert [r["step"] for r in saves] == expected
    checkpoints = sorted(p.name for p in (runs / "auto" / "cpt" / "checkpoints").glob("step-*"))
    assert checkpoints == [f"step-{s:08d}" for s in expected]
