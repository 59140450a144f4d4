"""The typed schema of a run: every key a user can set, its type, default and meaning.

YAML presets (stage defaults, model presets, site files) and command-line overrides are merged
onto these dataclasses by OmegaConf, which rejects unknown keys and wrong types; `validate.py`
adds the range and cross-field checks. This module must stay importable without torch: the
login side composes and validates configs on a login node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

STAGES = ("prepare", "cpt", "anneal", "ift", "dpo", "eval")  # one module each in saul/stages/, one preset each
# The order a run's model passes through the stages: a pipeline's stages run in this order, and
# `jobs/status.py` lists them so (ift and dpo take their place when they join STAGES).
PIPELINE_ORDER = ("prepare", "cpt", "anneal", "ift", "dpo", "eval")
PARALLEL = ("ddp", "zero3")
GPU_VENDORS = ("none", "amd", "nvidia")
SCHEDULERS = ("none", "slurm")
# trl 1.x DPO loss types (DPOTrainer._compute_loss), checked at submit; a test checks trl accepts each.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
                  "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass
class ModelConfig:
    """A Mixtral-family decoder; `path` loads an HF-format directory instead of random init."""

    name: str = "tiny-mixtral"
    path: str = ""  # local HF-format model directory (never a Hub id: no network at run time)
    init_from_stage: str = ""  # a stage name of this run: start from <run>/<stage>/final (e.g. anneal from cpt)
    vocab_size: int = 1000
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    num_local_experts: int = 4
    num_experts_per_tok: int = 2
    max_position_embeddings: int = 4096
    rope_theta: float = 1.0e6
    sliding_window: Optional[int] = None
    router_aux_loss_coef: float = 0.02
    tie_word_embeddings: bool = False
    dtype: str = "float32"  # float32 | bfloat16 (bf16 on GPUs; fp32 keeps CPU runs bitwise-reproducible)
    attn_implementation: str = "auto"  # auto | flash_attention_2 | sdpa | eager
    activation_checkpointing: bool = False


@dataclass
class OptimConfig:
    """AdamW with warmup + cosine decay. Defaults are the SaulLM CPT values."""

    lr: float = 2.0e-5
    betas: List[float] = field(default_factory=lambda: [0.99, 0.90])  # as printed in the paper
    eps: float = 1.0e-8
    weight_decay: float = 0.1
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant | linear
    # Steps the schedule spans (its horizon). 0 = train.max_steps of the first submit, written into
    # config.yaml then: a later train.max_steps change moves the end of training, not the LR curve;
    # steps past the horizon run at min_lr_ratio x lr.
    schedule_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class SourceConfig:
    """One input of the prepare pipeline (saul.data.extract): a directory or glob of files."""

    path: str = ""  # directory (walked recursively) or glob; relative paths resolve against data.root
    role: str = "legal"  # legal | replay | math | instruct
    weight: Optional[float] = None  # token share of the mix; None = legal sources share the rest
    format: str = "auto"  # auto (from the extension) | pdf | txt | html | jsonl | parquet | synthetic
    text_field: str = "text"  # jsonl/parquet column holding the document
    name: str = ""  # name in the audit files and reports; empty = the path's last component
    perplexity: Optional[bool] = None  # through the KenLM filter; None = true for role legal, false otherwise


@dataclass
class DataConfig:
    """Where the packed token shards are, and how prepare makes them (saul.data.pipeline)."""

    path: str = ""  # packed dataset directory; empty = runs/<run>/data (written by stage=prepare)
    source: str = "synthetic"  # prepare without data.sources: synthetic (saul.data.synthetic)
    num_documents: int = 400
    tokenizer_vocab_size: int = 1000
    num_workers: int = 0
    sources: List[SourceConfig] = field(default_factory=list)  # the real pipeline's inputs
    root: str = ""  # base directory for relative source paths (presets use it)
    tokenizer: str = "auto"  # auto (from the model) | local-bpe | mistral-v1 | mistral-v3 | DIR with tokenizer.json
    kenlm_model: str = ""  # ARPA or KenLM binary; empty = no perplexity filter
    max_perplexity: float = 1500.0  # the paper's cut on normalized perplexity
    decontaminate: List[str] = field(default_factory=list)  # LegalBench task dirs (test.tsv), MMLU files/dirs
    min_words: int = 50  # shorter documents after cleaning are dropped (reason: rule)
    minhash_ngram: int = 5  # word n-grams (text-dedup's default)
    minhash_bands: int = 42  # 42 bands x 6 rows = 252 of 256 permutations: threshold ~0.5
    minhash_rows: int = 6
    piece_mb: float = 64.0  # the unit of work and of resume: ~this much input (saul/data/pieces.py says why 64)
    pdf_timeout_s: float = 120.0  # a PDF whose extraction takes longer is a counted skip (saul/data/pdf_worker.py)


@dataclass
class TrainConfig:
    """Step loop sizes. Global batch = micro_batch x grad_accum x world size (in sequences)."""

    max_steps: int = 1000  # ift, dpo: 0 = their epochs in steps, ceil(epochs x rows / global batch)
    micro_batch: int = 8
    grad_accum: int = 4
    seq_len: int = 8192
    log_every: int = 1
    log_sample_ids: bool = False  # write every step's sample ids to metrics.jsonl (tests, audits)
    deterministic: bool = True
    threads_per_rank: int = 0  # torch intra-op threads per rank on CPU; 0 = cores / local ranks
    stop_after_steps: int = 0  # leave cleanly (exit code "stopped, resume me") after N steps of this attempt


@dataclass
class CheckpointConfig:
    # steps between saves, or "auto": Young's interval from the measured save cost and the run's failure rate
    # (saul/resilience/checkpoint_interval.py)
    every_steps: Any = 100
    keep_last: int = 3
    save_on_stop: bool = True  # checkpoint when a stop signal (time limit, preemption) arrives
    # DDP: snapshot the state into host memory at the step boundary and write, fsync and hash it in a background
    # thread while training goes on (one extra host copy of rank 0's model + optimizer state while a save is
    # in flight); ZeRO-3 always saves synchronously (saul/train/async_checkpoint.py)
    async_save: bool = True
    # final/ is written in safetensors shards of about this size, one module gathered at a time:
    # no rank ever holds the whole model (8x22B is ~281 GB in bf16)
    export_shard_gb: float = 5.0


@dataclass
class ResilienceConfig:
    """What happens when things break (see README: what happens when things break)."""

    failure_budget: int = 3  # crashes in a row without a new checkpoint before the requeue path gives up
    hang_timeout_s: float = 900.0  # no training progress for this long (checkpoint I/O excluded) = a hang
    start_grace_s: float = 1800.0  # time allowed from job start to the first heartbeat (imports, loading)
    max_excluded_nodes: int = 16  # cap, so a run never excludes itself out of the partition
    in_job_restart: bool = True  # relaunch crashed/hung ranks inside the allocation (no requeue) while the budget lasts
    spare_nodes: int = 0  # Slurm: hold nodes + K (--no-kill), run on `nodes`, swap a failed node for a spare in the job
    allow_shrink: bool = False  # go on with fewer nodes when one is lost and no spare is left (another world size
    # resumes the checkpoint with the grad_accum that keeps its global batch; ZeRO-3 shards through DeepSpeed's
    # universal checkpoint, saul.train.universal_checkpoint), and back to `nodes` after a requeue
    # a node whose ranks died first in this many crashed launches is blamed and excluded like a failed one (a spare
    # replaces it, or the run shrinks, or the requeue avoids it: saul/resilience/blame.py); 0: never blame
    blame_after: int = 2


@dataclass
class EnergyConfig:
    """One power meter per node per job (monitoring/meter.py), sources from the site file."""

    enabled: bool = True
    interval_s: float = 1.0
    pm_counters_root: str = ""  # default /sys/cray/pm_counters
    rapl_root: str = ""  # default /sys/class/powercap


@dataclass
class ContainerConfig:
    """Apptainer image every rank runs in; empty image = run on the host Python."""

    image: str = ""
    runtime: str = "apptainer"
    gpu_flag: str = ""  # --rocm | --nv
    binds: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)


@dataclass
class SiteConfig:
    """One cluster, as data. Files in site_configs/ fill this; `local` means no Slurm at all."""

    name: str = "local"
    description: str = ""
    source: str = ""  # where the figures come from (site documentation)
    scheduler: str = "none"  # none | slurm
    cluster_name: str = ""  # Slurm ClusterName, used for auto-detection
    partition: str = ""
    account: str = ""
    account_env: str = "SAUL_ACCOUNT"  # environment variable holding the account when `account` is empty
    account_required: bool = False
    qos: str = ""
    time_limit_min: int = 60
    exclusive: bool = False
    gpu_vendor: str = "none"  # none | amd | nvidia
    gpus_per_node: int = 0  # devices visible to Slurm (GCDs on MI250X)
    gpu_packages_per_node: int = 0  # physical packages (4 MI250X = 8 GCDs)
    cpus_per_node: int = 0  # usable cores; 0 = whatever the machine has
    mem_per_node_gb: int = 0
    device_memory_gb: float = 0.0
    peak_tflops_bf16_per_device: float = 0.0
    gpu_cpu_bind: List[str] = field(default_factory=list)  # per-local-rank CPU mask/list (NUMA map)
    signal: str = "USR2"
    signal_delay_s: int = 120
    sbatch_extra: List[str] = field(default_factory=list)
    srun_extra: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)  # values may use $VAR/${VAR} of the node; nothing else expands
    # Variables forwarded by name from the submitting shell at run time (tokens, keys): no value is written anywhere.
    env_passthrough: List[str] = field(default_factory=list)
    modules: List[str] = field(default_factory=list)
    host_python: str = "python3"  # the batch host's interpreter for the job-script helpers (stdlib, Python >= 3.8)
    wckey: str = ""  # Slurm workload characterization key; empty = none (sites that enforce wckeys set theirs)
    container: ContainerConfig = field(default_factory=ContainerConfig)
    energy_sources: List[str] = field(default_factory=list)  # pm_counters | amdsmi | nvml | rapl | estimate
    country_iso_code: str = "FRA"  # codecarbon offline carbon intensity
    default_nproc: int = 1  # processes per node when nproc=0


@dataclass
class EvalConfig:
    """stage=eval (saul/eval): LegalBench-format tasks by balanced accuracy, MMLU legal subsets by accuracy."""

    # Models compared side by side: stage names of this run (their final/), `base` (the model the run
    # started from) or HF-format paths. Empty = the one model.init_from_stage or model.path names.
    models: List[str] = field(default_factory=list)
    tasks: List[str] = field(default_factory=list)  # LegalBench-format task folders, or folders of them (a suite)
    few_shot: int = 0  # train.tsv rows put before each query (LegalBench base prompts already carry their demos)
    max_new_tokens: int = 16  # greedy generation stops at a newline or here
    max_examples: int = 0  # per task and MMLU subject, from the top; 0 = all (quick runs)
    batch_size: int = 8  # prompts per generate() call per rank
    categories: Dict[str, str] = field(default_factory=dict)  # task -> reasoning category, over the built-in table
    mmlu_dir: str = ""  # MMLU files: dev/<subject>_dev.csv|jsonl and test/<subject>_test.csv|jsonl; empty = no MMLU
    mmlu_subjects: List[str] = field(default_factory=lambda: ["international_law", "professional_law", "jurisprudence"])
    mmlu_shots: int = 5  # dev examples before each question
    stop_after_tasks: int = 0  # leave cleanly (exit code "stopped, resume me") after N tasks of this attempt


@dataclass
class IftConfig:
    """stage=ift (saul/posttrain): instruction fine-tuning, loss on assistant tokens, packed rows."""

    data: List[str] = field(default_factory=list)  # JSONL files of conversations / prompt-completion pairs; empty = demo data
    demo_conversations: int = 2000  # generated when `data` is empty (saul/posttrain/demo_data.py)
    demo_general_fraction: float = 0.25  # share of general (non-legal) instructions in the demo mix
    epochs: int = 1  # passes over the packed rows; steps = ceil(epochs x rows / global batch)


@dataclass
class DpoConfig:
    """stage=dpo (saul/posttrain): trl's DPO loss against stored reference log-probabilities."""

    data: List[str] = field(default_factory=list)  # JSONL {"prompt","chosen","rejected"}; empty = demo pairs
    demo_pairs: int = 1000  # generated when `data` is empty
    epochs: int = 1
    beta: float = 0.1  # trl DPOConfig default; the paper does not give one
    loss_type: List[str] = field(default_factory=lambda: ["sigmoid"])  # any of trl's (DPO_LOSS_TYPES)
    loss_weights: List[float] = field(default_factory=list)  # one per loss_type; empty = 1.0 each
    label_smoothing: float = 0.0  # robust / exo_pair / aot losses


@dataclass
class PipelineConfig:
    """stage=pipeline (jobs/pipeline.py): several stages of one run, each from the previous one's output.

    Not part of a stage's config.yaml: the pipeline composes every stage from the same command line
    plus `pipeline.<stage>.<key>=value` settings meant for that stage alone (e.g.
    `pipeline.cpt.optim.lr=1e-3`, `pipeline.eval.eval.tasks=[DIR]`), which win over the shared ones."""

    # In PIPELINE_ORDER; empty = every stage this version has, in that order.
    stages: List[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """The whole, resolved configuration of one stage of one run (frozen in config.yaml)."""

    stage: str = "cpt"
    run: str = ""  # run name; empty = model.name, the same for every stage (prepare, then cpt, meet)
    runs_root: str = "runs"
    nodes: int = 1
    nproc: int = 0  # processes (ranks) per node; 0 = the site's default (one per GPU device)
    parallel: str = "ddp"  # ddp | zero3
    seed: int = 1234
    dry_run: bool = False
    follow: bool = False  # Slurm sites: stay attached, print rank 0's log, exit with the stage's outcome
    time_limit_min: int = 0  # 0 = the site's limit
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ift: IftConfig = field(default_factory=IftConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
