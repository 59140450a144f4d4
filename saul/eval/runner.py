"""stage=eval on every rank: each (model, task) is one unit of work; examples are sharded across ranks.

For each model (in `eval.models` order) and each unit not yet finished (LegalBench tasks, then
MMLU subjects): every rank takes examples i with i % world == rank, generates (or scores the
four choices) in batches, and rank 0 gathers the outputs (torch.distributed all_gather_object),
scores them, writes predictions/<task>.jsonl and then done/<model>/<task>.json. A killed eval
rerun with the same command skips the units that have a done/ file; a model whose units are
all done is not even loaded. A stop request (time-limit signal, Ctrl-C, `eval.stop_after_tasks`)
is voted on by all ranks after every batch: the unit in progress is dropped (it is redone on
resume) and the ranks exit with the "stopped, resume me" code.

`saul.stage_entry` wraps this in the same rank set-up and ledger attempt records as training;
the heartbeat and the stop request are the shared ones (saul.resilience), and the node power
meter is started by the launcher for every stage, so energy needs nothing here.
"""
from __future__ import annotations

import math
import time
from typing import List, Sequence, Tuple

import torch

from saul import exit_codes
from saul.eval import inputs, legalbench, mmlu, results, scoring
from saul.eval.generation import choice_loglikelihoods, generate, load_model, materialize_random_init
from saul.resilience import stop_request
from saul.resilience.heartbeat import Heartbeat
from saul.rundir import RunDir
from saul.train import distributed
from saul.train.metrics import MetricsWriter

CHOICES = tuple(f" {letter}" for letter in mmlu.LETTERS)


class Stopped(Exception):
    """The ranks agreed to stop in the middle of a unit."""


