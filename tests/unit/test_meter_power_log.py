"""monitoring.power_log: per-node, per-job summaries from power/<node>.jsonl as meters leave them."""
import json

import pytest

from monitoring.power_log import PowerLogWarning, load_power_dir, load_runs


def record(kind, node, job, attempt, t, **fields):
    return {"kind": kind, "time": t, "node": node, "job": job, "attempt": attempt,
            "source": fields.pop("source", "pm_counters"), **fields}


def write_log(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def meter_run(node, job, attempt, t0, energy_j, duration_s, *, clean=True, estimated=False):
    records = [record("start", node, job, attempt, t0, estimated=estimated, rejected={"nvml": "no driver"})]
    for i in range(1, 4):
        records.append(record("sample", node, job, attempt, t0 + i, elapsed_s=duration_s * i / 3,
                              node_energy_j=energy_j * i / 3, estimated=estimated))
    if clean:
        records.append(record("summary", node, job, attempt, t0 + 4, stop_reason="SIGTERM",
                              duration_s=duration_s, energy_j=energy_j, samples=3, estimated=estimated))
    return records


def test_summaries_per_node_and_job_across_attempts(tmp_path):
    write_log(tmp_path / "n1.jsonl", meter_run("n1", "100", 0, 0, 6000.0, 10.0)
              + meter_run("n1", "101", 1, 100, 9000.0, 20.0))
    write_log(tmp_path / "n2.jsonl", meter_run("n2", "100", 0, 0, 5000.0, 10.0, estimated=True))
    summaries = load_power_dir(tmp_path)
    assert sorted(summaries) == [("n1", "100"), ("n1", "101"), ("n2", "100")]
    job = summaries[("n1", "101")]
    assert (job.energy_j, job.duration_s, job.mean_power_w) == (9000.0, 20.0, 450.0)
    assert job.complete and job.source == "pm_counters" and not job.estimated
    assert job.runs[0].attempt == 1 and job.runs[0].rejected_sources == {"nvml": "no driver"}
    assert summaries[("n2", "100")].estimated


def test_a_restarted_meter_for_the_same_job_adds_a_run(tmp_path):
    write_log(tmp_path / "n1.jsonl", meter_run("n1", "7", 0, 0, 1000.0, 10.0, clean=False)
              + meter_run("n1", "7", 0, 50, 2000.0, 10.0))
    (entry,) = load_power_dir(tmp_path).values()
    assert len(entry.runs) == 2 and not entry.complete
    assert entry.energy_j == pytest.approx(3000.0) and entry.duration_s == pytest.approx(20.0)


def test_bad_lines_are_skipped_with_a_warning(tmp_path):
    path = tmp_path / "n1.jsonl"
    records = meter_run("n1", "7", 0, 0, 1000.0, 10.0, clean=False)
    lines = [json.dumps(r) for r in records]
    lines.insert(2, "garbage from a full disk")
    path.write_text("\n".join(lines) + "\n" + '{"kind": "sam')
    with pytest.warns(PowerLogWarning) as caught:
        (run,) = load_runs(path)
    messages = [str(w.message) for w in caught]
    assert any("line 3" in m for m in messages) and any("truncated last line" in m for m in messages)
    assert run.samples == 3 and run.energy_j == pytest.approx(1000.0) and not run.complete
