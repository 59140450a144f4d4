"""Spare nodes (resilience.spare_nodes): which nodes the ranks' step runs on, when a lost node is swapped
inside the allocation, and what the batch script asks of Slurm. The swap itself on a real cluster:
tests/integration/test_faults_slurm.py::test_a_node_set_down_is_swapped_for_a_spare_inside_the_allocation."""
import shlex

import pytest

from jobs import slurm_launcher
from saul.config.compose import compose
from saul.config.errors import ConfigError
from saul.resilience.spares import parse_job_nodelist, pick, pick_count, swap_record, usable_count
from saul.resilience.step_restart import decide_in_job
from saul.rundir import RunDir


def test_the_first_usable_nodes_in_allocation_order_are_picked():
    assert pick(["n1", "n2", "n3"], [], [], 2) == ["n1", "n2"]
    assert pick(["n1", "n2", "n3"], ["n2"], [], 2) == ["n1", "n3"]  # the batch host stays first
    assert pick(["n1", "n2", "n3", "n4"], ["n2"], ["n3"], 2) == ["n1", "n4"]  # excluded by the run's ledger
    assert pick(["n1", "n2", "n3"], ["n2"], ["n3"], 2) is None  # no spare left
    assert usable_count(["n1", "n2", "n3"], ["n2"], ["n2", "n3"]) == 1


def test_with_allow_shrink_the_largest_count_the_usable_nodes_cover_is_picked():
    assert pick_count(["n1", "n2"], [], [], [2, 1]) == ["n1", "n2"]
    assert pick_count(["n1", "n2"], ["n2"], [], [2, 1]) == ["n1"]
    assert pick_count(["n1", "n2", "n3", "n4"], ["n2"], [], [4, 2, 1]) == ["n1", "n3"]  # 3 would not keep the batch
    assert pick_count(["n1", "n2"], ["n1", "n2"], [], [2, 1]) is None


def test_the_allocation_is_read_from_nodelist_not_from_requested_or_excluded_lists():
    text = ("JobId=7 JobName=saul ReqNodeList=(null) ExcNodeList=n9 NodeList=n[1,3] BatchHost=n1 "
            "NumNodes=2 NumCPUs=2")
    assert parse_job_nodelist(text) == "n[1,3]"
    assert parse_job_nodelist("JobId=7 NodeList=(null) ReqNodeList=n1") == ""
    assert parse_job_nodelist("") == ""


def test_a_swap_record_names_the_failed_node_and_its_replacement():
    record = swap_record("7", ["n1", "n2"], ["n1", "n3"], spares_left=0, launch=1)
    assert record["event"] == "node_swap" and record["failed"] == ["n2"] and record["replacements"] == ["n3"]
    assert record["nodes_after"] == ["n1", "n3"] and record["spares_left"] == 0 and record["step_restart"] == 1
    shrink = swap_record("7", ["n1", "n2"], ["n1"], spares_left=0, launch=1)
    assert shrink["event"] == "shrink" and shrink["failed"] == ["n2"] and shrink["replacements"] == []


def decide(code=137, history=(), checkpoint_step=8, budget=3, lost=(), spare_ready=False):
    return decide_in_job(code, False, list(history), checkpoint_step, budget, True, list(lost), None, 0.0, False,
                         spare_ready)


def test_a_lost_node_with_a_spare_is_swapped_without_spending_the_failure_budget():
    spent = [{"event": "step_restart", "class": "crash", "checkpoint_step": 8}] * 2
    assert not decide(history=spent)[0]  # a third crash without progress: the budget stops it
    relaunch, why = decide(history=spent, lost=["n2"], spare_ready=True)
    assert relaunch and "n2 out of service or blamed: relaunching on the healthy nodes of this allocation" in why
    relaunch, why = decide(lost=["n2"], spare_ready=False)
    assert not relaunch and "no spare is left" in why
    assert not decide(code=0, lost=["n2"], spare_ready=True)[0]  # the stage finished: nothing to swap


def rendered(*extra):
    cfg = compose(["stage=cpt", "site=local-slurm", "nodes=2", "run=r", "runs_root=/tmp/saul-spares-test", *extra],
                  env={}).cfg
    rundir = RunDir.from_config(cfg)
    return slurm_launcher.render_batch_script(cfg, rundir, env={})[0], rundir


