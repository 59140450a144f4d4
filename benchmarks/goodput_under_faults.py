"""Goodput of a 2-node tiny CPT on a real local Slurm cluster while ranks keep dying: the toolkit against its peer.

    python benchmarks/goodput_under_faults.py [--steps 3200] [--every-steps 100] [--fault-every-s 60]
                                              [--seed 0] [--skip-clean] [--keep DIR] [--variants abc]

Starts a LocalSlurmCluster (tests/slurm_cluster.py: 3 nodes, root only) in a temporary folder,
prepares the demo data (stage=prepare on the local site), then runs the same CPT (same model, step
loop, checkpoint interval; one rank per node, one CPU thread each): a clean run, then under the
same fault schedule, one variant after the other:
  (a) this toolkit (`jobs/submit.py stage=cpt site=local-slurm nodes=2 ...`): a crash is relaunched
      inside the allocation (saul/resilience/step_restart.py);
  (b) the plain submitit way (benchmarks/plain_submitit_baseline.py): Checkpointable + --requeue,
      resubmitted by a loop when a job fails;
  (c) this toolkit with resilience.in_job_restart=false: every crash goes through a Slurm requeue.
Every `--fault-every-s` seconds of training (wall time since the running attempt's first step) a
random rank gets SIGKILL, found the way tests/integration/test_faults_slurm.py finds it; fault
number `--node-down` (default 2) sets rank 1's node DOWN instead (a node failure: (a) holds one
spare node, resilience.spare_nodes=1, and swaps it in; (b) and (c) go through Slurm's requeue);
the node comes back when the variant ends. Prints each
run's goodput (monitoring/goodput.py) side by side, the comparison table (effective training time,
median recovery = kill -> the next attempt's first step, lost work) and one line per fault.

Sizing: a tiny step took 0.073 s on the quiet 2-core test VM under Slurm (2 ranks and their meters
sharing 2 cores) and up to 0.13 s while other work ran, so 3200 steps are ~4 minutes of step time
(up to 7) per run. Time limits are set far away (time_limit_min=60) so that only the injected
faults interrupt. The cluster is stopped, by PID, on every exit path (errors and SIGTERM
included). Exit 0 when every run finished, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from monitoring import goodput  # noqa: E402
from tests.integration.e2e import SUBMIT, env_extra, records  # noqa: E402
from tests.slurm_cluster import LocalSlurmCluster  # noqa: E402

SECONDS_PER_STEP_GUESS = 0.15  # only for the time-outs: measured 0.08-0.16 s on the 2-core test VM
FINISHED_ACTIONS = ("done", "stop")
VARIANTS = {"a": "(a) toolkit", "b": "(b) plain submitit Checkpointable+requeue",
            "c": "(c) toolkit, in-job restart off"}


@dataclass
class Fault:
    number: int
    time: float
    attempt: int  # the ledger attempt it hit
    step: int  # the newest logged step when it hit
    rank: int
    pid: int
    kind: str = "SIGKILL"  # or "node DOWN": the rank's node set DOWN in Slurm (scontrol)


class BenchmarkError(RuntimeError):
    """The benchmark could not do what it needs (submit, find a rank, finish in time)."""


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (a `timeout`, a CI cancel) becomes KeyboardInterrupt, so `finally` stops the cluster."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def prepare_data(runs_root: Path) -> Path:
    result = subprocess.run([*SUBMIT, "stage=prepare", "model=tiny-mixtral", "site=local", f"runs_root={runs_root}",
                             "run=data"], env={**os.environ, **env_extra()}, capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        raise BenchmarkError(f"stage=prepare failed:\n{result.stdout}{result.stderr}")
    return runs_root / "data" / "data"


def cpt_args(runs_root: Path, run: str, data: Path, steps: int, every_steps: int) -> List[str]:
    """The same training for every variant: only how failures are handled differs."""
    return ["stage=cpt", "model=tiny-mixtral", "site=local-slurm", "nodes=2", f"runs_root={runs_root}", f"run={run}",
            f"data.path={data}", f"train.max_steps={steps}", "train.threads_per_rank=1", "train.log_every=1",
            f"checkpoint.every_steps={every_steps}", "time_limit_min=60"]


def submit_cpt(cluster: LocalSlurmCluster, runs_root: Path, run: str, data: Path, steps: int, every_steps: int,
               *extra: str) -> Path:
    args = cpt_args(runs_root, run, data, steps, every_steps) + list(extra)
    result = subprocess.run([*SUBMIT, *args], env=cluster.client_environ(env_extra()), capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0 or "submitted Slurm job" not in result.stdout:
        raise BenchmarkError(f"submit of run {run} failed:\n{result.stdout}{result.stderr}")
    return runs_root / run / "cpt"


def start_plain_submitit(cluster: LocalSlurmCluster, runs_root: Path, run: str, data: Path, steps: int,
                         every_steps: int):
    """(b): the stage directory frozen as a submit would, then the plain submitit resubmit loop (a thread)."""
    from benchmarks.plain_submitit_baseline import ResubmitLoop
    from jobs.frozen_config import freeze_or_check
    from jobs.submit import prepare_submission

    os.environ.update(cluster.client_environ({**env_extra(), "PYTHONPATH": str(REPO)}))
    _, cfg, rundir, _ = prepare_submission(cpt_args(runs_root, run, data, steps, every_steps))
    freeze_or_check(rundir.config, cfg, rundir.ledger)
    loop = ResubmitLoop(rundir.root, nodes=2)
    loop.start()
    return rundir.root, loop


def finished(stage: Path) -> Optional[dict]:
    """The requeue path's last word when it is final (done, or stop: failure budget, user error)."""
    ends = [r for r in records(stage / "ledger.jsonl") if r.get("event") == "job_end"]
    return ends[-1] if ends and ends[-1].get("action") in FINISHED_ACTIONS else None