class EvalRunner:
    def __init__(self, cfg, rundir: RunDir, info, device, say, attempt: int):
        self.cfg, self.rundir, self.info, self.device, self.say = cfg, rundir, info, device, say
        self.e = cfg.eval
        self.root = rundir.root
        self.attempt = attempt
        self.stop = stop_request.current()
        self.heartbeat = Heartbeat(rundir.heartbeats, enabled=info.is_main, job_id=info.job_id, attempt=attempt)
        self.metrics = MetricsWriter(rundir.metrics, enabled=info.is_main)
        self.units_done = 0

    # --- the plan ----------------------------------------------------------------------------
    def run(self) -> dict:
        self.heartbeat.beat(0, "start")
        tasks, subjects = inputs.load_tasks(self.cfg), inputs.load_subjects(self.cfg)
        models = inputs.resolve_models(self.cfg, self.rundir)
        units: List[Tuple[str, object]] = [(t.name, t) for t in tasks] + [(s.task_name, s) for s in subjects]
        done = distributed.broadcast_object({(m.label, name) for m in models for name, _ in units
                           if results.read_done(self.root, m.label, name) is not None} if self.info.is_main else None)
        total = len(models) * len(units)
        self.units_done = len(done)
        names = ", ".join(f"{m}/{u}" for m, u in sorted(done))
        self.say(f"eval attempt {self.attempt}: {len(models)} model(s) x {len(units)} task(s) on {self.info.world_size} "
                 f"rank(s); {len(done)} finished before" + (f" ({names}), kept" if done else ""))
        this_attempt = 0
        try:
            for source in models:
                pending = [(name, unit) for name, unit in units if (source.label, name) not in done]
                if not pending:
                    continue
                lm = self._load(source)
                for name, unit in pending:
                    # Before a unit, so a stop after the last one is no stop.
                    if distributed.any_rank(self.stop.requested):
                        raise Stopped()
                    t0 = time.time()
                    if isinstance(unit, legalbench.Task):
                        score, n = self._legalbench(lm, source.label, unit)
                    else:
                        score, n = self._mmlu(lm, source.label, unit)
                    self.units_done += 1
                    this_attempt += 1
                    self._report_unit(source.label, name, score, n, time.time() - t0, total)
                    if this_attempt == self.e.stop_after_tasks:
                        self.stop.request(f"eval.stop_after_tasks={self.e.stop_after_tasks} reached")
                del lm
        except Stopped:
            reason = self.stop.describe() if self.stop.requested else "another rank was asked to stop"
            self.say(f"stopping after {self.units_done}/{total} tasks: {reason}; resume with the same command")
            return self._finish(exit_codes.STOPPED, reason, this_attempt, total)
        if self.info.is_main:
            report = results.collect(self.root, [{"label": m.label, "path": str(m.path)} for m in models],
                                     [t.name for t in tasks], [s.name for s in subjects], self.cfg.run)
            written = results.write_reports(self.root, report)
            self.say("evaluation table:\n" + results.markdown(report)
                     + "reports: " + ", ".join(str(p) for p in written.values()))
        return self._finish(exit_codes.DONE, "all tasks evaluated", this_attempt, total)

    def _finish(self, code: int, reason: str, this_attempt: int, total: int) -> dict:
        """The result, whose extra fields go into the attempt's ledger end record."""
        self.heartbeat.beat(self.units_done, "done")
        self.metrics.close()
        return {"exit_code": code, "step": self.units_done, "reason": reason, "tasks_this_attempt": this_attempt,
                "tasks_total": total}

    def _load(self, source: inputs.ModelSource):
        self.heartbeat.beat(self.units_done, "load")
        if source.random_init_config is not None and not (source.path / "config.json").is_file():
            if self.info.is_main:
                from omegaconf import OmegaConf

                first = OmegaConf.load(source.random_init_config)
                materialize_random_init(first.model, first.seed, source.tokenizer_dir, source.path)
                self.say(f"base: random init of {source.random_init_config.parent.name} (seed {first.seed}) "
                         f"written to {source.path}")
            distributed.barrier()
        t0 = time.time()
        lm = load_model(source.path, self.device, self.cfg.model.dtype, self.cfg.model.attn_implementation)
        self.say(f"model {source.label}: {lm.describe} ({time.time() - t0:.1f}s)")
        return lm

    def _report_unit(self, model: str, name: str, score: dict, n: int, seconds: float, total: int) -> None:
        if not self.info.is_main:  # only rank 0 holds the scores
            return
        metric = score.get("balanced_accuracy", score.get("accuracy"))
        kind = "balanced accuracy" if "balanced_accuracy" in score else "accuracy"
        extra = f", {score['parse_failures']} parse failures" if "parse_failures" in score else ""
        self.say(f"[{self.units_done}/{total}] {model} {name}: {kind} {metric:.3f} on {n} examples{extra} "
                 f"({seconds:.1f}s)")
        # A step record (no "event" key): `jobs/status.py` shows tasks done / total and an ETA from it.
        self.metrics.write({"step": self.units_done, "max_steps": total, "model": model, "task": name,
                            "examples": n, "step_time_s": round(seconds, 4), "examples_per_s": round(n / max(seconds, 1e-9), 3)})

    # --- units -------------------------------------------------------------------------------
    def _shard(self, n: int) -> Tuple[List[int], int]:
        """(this rank's example positions, batches every rank runs: the same count on all ranks,
        so the per-batch stop vote is one collective everywhere)."""
        world, rank = self.info.world_size, self.info.rank
        mine = list(range(rank, n, world))
        return mine, math.ceil(math.ceil(n / world) / self.e.batch_size)

    def _batches(self, mine: Sequence[int], n_batches: int, work):
        out = []
        for b in range(n_batches):
            self.heartbeat.beat(self.units_done, "train")  # the watchdog's progress phase
            chunk = list(mine[b * self.e.batch_size:(b + 1) * self.e.batch_size])
            if chunk:
                out.extend(work(chunk))
            if distributed.any_rank(self.stop.requested):
                raise Stopped()
        return out

    def _limit(self, items: list) -> list:
        return items[: self.e.max_examples] if self.e.max_examples else items

    def _legalbench(self, lm, model: str, task: legalbench.Task):
        examples = self._limit(task.examples)
        mine, n_batches = self._shard(len(examples))

        def work(chunk):
            outputs, cut = generate(lm, [task.prompt(examples[i], self.e.few_shot) for i in chunk], self.e.max_new_tokens)
            return list(zip(chunk, outputs, cut))

        shares = distributed.all_gather_objects(self._batches(mine, n_batches, work))
        score = None
        if self.info.is_main:
            by_pos = {i: (text, cut) for share in shares for i, text, cut in share}
            gold = [legalbench.normalize(e.answer) for e in examples]
            predicted = [legalbench.parse_label(by_pos[i][0], task.labels) for i in range(len(examples))]
            score = scoring.task_score(task.name, gold, predicted, scoring.category_of(task.name, self.e.categories))
            score["truncated_prompts"] = sum(cut for _, cut in by_pos.values())
            rows = [{"index": e.index, "answer": e.answer, "prediction": p, "output": by_pos[i][0]}
                    for i, (e, p) in enumerate(zip(examples, predicted))]
            self._commit(model, task.name, rows, score)
        distributed.barrier()
        return score or {}, len(examples)

    def _mmlu(self, lm, model: str, subject: mmlu.Subject):
        questions = self._limit(subject.test)
        mine, n_batches = self._shard(len(questions))

        def work(chunk):
            out = []
            for i in chunk:
                lls, cut = choice_loglikelihoods(lm, subject.prompt(questions[i], self.e.mmlu_shots), CHOICES)
                out.append((i, lls, cut))
            return out

        shares = distributed.all_gather_objects(self._batches(mine, n_batches, work))
        score = None
        if self.info.is_main:
            by_pos = {i: (lls, cut) for share in shares for i, lls, cut in share}
            predicted = [max(range(len(CHOICES)), key=lambda k, i=i: by_pos[i][0][k]) for i in range(len(questions))]
            score = {"accuracy": scoring.accuracy([q.answer for q in questions], predicted), "n": len(questions),
                     "truncated_prompts": sum(cut for _, cut in by_pos.values())}
            rows = [{"index": q.index, "answer": mmlu.LETTERS[q.answer], "prediction": mmlu.LETTERS[p],
                     "output": dict(zip(mmlu.LETTERS, by_pos[i][0]))} for i, (q, p) in enumerate(zip(questions, predicted))]
            self._commit(model, subject.task_name, rows, score)
        distributed.barrier()
        return score or {}, len(questions)

    def _commit(self, model: str, name: str, rows: list, score: dict) -> None:
        """Predictions first, the done/ file last: a kill between the two only redoes the unit."""
        results.write_predictions(self.root, name, model, rows)
        results.mark_done(self.root, model, name, score)
        self.metrics.sync()

