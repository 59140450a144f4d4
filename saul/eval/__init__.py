"""stage=eval: LegalBench-format tasks scored by balanced accuracy, MMLU legal subsets by log-likelihood.

    legalbench.py  task folders, prompts, few-shot, answer normalization, first-valid-label parsing
    mmlu.py        MMLU files (csv or jsonl), 5-shot prompts
    scoring.py     balanced accuracy (scikit-learn), reasoning categories, macro averages
    generation.py  model loading, greedy generation, choice log-likelihoods (torch)
    inputs.py      which models and tasks, checked on the login side before submitting
    results.py     done/ markers, predictions/<task>.jsonl, results.json, report.md, comparison.png
    runner.py      the stage on every rank: sharding, gather, resume, stop vote, ledger, heartbeat
    fixtures.py    small MMLU- and LegalBench-format data made by our own code

Why our own code and not lm-evaluation-harness (0.4.13, checked Dec 2026):
- What the paper reports is not in it: LegalBench's balanced accuracy, the first-valid-label
  parsing of verbose outputs and the parse-failure rate; its LegalBench subset is exact match on
  data fetched from the Hub.
- Its HF wrapper (HFLM) runs multi-process through accelerate's `Accelerator`, which shards
  requests and gathers results its own way; our ranks are Slurm tasks in a process group we
  create, and resuming needs per-task completion files. Fitting it means stubbing the
  accelerator object, and it would still not resume a killed eval per task.
- Installing it adds ~10 packages to every image (evaluate, sacrebleu, rouge-score + nltk,
  pytablewriter, sqlitedict, word2number, dill, ...) and its task registry indexes thousands
  of YAML files at start. The part we would use, log-likelihood of a continuation, is ~20 lines
  here (generation.choice_loglikelihoods), following its recipe for the context/continuation
  token boundary. Only scikit-learn is added (for `balanced_accuracy_score`).
"""