def wait_until_finished(stage: Path, timeout_s: float) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        end = finished(stage)
        if end is not None:
            return end
        time.sleep(1.0)
    raise BenchmarkError(f"{stage} did not finish in {timeout_s:.0f}s")


def rank_processes(stage: Path) -> Dict[int, psutil.Process]:
    """rank -> the live rank process of this stage's Slurm job (submitit's worker, SLURM_PROCID)."""
    folder = str(stage / "logs" / "slurm")
    ranks = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        # The rank's Python process itself: not its bash wrapper before the exec, not a child it forked.
        if "submitit.core._submit" in cmd and folder in cmd and "python" in Path(cmd[0]).name:
            try:
                parent = proc.parent()
                if parent is not None and "submitit.core._submit" in (parent.cmdline() or []):
                    continue
                ranks[int(proc.environ().get("SLURM_PROCID", "-1"))] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
                continue
    return ranks


class FaultInjector:
    """Kill a random rank once the running attempt has trained `every_s` seconds, until the stage ends."""

    def __init__(self, stage: Path, every_s: float, max_steps: int, rng: random.Random,
                 cluster: Optional[LocalSlurmCluster] = None, node_down_fault: int = 0):
        self.stage, self.every_s, self.max_steps, self.rng = stage, every_s, max_steps, rng
        self.cluster, self.node_down_fault = cluster, node_down_fault
        self.faults: List[Fault] = []
        self.downed: List[str] = []

    def _running_attempt(self):
        """(attempt, time of its first step record, newest step) of the newest attempt that has stepped."""
        steps = [r for r in records(self.stage / "metrics.jsonl") if "step_time_s" in r and "event" not in r]
        if not steps:
            return None
        attempt = max(r["attempt"] for r in steps)
        mine = [r for r in steps if r["attempt"] == attempt]
        return attempt, min(r["time"] for r in mine), max(r["step"] for r in mine)

    def run(self, timeout_s: float) -> None:
        try:
            self._inject(timeout_s)
        finally:  # the next variant gets the whole cluster back
            for node in self.downed:
                self.cluster.set_node_state(node, "resume")

    def _node_down(self, ranks: Dict[int, psutil.Process], attempt: int, step: int) -> bool:
        """Set the node of rank 1 (not the batch host: losing that ends any job) DOWN, as a node failure."""
        proc = ranks.get(1)
        try:
            node = proc.environ()["SLURMD_NODENAME"] if proc is not None else None
        except (psutil.NoSuchProcess, KeyError):
            node = None
        if node is None:
            return False
        self.cluster.set_node_state(node, "down", reason="benchmark fault injection")
        self.downed.append(node)
        self.faults.append(Fault(len(self.faults) + 1, time.time(), attempt, step, 1, proc.pid, "node DOWN"))
        print(f"  fault {len(self.faults)}: node {node} (rank 1) set DOWN during attempt {attempt} at step "
              f"{step}/{self.max_steps}", flush=True)
        return True

    def _inject(self, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline and finished(self.stage) is None:
            time.sleep(0.5)
            running = self._running_attempt()
            if running is None:
                continue
            attempt, first_step_at, step = running
            already_hit = any(f.attempt == attempt for f in self.faults)
            ended = any(r.get("event") == "attempt_end" and r.get("attempt") == attempt
                        for r in records(self.stage / "ledger.jsonl"))
            if already_hit or ended or step >= self.max_steps or time.time() - first_step_at < self.every_s:
                continue
            ranks = rank_processes(self.stage)
            if not ranks:
                continue  # between attempts (or the last one finishing): look again
            if len(self.faults) + 1 == self.node_down_fault and self.cluster is not None:
                self._node_down(ranks, attempt, step)
                continue
            rank = self.rng.choice(sorted(ranks))
            try:
                ranks[rank].send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
            self.faults.append(Fault(len(self.faults) + 1, time.time(), attempt, step, rank, ranks[rank].pid))
            print(f"  fault {len(self.faults)}: SIGKILL rank {rank} (pid {ranks[rank].pid}) of attempt {attempt} "
                  f"at step {step}/{self.max_steps}", flush=True)
        if finished(self.stage) is None:
            raise BenchmarkError(f"{self.stage} did not finish in {timeout_s:.0f}s")


# --- printing ----------------------------------------------------------------------------------------
def _f(value: Optional[float], digits: int = 1, suffix: str = "") -> str:
    return "–" if value is None else f"{value:,.{digits}f}{suffix}"


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1%}"