def test_spares_hold_more_nodes_with_no_kill_and_run_the_ranks_on_the_picked_ones():
    script, rundir = rendered("resilience.spare_nodes=1", "nproc=2")
    assert "#SBATCH --nodes=3" in script and "#SBATCH --no-kill" in script
    ranks = shlex.split(next(line for line in script.splitlines() if "--job-name=saul-ranks" in line))
    assert f"--nodelist={rundir.root / 'step_nodes'}" in ranks
    loop = script.split("while :; do")[1]
    pick_at = loop.index("-m saul.resilience.spares")
    # srun reads the picked count as --nodes and the ranks as --ntasks; submitit's ranks read them too
    read_at = loop.index('read -r MASTER_ADDR SLURM_JOB_NUM_NODES saul_moved <<<"$saul_pick"')
    assert pick_at < read_at < loop.index("--job-name=saul-ranks")
    assert "export SLURM_NTASKS=$((SLURM_JOB_NUM_NODES * 2))" in loop
    assert loop.count("--node-counts 2 ") == 1 and "--node-counts 2 --blame-after 2 || break" in loop


def test_after_the_ranks_move_the_meters_are_relaunched_on_the_new_nodes_only():
    script, rundir = rendered("resilience.spare_nodes=1", "nproc=2", "energy.enabled=true")
    loop = script.split("while :; do")[1]
    block = loop[loop.index('if [ "$saul_moved" = 1 ]'):loop.index("\nfi\n")]
    # the old meter step is stopped first (its own stop file), then one meter per node the ranks now use
    assert block.index('touch "$SAUL_METER_STOP"') < block.index("--job-name=saul-meter")
    meter = shlex.split(next(line for line in block.splitlines() if "--job-name=saul-meter" in line))
    assert f"--nodelist={rundir.root / 'step_nodes'}" in meter and "--ntasks-per-node=1" in meter
    assert '-$saul_step"' in block.split("export SAUL_METER_STOP=")[1].splitlines()[0]  # not the old step's file
    assert "-m saul.resilience.spares" in block and "--meter-restarted" in block
    assert block.index("--job-name=saul-meter") < loop.index("--job-name=saul-ranks")
    plain, _ = rendered("nproc=2", "energy.enabled=true")  # no spares, no shrink: the ranks never move
    assert "saul_moved" not in plain


@pytest.mark.parametrize("extra, counts", [
    (["nodes=4", "train.grad_accum=2"], [4, 2, 1]),  # 3 nodes cannot keep 4 x 2 accumulation steps whole
    (["nodes=3", "train.grad_accum=2"], [3, 2, 1]),
    (["nodes=4", "train.grad_accum=1"], [4, 2, 1]),
    (["nodes=4", "parallel=zero3"], [4]),  # mixtral-8x7b's ZeRO-3 shards per rank would grow past host memory
    (["nodes=4", "parallel=zero3", "model=tiny-mixtral"], [4, 2, 1]),  # resliced: saul.train.universal_checkpoint
])
def test_allow_shrink_lists_the_node_counts_that_keep_the_global_batch(extra, counts):
    cfg = compose(["stage=cpt", "site=local-slurm", "run=r", "runs_root=/tmp/saul-spares-test",
                   "parallel=ddp", "resilience.allow_shrink=true", *extra], env={}).cfg
    assert slurm_launcher.step_node_counts(cfg) == counts


def test_allow_shrink_alone_holds_no_spare_but_survives_a_lost_node():
    script, _ = rendered("resilience.allow_shrink=true", "model=tiny-mixtral")  # ddp, grad_accum 2
    assert "#SBATCH --nodes=2" in script and "#SBATCH --no-kill" in script
    assert "--node-counts 2,1)" in script and "--node-counts 2,1 --blame-after 2 || break" in script


def test_without_spares_the_script_holds_exactly_the_nodes_and_no_no_kill():
    script, _ = rendered()
    assert "#SBATCH --nodes=2" in script and "--no-kill" not in script and "saul.resilience.spares" not in script


def test_a_negative_spare_count_is_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"resilience.spare_nodes=-1 is out of range: it must be >= 0"):
        rendered("resilience.spare_nodes=-1")