def side_by_side(runs: Dict[str, goodput.StageGoodput]) -> List[str]:
    def young(s):
        return "n/a (no failure)" if s.young_s is None else f"{s.young_s:.1f} s ≈ {s.young_steps} steps"

    rows = [
        ("attempts", lambda s: str(len(s.attempts))),
        ("failures", lambda s: ", ".join(f"{c.attempts} {c.end_class}" for c in s.losses() if c.end_class
                                         in goodput.FAILURE_CLASSES) or "0"),
        ("elapsed s (first start -> end)", lambda s: _f(s.elapsed_s)),
        ("attempts' wall s", lambda s: _f(s.wall_s)),
        ("productive step s", lambda s: _f(s.productive_s)),
        ("EFFECTIVE TRAINING TIME RATIO", lambda s: _pct(s.ratio)),
        ("  without gaps between attempts", lambda s: _pct(s.ratio_without_gaps)),
        ("redone steps (lost work)", lambda s: f"{sum(a.redone_steps for a in s.attempts)} "
                                               f"({_f(s.redone_s)} s)"),
        ("gaps between attempts s", lambda s: _f(s.gaps_s)),
        ("start-up s (all attempts)", lambda s: _f(sum(a.startup_s or 0.0 for a in s.attempts))),
        ("mean launch before attempt_start s", lambda s: _f(s.mean_launch_s)),
        ("mean recovery after failure s", lambda s: _f(s.mean_recovery_s)),
        ("observed MTBF s", lambda s: _f(s.mtbf_s)),
        ("mean checkpoint save s", lambda s: _f(s.mean_checkpoint_s, 3)),
        ("mean step s", lambda s: _f(s.mean_step_s, 3)),
        ("Young's interval", young),
        ("configured interval", lambda s: f"{s.every_steps} steps ≈ {_f(s.configured_interval_s)} s"),
    ]
    names = list(runs)
    width = max(len(label) for label, _ in rows) + 2
    lines = [" " * width + "".join(f"{n:>22}" for n in names)]
    for label, value in rows:
        lines.append(f"{label:<{width}}" + "".join(f"{value(runs[n]):>22}" for n in names))
    return lines


def recovery_times(stage: goodput.StageGoodput, faults: List[Fault]) -> List[float]:
    """Kill -> the next attempt's first step began, per fault that was followed by another attempt."""
    out = []
    for f in faults:
        nxt = next((b for b in stage.attempts if b.attempt > f.attempt and b.startup_s is not None), None)
        if nxt is not None:
            out.append(nxt.start + nxt.startup_s - f.time)
    return out


def peer_table(results: Dict[str, goodput.StageGoodput], faults: Dict[str, List[Fault]]) -> List[str]:
    """The issue's comparison: effective training time, median recovery (kill -> next first step), lost work."""
    lines = [f"{'variant':<44}{'effective':>10}{'median recovery':>17}{'lost work':>20}{'faults':>8}{'jobs':>6}"]
    for name, s in results.items():
        times = recovery_times(s, faults.get(name, []))
        median = statistics.median(times) if times else None
        lost = f"{sum(a.redone_steps for a in s.attempts)} st / {_f(s.redone_s)} s"
        jobs = len({a.job_id for a in s.attempts})
        lines.append(f"{name:<44}{_pct(s.ratio):>10}{_f(median, 1, ' s'):>17}{lost:>20}"
                     f"{len(faults.get(name, [])):>8}{jobs:>6}")
    return lines


def fault_lines(stage: goodput.StageGoodput, faults: List[Fault], ledger_records: List[dict]) -> List[str]:
    """One line per fault; the gap is split at after_job's job_end: before it, srun noticing the dead
    rank and the batch script's teardown; after it, Slurm's requeue, the queue and the next launch."""
    by_attempt = {a.attempt: a for a in stage.attempts}
    lines = []
    for f in faults:
        a = by_attempt.get(f.attempt)
        if a is None:
            lines.append(f"  fault {f.number}: attempt {f.attempt} not in the ledger")
            continue
        nxt = next((b for b in stage.attempts if b.attempt > a.attempt), None)
        startup = nxt.startup_s if nxt is not None else None
        verdict = next((r["time"] for r in ledger_records if r.get("event") == "job_end" and r.get("exit_code")
                        is not None and r["time"] >= a.end and (nxt is None or r["time"] <= nxt.start)), None)
        split = ""
        if verdict is not None and nxt is not None:
            split = (f" ({verdict - a.end:.1f} s to after_job's verdict + {nxt.start - verdict:.1f} s requeue "
                     "and launch)")
        lines.append(
            f"  fault {f.number}: {f'rank {f.rank} killed' if f.kind == 'SIGKILL' else f'rank {f.rank} node DOWN'} "
            f"at step {f.step} (attempt {a.attempt}, "
            f"{f.time - a.start:.0f} s into it) -> ended {a.end_class}; redone {a.redone_steps} steps "
            f"({_f(a.redone_s)} s); recovery {_f(a.recovery_after_s)} s = gap {_f(a.gap_after_s)} s{split} "
            f"+ start-up {_f(startup)} s")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3200, help="train.max_steps of both runs")
    parser.add_argument("--every-steps", type=int, default=100, help="checkpoint.every_steps of both runs")
    parser.add_argument("--fault-every-s", type=float, default=60.0, help="seconds of training between faults")
    parser.add_argument("--seed", type=int, default=0, help="which rank dies each time")
    parser.add_argument("--skip-clean", action="store_true", help="only the run with faults")
    parser.add_argument("--keep", type=Path, help="keep the run directories (and goodput reports) here")
    parser.add_argument("--node-down", type=int, default=2, help="which fault sets a node DOWN instead of a "
                        "SIGKILL (the node of rank 1; 0: none); (a) holds one spare node for it")
    parser.add_argument("--variants", default="abc", help="which of a (toolkit), b (plain submitit), "
                        "c (toolkit, in-job restart off) to run, in this order")
    args = parser.parse_args(argv)
    if not args.variants or set(args.variants) - set(VARIANTS):
        parser.error(f"--variants takes letters of {''.join(VARIANTS)}, e.g. --variants abc")
    ok, reason = LocalSlurmCluster.available()
    if not ok:
        print(f"cannot run: local Slurm cluster unavailable: {reason}", file=sys.stderr)
        return 1
    _exit_cleanly_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="saul-goodput-"))
    runs_root = (args.keep or work / "runs").resolve()
    cluster = LocalSlurmCluster(work / "cluster", nodes=3, cluster_name="saulgoodput")
    budget_s = 600 + args.steps * SECONDS_PER_STEP_GUESS * 3
    stages: Dict[str, Path] = {}
    injectors: Dict[str, FaultInjector] = {}
    t_start = time.time()
    try:
        cluster.start()
        data = prepare_data(runs_root)
        print(f"cluster up, data prepared ({time.time() - t_start:.0f} s); runs in {runs_root}", flush=True)
        if not args.skip_clean:
            print(f"clean run: {args.steps} steps, checkpoint every {args.every_steps}", flush=True)
            stages["clean"] = submit_cpt(cluster, runs_root, "clean", data, args.steps, args.every_steps)
            wait_until_finished(stages["clean"], budget_s)
        for name in args.variants:
            print(f"{VARIANTS[name]}: SIGKILL of a random rank every ~{args.fault_every_s:.0f} s of training", flush=True)
            if name == "b":
                stages[name], loop = start_plain_submitit(cluster, runs_root, name, data, args.steps, args.every_steps)
            else:
                # blame_after=0: the injected kills pick a random rank, so two on one node are chance, not a bad
                # node; blaming it would spend the spare (tests/integration/test_faults_slurm.py tests blame).
                extra = {"a": ["resilience.spare_nodes=1"] if args.node_down else [],
                         "c": ["resilience.in_job_restart=false"]}[name] + ["resilience.blame_after=0"]
                stages[name] = submit_cpt(cluster, runs_root, name, data, args.steps, args.every_steps, *extra)
            injector = FaultInjector(stages[name], args.fault_every_s, args.steps, random.Random(args.seed), cluster,
                                     args.node_down)
            injectors[name] = injector
            injector.run(budget_s + 120 * (args.steps * SECONDS_PER_STEP_GUESS / args.fault_every_s))
            if name == "b" and loop.error:
                raise BenchmarkError(f"plain submitit: {loop.error}")
    except (BenchmarkError, KeyboardInterrupt) as exc:
        print(f"benchmark stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        if args.keep is None:
            shutil.rmtree(work / "cluster", ignore_errors=True)
    results = {name: goodput.collect_stage(stage) for name, stage in stages.items()}
    print(f"\ngoodput, 2-node tiny CPT on a local Slurm cluster ({args.steps} steps, checkpoint every "
          f"{args.every_steps}; benchmark wall time {time.time() - t_start:.0f} s)")
    print("\n".join(side_by_side(results)))
    print("\nside by side, same fault schedule (recovery: kill -> the next attempt's first step began):")
    print("\n".join(peer_table({VARIANTS[n]: results[n] for n in injectors},
                                {VARIANTS[n]: i.faults for n, i in injectors.items()})))
    for name, injector in injectors.items():
        print(f"\nfaults of {VARIANTS[name]} ({len(injector.faults)}):")
        print("\n".join(fault_lines(results[name], injector.faults, records(stages[name] / "ledger.jsonl"))))
    outcome = {name: (finished(stage) or {}).get("action") for name, stage in stages.items()}
    if args.keep is not None:
        for name, s in results.items():
            written = goodput.write_report(f"run {name}", [s], runs_root / name / "reports", one_run=True)
            print(f"report: {written['md']}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nended: {', '.join(f'{n} {a}' for n, a in outcome.items())}")
    return 0 if all(a == "done" for a in outcome.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
