"""The recipe: typed dataclasses with every default in one place, loaded from YAML and validated once.

A recipe fully describes a run. Each field carries a one-line docstring (the string under it), which
`mtbert validate` and the README's recipe reference are written from, and each numeric field a range
(`@ranges` above its dataclass), checked as the recipe loads. The file is read strictly (mtbert/yamlfile.py:
UTF-8, no key twice, aliases bounded). Command-line overrides are dotted `key=value` pairs parsed as YAML
scalars and type-checked like the file. Errors name the file, the line and the key, and suggest the
nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mtbert import yamlfile
from mtbert.errors import MtbertError
from mtbert.model.plan import LORA_TARGETS, TARGET_SETS, SharingPlanError, parse_plan

Kind = Literal["classes", "binary", "regression"]
Format = Literal["cs224n", "glue", "csv", "tsv", "jsonl"]
SamplingStrategy = Literal["round_robin", "proportional", "temperature", "annealed", "uniform", "all_tasks"]
SharingMode = Literal["frozen", "shared", "individual"]
LoraTarget = Literal[LORA_TARGETS + tuple(TARGET_SETS)]


@dataclass(frozen=True)
class Range:
    """The values a numeric field may take, checked when the recipe loads: a low and a high bound (None:
    none), each included unless marked open. Every float must also be finite; a null is not checked."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"above {low}" if self.low_open else f"at least {low}"
        if self.high is not None:
            return f"below {high}" if self.high_open else f"at most {high}"
        return "a finite number"


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


FINITE = Range()
AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
ABOVE_0 = Range(0, low_open=True)
FRACTION = Range(0, 1, high_open=True)
"[0, 1): dropout, warm-up, betas."
PROBABILITY = Range(0, 1)

RANGES: dict[type, dict[str, Range]] = {}
"Dataclass -> its numeric fields' ranges; a test checks that every int or float field of the recipe has one."


def ranges(**bounds: Range):
    """Declare the ranges of a dataclass's numeric fields (a list field's items are each checked)."""
    def declare(cls: type) -> type:
        unknown = set(bounds) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
        RANGES.setdefault(cls, {}).update(bounds)  # a class may declare its fields' ranges in several lines
        return cls
    return declare


@ranges(hidden_size=AT_LEAST_1, num_layers=AT_LEAST_1, num_heads=AT_LEAST_1, intermediate_size=AT_LEAST_1,
        max_position_embeddings=AT_LEAST_1)
@dataclass
class SizeConfig:
    """Encoder size, used when `model.init` is `random`."""

    hidden_size: int = 128
    "Width of every token vector."
    num_layers: int = 2
    "Number of transformer layers."
    num_heads: int = 2
    "Attention heads per layer; must divide hidden_size."
    intermediate_size: int = 512
    "Width of the feed-forward layer."
    max_position_embeddings: int = 512
    "Longest input the position table covers."


@dataclass
class PartSharingConfig:
    """How the embeddings are shared (structured plan)."""

    mode: SharingMode
    "frozen (one copy, never trained), shared (one copy, trained by every task) or individual (a copy per group)."
    groups: list[list[str]] | None = None
    "individual only: tasks that share one copy, e.g. [[quora, sts]]; a task in no group gets its own."


@dataclass
class LayerSharingConfig:
    """How a layer or a range of layers is shared (structured plan)."""

    range: str
    "Layer index or inclusive range, 0 at the bottom: 3, 0-3, or all."
    mode: SharingMode
    "frozen (one copy, never trained), shared (one copy, trained by every task) or individual (a copy per group)."
    groups: list[list[str]] | None = None
    "individual only: tasks that share one copy, e.g. [[quora, sts]]; a task in no group gets its own."


@ranges(layers=AT_LEAST_1)
@dataclass
class RelationalConfig:
    """Extra encoder layer(s) on top of the stack, owned by one task group."""

    tasks: list[str]
    "The owning task group, e.g. [quora, sts]; other tasks do not run through these layers."
    layers: int = 1
    "How many extra layers."
    init: Literal["copy_top", "random"] = "copy_top"
    "copy_top: copies of the encoder's top layer as loaded (pretrained weights); random: BERT's normal init."


# Null settings take the defaults of mtbert.model.plan.Adapter, the only place they are written.
@ranges(r=AT_LEAST_1, alpha=ABOVE_0, dropout=FRACTION, size=AT_LEAST_1, heads=AT_LEAST_1)
@dataclass
class AdapterConfig:
    """Per-task adapters on the encoder's layers (structured plan): LoRA through peft, or PALs."""

    type: Literal["lora", "pals"]
    "lora (Hu et al. 2021: a low-rank update B A beside chosen projections) or pals (Stickland & Murray 2019)."
    groups: list[list[str]] | None = None
    "Tasks that share one adapter, e.g. [[quora, sts]]; a task in no group gets its own."
    r: int | None = None
    "lora: the rank of each update; null: 8."
    alpha: float | None = None
    "lora: the update is scaled by alpha / r; null: 16."
    dropout: float | None = None
    "lora: dropout on the adapter's input; null: 0."
    targets: list[LoraTarget] | None = None
    "lora: query, key, value, attention_output, ffn_in, ffn_out, or all / attention / ffn; null: [query, value]."
    size: int | None = None
    "pals: width of the projected attention; null: 204/768 of the hidden size (102 for MiniLM), a multiple of heads."
    heads: int | None = None
    "pals: attention heads in the projected space; null: 6."


@dataclass
class SharingConfig:
    """A structured sharing plan: a mode for the embeddings and for every layer, relational layers, an adapter."""

    layers: list[LayerSharingConfig]
    "Ranges covering every layer exactly once, e.g. [{range: 0-3, mode: frozen}, {range: 4-5, mode: shared}]."
    embeddings: SharingMode | PartSharingConfig | None = None
    "The embeddings' mode (or {mode, groups}); null: the same as layer 0."
    relational: list[RelationalConfig] = field(default_factory=list)
    "Relational layers, e.g. [{tasks: [quora, sts], layers: 1}]."
    adapter: AdapterConfig | None = None
    "Per-task adapters on the encoder's layers, e.g. {type: lora, r: 8}; null: none."


# A pair needs [CLS] a [SEP] b [SEP]; below 3 tokens the tokenizer silently stops truncating at all.
@ranges(dropout=FRACTION, max_length=Range(5))
@dataclass
class ModelConfig:
    """The shared encoder and its tokenizer."""

    init: str = "random"
    "A local folder (config.json + weights), a hub name such as bert-base-uncased, or `random`."
    tokenizer: str | None = None
    "Tokenizer folder or hub name; defaults to `init` (required when init is random)."
    size: SizeConfig = field(default_factory=SizeConfig)
    "Encoder size when init is random."
    dropout: float | None = None
    "Overrides the encoder's hidden and attention dropout; null keeps the checkpoint's."
    max_length: int = 128
    "Inputs are truncated to this many tokens (a pair counts both sentences); at least 5."
    sharing: str | SharingConfig = "shared"
    """`shared`, `frozen`, `individual`, a layer string like `F2-S3-I1[quora+sts]+R1[quora+sts]`, with an adapter
    (`frozen+lora[r=8]`, `F3-S3+pals`), or a mapping."""
    add_to: str | None = None
    """A model folder written by mtbert train whose base is frozen or shared and whose tasks have adapters: this run
    trains only its own tasks (each a new adapter and head) and leaves every other weight, and so every earlier
    task's predictions, bit-identical. The model's init, tokenizer, size, dropout, max_length and sharing come
    from that folder."""
    allow_pickle: bool = False
    "Load an `init` .bin/.pt file that needs full unpickling (it can run code): only for a file you trust."


@ranges(layers=AT_LEAST_1, hidden_size=AT_LEAST_1, dropout=FRACTION)
@dataclass
class HeadConfig:
    """A task's output head on top of the pooled vector."""

    type: Literal["linear", "mlp"] = "linear"
    "`linear`: one output layer; `mlp`: `layers` hidden layers, then the output layer."
    layers: int = 1
    "Hidden layers of an mlp head."
    hidden_size: int | None = None
    "Width of the mlp's hidden layers; defaults to the encoder's hidden size."
    activation: Literal["gelu", "relu", "tanh"] = "gelu"
    "Activation between mlp layers (style act_dropout; the other styles fix their own)."
    dropout: float = 0.1
    "Dropout on the pooled vector and between mlp layers."
    style: Literal["act_dropout", "ln_dropout_relu", "gelu_dropout"] = "act_dropout"
    "Each mlp hidden layer: act_dropout (Linear, activation, Dropout), ln_dropout_relu or gelu_dropout."


@dataclass
class HubConfig:
    """Where a task's data lives on the Hugging Face hub, used when its local folder is absent."""

    path: str
    "Dataset name for datasets.load_dataset, e.g. `glue`."
    name: str | None = None
    "Dataset configuration, e.g. `sst2`."
    text_columns: list[str] = field(default_factory=list)
    "Text column(s) in the hub dataset."
    label_column: str = "label"
    "Label column in the hub dataset."
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"})
    "mtbert split name -> hub split name."


@dataclass
class PromptConfig:
    """A custom prompt template: the example becomes `[CLS] question [SEP] context [SEP]`."""

    question: str
    "The question asked of every example, e.g. `Does the first question paraphrase the second?`."
    context: str
    "The context, with {a} (first sentence) and {b} (second), e.g. `First sentence: {a} Second sentence: {b}`."


SmartNorm = Literal["inf", "l2"]
SMART_RANGES = dict(adv_weight=AT_LEAST_0, prox_weight=AT_LEAST_0, epsilon=AT_LEAST_0, sigma=AT_LEAST_0,
                    step_size=AT_LEAST_0, steps=AT_LEAST_1)


@ranges(**SMART_RANGES)
@dataclass
class TaskSmartConfig:
    """One task's SMART settings; a null field takes the recipe's `smart:` value."""

    enabled: bool | None = None
    "SMART for this task (in stages that use SMART)."
    adv_weight: float | None = None
    "lambda_s: weight of the adversarial term."
    prox_weight: float | None = None
    "mu: weight of the proximal (momentum teacher) term."
    epsilon: float | None = None
    "Radius of the ball the perturbation is projected onto."
    sigma: float | None = None
    "Standard deviation of the initial Gaussian perturbation."
    step_size: float | None = None
    "eta: size of each ascent step on the perturbation."
    steps: int | None = None
    "K: ascent steps on the perturbation."
    norm: SmartNorm | None = None
    "The ball's norm: inf or l2."
    dropout_off: bool | None = None
    "Compute the adversarial term with dropout off."


# ---------------------------------------------------------------------------------------------
# Large and many tasks: tokenising workers, per-task evaluation budgets (TaskConfig.eval_examples, eval_every),
# streamed training data (TaskConfig.streaming) and sampling caps (SamplingConfig.size_cap, min_share).


@ranges(workers=AT_LEAST_1, stream_buffer=AT_LEAST_1)
@dataclass
class DataConfig:
    """How training data is prepared: read once into a memory-mapped cache, tokenised once (mtbert/data/)."""

    workers: int = 1
    "Processes that tokenise a split not yet cached (datasets' map num_proc); the token ids are the same."
    stream_buffer: int = 10000
    "Examples in the shuffle buffer of each streamed task (tasks.*.streaming): its order is shuffled within this."


@ranges(num_labels=Range(2), label_range=FINITE, batch_size=AT_LEAST_1, loss_weight=AT_LEAST_0,
        max_train_examples=AT_LEAST_1)
@ranges(eval_examples=AT_LEAST_1, eval_every=AT_LEAST_0)  # many tasks (see DataConfig's block)
@dataclass
class TaskConfig:
    """One task. For a built-in task every field is optional and overrides the built-in value;
    a custom task sets at least format, files, text_columns, label_column and kind."""

    format: Format | None = None
    "File format: cs224n (TSV with CSV quoting), glue (TSV, no quoting), csv, tsv or jsonl."
    train_file: str | None = None
    "Training file, relative to data_dir."
    dev_file: str | None = None
    "Development file, relative to data_dir."
    test_file: str | None = None
    "Test file (labels optional), relative to data_dir."
    text_columns: list[str] | None = None
    "One column (single sentence) or two (sentence pair)."
    label_column: str | None = None
    "Column holding the label or score."
    id_column: str | None = None
    "Column holding an example id (written into predictions)."
    columns: list[str] | None = None
    "Column names for a file without a header row (GLUE CoLA)."
    kind: Kind | None = None
    "classes (softmax), binary (one logit) or regression (one score)."
    num_labels: int | None = None
    "Number of classes for kind `classes`."
    label_names: list[str] | None = None
    "Class names in class-index order; the file may hold these names or the class numbers."
    label_range: list[float] | None = None
    "[low, high] allowed for a regression score."
    metrics: list[str] | None = None
    "Metrics computed on dev: accuracy, f1, matthews, pearson, spearman."
    main_metric: list[str] | None = None
    "The metric(s) whose mean is the task's main score."
    hub: HubConfig | None = None
    "Hub fallback when the task's local folder does not exist."
    pooler: Literal["cls", "cls_raw", "mean", "max", "mean_max", "swap", "stochastic", "routing"] = "cls"
    "How token vectors become one vector: cls (BERT pooler), cls_raw, mean, max, mean_max, swap, stochastic or routing."
    routing: RoutingConfig | None = None
    "pooler routing: outputs, size and iterations of the routing (null: its defaults)."
    pair_encoding: Literal["cross", "siamese"] = "cross"
    "Sentence pairs: cross ([CLS] a [SEP] b) or siamese (each sentence alone, then combined)."
    siamese_regression: Literal["features", "cosine"] = "features"
    "Siamese regression: a head on [u, v, |u-v|, u*v], or the cosine of u and v scaled to label_range."
    head: HeadConfig = field(default_factory=HeadConfig)
    "The task's head."
    batch_size: int | None = None
    "Examples per batch and process; defaults to train.batch_size."
    loss_weight: float = 1.0
    "Multiplies this task's loss."
    max_train_examples: int | None = None
    "At most this many training examples per epoch of this task (a fresh random subset each pass)."
    class_balanced: bool = False
    "Draw training examples with weights inverse to their label's frequency."
    prompt: str | PromptConfig | None = None
    "`builtin` for the task's built-in template, or {question, context} for a custom one; null: plain inputs."
    smart: TaskSmartConfig | None = None
    "This task's SMART settings, each overriding the recipe's `smart:` value (e.g. {adv_weight: 5}); null: those."
    # Many tasks (see DataConfig's block)
    eval_examples: int | None = None
    "Evaluate this task on at most its first this many dev examples during training; null: eval.max_examples."
    eval_every: int | None = None
    """Evaluate this task on dev every this many optimizer steps; 0: only at the end of each stage (and of the
    run); null: whenever the run evaluates (eval.every_steps). Every task is evaluated at a stage's end; between,
    the overall score uses each task's latest score (docs/tasks.md, "Evaluation budgets")."""
    streaming: bool = False
    """Stream the train file: read line by line, shuffled in a buffer of data.stream_buffer examples and tokenised
    batch by batch, never cached or held whole (data/streamed.py); needs max_steps and round_robin, uniform or
    all_tasks sampling. Dev and test splits are read as usual."""


@ranges(temperature=ABOVE_0, anneal_decay=PROBABILITY)
@ranges(size_cap=AT_LEAST_1, min_share=FRACTION)  # many tasks (see DataConfig's block)
@dataclass
class SamplingConfig:
    """Which task each step trains on."""

    strategy: SamplingStrategy = "round_robin"
    "round_robin, proportional (p ~ N), temperature (p ~ N^(1/T)), annealed, uniform or all_tasks."
    temperature: float = 2.0
    "T for the temperature strategy."
    anneal_decay: float = 0.8
    """annealed: p ~ N^a with a = 1 - anneal_decay * t/(T-1) at optimizer step t (0-based) of the T in the run
    (or stage): a falls from 1 (proportional) to 1 - anneal_decay over training, whatever the number of
    epochs. Stickland & Murray's (2019) per-epoch a = 1 - decay * (e-1)/(E-1) is this with epochs as the unit."""
    # Many tasks (see DataConfig's block)
    size_cap: int | None = None
    """proportional, temperature, annealed: a task counts as at most this many examples when its p is computed
    (the limit K of Raffel et al.'s (2020) examples-proportional mixing); null: its full size."""
    min_share: float = 0.0
    """Random strategies: every task gets at least this share of the draws, p -> min_share + (1 - n min_share) p
    for n tasks (a mix with uniform sampling), so that small tasks stay alive; n min_share must stay below 1."""


@ranges(epochs=AT_LEAST_1, max_steps=AT_LEAST_1, batch_size=AT_LEAST_1, grad_accum=AT_LEAST_1, lr=ABOVE_0,
        weight_decay=AT_LEAST_0, betas=FRACTION, eps=ABOVE_0, warmup_ratio=FRACTION, grad_clip=ABOVE_0,
        log_every=AT_LEAST_1, checkpoint_every=AT_LEAST_0, keep_checkpoints=AT_LEAST_1)
@dataclass
class TrainConfig:
    """Optimizer, schedule and loop."""

    epochs: int = 1
    "Epochs to train (see the README for what an epoch is under each sampling strategy)."
    max_steps: int | None = None
    "Stop after this many optimizer steps, overriding epochs."
    batch_size: int = 32
    "Default examples per batch and process for every task."
    grad_accum: int = 1
    "Batches whose gradients are summed before one optimizer step."
    optimizer: Literal["adamw", "mtbert_adamw"] = "adamw"
    "adamw (torch.optim.AdamW) or mtbert_adamw (the project's own, mtbert/training/optim.py)."
    lr: float = 5e-5
    "Peak learning rate."
    weight_decay: float = 0.01
    "Decoupled weight decay (not applied to biases and LayerNorm weights)."
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    "AdamW betas."
    eps: float = 1e-8
    "AdamW epsilon."
    warmup_ratio: float = 0.1
    "Fraction of the steps with linear warm-up; the rest decays linearly to zero."
    grad_clip: float | None = 1.0
    "Clip the gradient norm to this; null disables clipping."
    log_every: int = 20
    "Steps between log records (losses, learning rate, tokens per second)."
    checkpoint_every: int = 500
    "Steps between resumable checkpoints (<output_dir>/checkpoints/step-N); one is also saved at the end. 0: end only."
    keep_checkpoints: int = 2
    "Resumable checkpoints kept on disk: the newest ones; older ones are deleted."
    on_nonfinite: Literal["stop", "skip"] = "stop"
    "A NaN or infinite loss or gradient: `stop` the run with a message naming task and step, or `skip` that step."


@ranges(every_steps=AT_LEAST_0, batch_size=AT_LEAST_1, max_examples=AT_LEAST_1)
@dataclass
class EvalConfig:
    """Evaluation on dev during training."""

    every_steps: int = 0
    "Evaluate every this many optimizer steps; 0 evaluates at the end of each epoch."
    batch_size: int = 128
    "Examples per evaluation batch and process."
    keep_best: bool = True
    "Export the model with the best overall dev score; false exports the last."
    max_examples: int | None = None
    "Evaluate on at most this many dev examples per task during training (the full set in `mtbert evaluate`)."


Tracker = Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio"]


@dataclass
class TrackingConfig:
    """Experiment trackers (through Accelerate), besides the JSONL log every run writes."""

    trackers: list[Tracker] = field(default_factory=list)
    "Accelerate trackers to log to, e.g. [tensorboard] or [wandb]; each needs its package installed."
    project: str | None = None
    "Project (tensorboard: sub-folder) name the trackers log under; defaults to the recipe's name."
    logging_dir: str | None = None
    "Folder for trackers that write files (tensorboard); defaults to <output_dir>/tracking."


@ranges(length_pool=AT_LEAST_0, eval_max_tokens=AT_LEAST_1)
@dataclass
class SpeedConfig:
    """How the run computes: switches that make it faster without changing what it learns (bf16 excepted)."""

    unpad: bool = True
    "Run the encoder's layers on real tokens only (padding removed); equal results to float rounding."
    last_layer_cls_only: bool = True
    "Tasks pooled from [CLS] (cls, cls_raw) run the last layer for [CLS] only: the same results, less work."
    length_pool: int = 64
    "Training batches of similar length: sort within random pools of this many batches, shuffle batches; 0: off."
    fused_optimizer: bool = True
    "torch AdamW's fused kernel: one pass per parameter, equal results to float rounding (not for mtbert_adamw)."
    fused_qkv: bool = False
    "Query, key and value in one matrix product of the stacked weights (plain Linear layers only); the same numbers."
    cheap_dropout: bool = False
    "CPU dropout masks from 16 random bits, 2 per draw: same rate to 1/65536, other masks; ~4% faster CPU training."
    bf16: bool = False
    "bf16 autocast where the hardware has it (CPU with AVX512-BF16 or AMX, CUDA); faster, changes numbers slightly."
    compile: bool = False
    "torch.compile each encoder layer (dynamic shapes); compiling takes minutes before the first step."
    eval_max_tokens: int | None = None
    "Evaluation batches (longest first) hold at most this many padded tokens; null: eval.batch_size rows each."


@ranges(**SMART_RANGES, beta=PROBABILITY, beta_final=PROBABILITY, beta_switch=PROBABILITY)
@dataclass
class SmartConfig:
    """SMART (Jiang et al. 2020): an adversarial smoothness term and a proximal term with a momentum teacher,
    added to the supervised loss. The paper's defaults, written here only (objectives/smart.py takes them from
    here); a task's `smart:` overrides any of the first nine."""

    enabled: bool = False
    "Use SMART for every task (a task's smart.enabled or a stage's smart overrides it)."
    adv_weight: float = 1.0
    "lambda_s: weight of the adversarial term (symmetric KL in fp32 for classes, squared error for regression)."
    prox_weight: float = 1.0
    "mu: weight of the proximal term, the divergence from the momentum teacher's outputs; 0: no teacher."
    epsilon: float = 1e-5
    "Radius of the ball (per example) the perturbation of the embeddings' output is projected onto."
    sigma: float = 1e-5
    "Standard deviation of the initial Gaussian perturbation."
    step_size: float = 1e-3
    "eta: size of each ascent step, along the normalised gradient."
    steps: int = 1
    "K: ascent steps on the perturbation."
    norm: SmartNorm = "inf"
    "The ball's norm: inf or l2."
    dropout_off: bool = False
    "Compute the adversarial term with dropout off (two more forwards in eval mode); false reuses the training outputs."
    beta: float = 0.99
    "Teacher momentum, theta~ <- (1 - beta) theta + beta theta~, for the first beta_switch of a stage's steps."
    beta_final: float = 0.999
    "Teacher momentum after that."
    beta_switch: float = 0.1
    "Fraction of a stage's optimizer steps trained with beta, before beta_final."


ContrastiveObjective = Literal["ranking", "triplet", "lse_hinge", "lse_smooth"]
Objective = Literal["supervised", "ranking", "triplet", "lse_hinge", "lse_smooth", "distillation"]


@ranges(scale=ABOVE_0, margin=AT_LEAST_0, positive_min=FINITE, negative_max=FINITE,
        other_task_negatives=PROBABILITY)
@dataclass
class ContrastiveConfig:
    """Contrastive stages: the losses' settings and how anchor/positive/negative sets are built."""

    scale: float = 20.0
    "ranking: the cosine similarities are multiplied by this before the cross-entropy."
    margin: float = 1.0
    "triplet: max(0, |a - p| - |a - n| + margin)."
    positive_min: float = 3.0
    "Regression pair tasks (sts): a pair scored at least this is an anchor and its positive."
    negative_max: float = 2.0
    "Regression pair tasks: a pair scored at most this gives a negative."
    other_task_negatives: float = 0.2
    "Probability that a triplet's negative is a sentence of another task of the stage instead."


# ---------------------------------------------------------------------------------------------
# Task balancing, distillation and the routing pooler (objectives/balancing.py, distillation.py, model/routing.py)

BalancingMethod = Literal["static", "uncertainty", "dwa", "gradnorm", "famo", "pcgrad", "cagrad", "upgrad", "mgda"]
SURGERY_METHODS = ("pcgrad", "cagrad", "upgrad", "mgda")
"Gradient surgery: one gradient per task, combined by a torchjd aggregator."
EVERY_TASK_METHODS = ("gradnorm", "famo", *SURGERY_METHODS)
"Methods that need every task of the stage in each optimizer step."


@ranges(lr=ABOVE_0, weight_decay=AT_LEAST_0, temperature=ABOVE_0, window=AT_LEAST_1, alpha=AT_LEAST_0,
        cagrad_c=AT_LEAST_0)
@dataclass
class BalancingConfig:
    """How a stage's task losses become one update: static weights, learned or adaptive weights, or gradient
    surgery. Each task's loss_weight still multiplies its loss first."""

    method: BalancingMethod = "static"
    """static (each task's loss_weight), uncertainty (Kendall et al. 2018), dwa (Liu et al. 2019), gradnorm
    (Chen et al. 2018), famo (Liu et al. 2023), or gradient surgery: pcgrad, cagrad, upgrad, mgda (torchjd)."""
    lr: float = 0.025
    "Learning rate of the learned weights (uncertainty, gradnorm, famo), stepped by their own Adam."
    weight_decay: float = 1e-3
    "famo: decay of its task logits (gamma); the other learned weights are not decayed."
    temperature: float = 2.0
    "dwa: T, the softmax temperature over the tasks' loss ratios."
    window: int = 50
    "dwa: optimizer steps per window, the 'epoch' whose mean losses the weights follow."
    alpha: float = 1.5
    "gradnorm: the asymmetry alpha; higher pulls the tasks' training rates together harder."
    cagrad_c: float = 0.4
    "cagrad: c, the radius of the ball around the mean gradient the update is sought in."


@ranges(weight=PROBABILITY, temperature=ABOVE_0)
@dataclass
class DistillationConfig:
    """Distillation stages: a student learns from per-task teachers (Hinton et al. 2015; MT-DNN's multi-task
    distillation, Liu et al. 2019), mixed with the gold labels."""

    teachers: list[str] = field(default_factory=list)
    "Folders of exported mtbert models; each teaches the student's tasks it has, several of one task are averaged."
    weight: float = 0.5
    "Share of the teachers' term: (1 - weight) x the gold loss + weight x the teachers' loss."
    temperature: float = 1.0
    "Softens teacher and student probabilities (classes, binary); that term is multiplied by T^2."


@ranges(outputs=AT_LEAST_1, size=AT_LEAST_1, iterations=AT_LEAST_1)
@dataclass
class RoutingConfig:
    """The routing pooler (Heinsen 2022): the real tokens are routed to a few vectors, concatenated for the head."""

    outputs: int = 4
    "Vectors the tokens are routed to."
    size: int | None = None
    "Width of each routed vector; null: hidden size / outputs. A Linear maps the concatenation to the hidden size."
    iterations: int = 2
    "Routing iterations (expectation, then maximisation steps)."


def balancing_of(recipe: Recipe, stage: StageConfig) -> BalancingConfig:
    """The balancing of `stage`: its own, else the recipe's, else static weights."""
    return stage.balancing or recipe.balancing or BalancingConfig()


def _check_balancing_and_distillation(recipe: Recipe, err) -> None:
    for name, task in recipe.tasks.items():
        if task.routing is not None and task.pooler != "routing":
            raise err(("tasks", name, "routing"), f"sets the routing pooler's sizes, but the task's pooler is "
                      f"{task.pooler} (pooler: routing)")
    for i, stage in enumerate(stage_configs(recipe)):
        path = ("stages", str(i)) if recipe.stages else ()
        balancing = balancing_of(recipe, stage)
        where = (*path, "balancing", "method") if stage.balancing else ("balancing", "method")
        if balancing.method != "static" and stage.objective != "supervised":
            raise err(where, f"balancing weighs supervised losses; the {stage.objective} stage has its own")
        tasks = stage.tasks or list(recipe.tasks)
        sampling = stage.sampling or recipe.sampling
        accum = recipe.train.grad_accum
        every_step = sampling.strategy == "all_tasks" or (balancing.method != "famo" and accum % len(tasks) == 0
                                                          and sampling.strategy == "round_robin")
        if balancing.method in EVERY_TASK_METHODS and (len(tasks) < 2 or not every_step):
            window = "" if balancing.method == "famo" else (", or round_robin with train.grad_accum a multiple of the "
                                                             "number of tasks")
            raise err(where, f"{balancing.method} compares the tasks within each optimizer step, so it needs at least "
                      f"two tasks and sampling.strategy all_tasks{window} (here {len(tasks)} task(s), "
                      f"{sampling.strategy}, grad_accum {accum})")
        if stage.objective == "distillation" and not (recipe.distillation and recipe.distillation.teachers):
            raise err((*path, "objective"), "a distillation stage needs teachers: distillation.teachers: "
                      "[folders of exported mtbert models]")


@ranges(epochs=AT_LEAST_1, max_steps=AT_LEAST_1, lr=ABOVE_0, warmup_ratio=FRACTION)
@dataclass
class StageConfig:
    """One stage of a run; stages run in order into one output folder. A null field takes the recipe's value."""

    name: str | None = None
    "A name for the logs; default stage-1, stage-2, ..."
    tasks: list[str] | None = None
    "The tasks this stage trains on; null: all the recipe's tasks."
    objective: Objective = "supervised"
    "supervised (the tasks' own losses), distillation (teachers' outputs), or ranking, triplet, lse_hinge, lse_smooth."
    smart: bool | None = None
    "SMART in this (supervised) stage; null: smart.enabled and each task's smart.enabled."
    sampling: SamplingConfig | None = None
    "Task sampling in this stage; null: the recipe's sampling."
    epochs: int | None = None
    "Epochs of this stage (an epoch as its sampling defines it, over its tasks); null: train.epochs."
    max_steps: int | None = None
    "Optimizer steps of this stage, overriding epochs; null: train.max_steps unless epochs is set here."
    lr: float | None = None
    "Peak learning rate of this stage (its own warm-up and linear decay); null: train.lr."
    warmup_ratio: float | None = None
    "Fraction of this stage's steps with linear warm-up; null: train.warmup_ratio."
    balancing: BalancingConfig | None = None
    "How this (supervised) stage combines its tasks' losses; null: the recipe's balancing."


@ranges(seed=Range(0, 2**32 - 1))  # numpy's generators take seeds below 2**32
@dataclass
class Recipe:
    """A whole run."""

    name: str = "run"
    "A name for the run, written into its outputs."
    seed: int = 0
    "Seeds every random number generator; same seed, same run."
    data_dir: str = "data"
    "Root of the task files; overridden by MTBERT_DATA_DIR, then by --data-dir."
    output_dir: str = "ckpt"
    "Where the exported model, the resolved recipe, metrics and logs go."
    model: ModelConfig = field(default_factory=ModelConfig)
    "The encoder."
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    "Task name -> settings; a built-in name (sst, quora, sts, ...) needs no settings."
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    "Task sampling."
    train: TrainConfig = field(default_factory=TrainConfig)
    "Training loop."
    eval: EvalConfig = field(default_factory=EvalConfig)
    "Evaluation during training."
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    "Experiment trackers (tensorboard, wandb, ...) besides the JSONL log."
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    "Packed layers, length-grouped batches, fused optimizer, bf16, compilation."
    smart: SmartConfig = field(default_factory=SmartConfig)
    "SMART regularisation, for every task unless a task or stage says otherwise."
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    "Settings of contrastive stages."
    stages: list[StageConfig] = field(default_factory=list)
    "Stages run in order, each with its tasks, objective, sampling, length and lr; empty: one supervised stage."
    balancing: BalancingConfig | None = None
    "How supervised stages combine their tasks' losses (a stage's balancing overrides it); null: static weights."
    distillation: DistillationConfig | None = None
    "The teachers and mixing of `objective: distillation` stages."
    data: DataConfig = field(default_factory=DataConfig)
    "How training data is prepared: tokenising workers."


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class _Source:
    """Where values came from, for error messages: a file and the line of each key path."""

    file: str
    lines: dict[tuple[str, ...], int]
    overridden: frozenset[tuple[str, ...]] = frozenset()

    def where(self, path: tuple[str, ...]) -> str:
        if any(path[:n] in self.overridden for n in range(1, len(path) + 1)):
            return "command-line override"
        while path and path not in self.lines:
            path = path[:-1]
        line = self.lines.get(path)
        return f"{self.file}:{line}" if line else self.file


# Names other trainers use for the same settings, so a user coming from them is pointed the right way.
ALIASES = {"learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs",
           "gradient_accumulation_steps": "grad_accum", "max_grad_norm": "grad_clip", "warmup": "warmup_ratio",
           "per_device_train_batch_size": "batch_size", "bs": "batch_size", "steps": "max_steps"}


def load_recipe(path: str | Path, overrides: list[str] = (), data_dir: str | None = None) -> Recipe:
    """Read a recipe file, apply `key=value` overrides, and return the validated Recipe.

    data_dir precedence: the --data-dir argument, then MTBERT_DATA_DIR, then the recipe.
    """
    path = Path(path)
    raw, node = yamlfile.load_file(path, "recipe file")
    lines = _key_lines(node)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MtbertError(f"{path}: a recipe is a mapping of sections (model, tasks, train, ...)")
    for item in overrides:
        _apply_override(raw, item)
    env_dir = os.environ.get("MTBERT_DATA_DIR")
    if data_dir or env_dir:
        raw["data_dir"] = data_dir or env_dir
    overridden = frozenset(tuple(item.partition("=")[0].split(".")) for item in overrides)
    return parse_recipe(raw, _Source(str(path), lines, overridden))


def parse_recipe(raw: dict, source: _Source | None = None) -> Recipe:
    """Build a Recipe from plain data (a parsed YAML file or a checkpoint's saved recipe)."""
    source = source or _Source("recipe", {})
    recipe = _build(Recipe, raw, (), source)
    _check_semantics(recipe, source)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain data for yaml.safe_dump; round-trips through parse_recipe."""
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True)


def _apply_override(raw: dict, item: str) -> None:
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as e:  # bytes that are not UTF-8 arrive from the command line as lone surrogates
        raise MtbertError(f"override {ascii(item)}: not UTF-8 text (character {e.start})") from None
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise MtbertError(f"override '{item}': expected key=value, e.g. train.lr=3e-5")
    parts = key.split(".")
    if not all(parts):
        raise MtbertError(f"override '{item}': the key '{key}' has an empty part; keys are dotted names "
                          f"such as train.lr or stages.0.max_steps")
    parsed = _override_value(item, value)
    node = raw
    for i, part in enumerate(parts):
        if isinstance(node, list):  # a list item by its index, e.g. stages.1.max_steps=200
            if not part.isdigit() or int(part) >= len(node):
                raise MtbertError(f"override '{item}': '{'.'.join(parts[:i])}' has items 0-{len(node) - 1}, "
                                  f"not '{part}'")
            part = int(part)
        if i == len(parts) - 1:
            node[part] = parsed
            return
        child = node[part] if isinstance(node, list) else node.get(part)
        if child is None and parts[i + 1].isdigit():  # e.g. stages.0.lr on a recipe that lists no stages
            raise MtbertError(f"override '{item}': the recipe has no '{'.'.join(parts[:i + 1])}' list to take "
                              f"item {parts[i + 1]} of; write the list in the recipe first")
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise MtbertError(f"override '{item}': '{part}' is not a section")
        node = child


def _override_value(item: str, value: str) -> Any:
    """The value of `key=value` read as YAML (so 3e-5, true, [a, b] and {k: v} arrive typed); text that is
    not valid YAML is taken as the string it is, but a duplicate key or unbounded aliases are errors."""
    if value == "":
        return None
    try:
        return yamlfile.parse(value)[0]
    except (yamlfile.DuplicateKeyError, yamlfile.LimitError) as e:
        raise MtbertError(f"override '{item}': {e.problem}") from None
    except yaml.YAMLError:
        return value


def _key_lines(node: yaml.Node | None, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map each key path of a composed YAML document to its 1-based line. The walk follows aliases, which
    yamlfile.parse has already bounded (no cycle, at most MAX_VALUES values expanded)."""
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = path + (str(key_node.value),)
            lines[sub] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, sub))
    elif isinstance(node, yaml.SequenceNode):  # list items are keyed by index, as error paths name them
        for index, item in enumerate(node.value):
            sub = path + (str(index),)
            lines[sub] = item.start_mark.line + 1
            lines.update(_key_lines(item, sub))
    return lines


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping to {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _build(cls: type, raw: Any, path: tuple[str, ...], source: _Source) -> Any:
    """Construct dataclass `cls` from `raw`, checking every key and type."""
    if not isinstance(raw, dict):
        raise MtbertError(f"{source.where(path)}: {'.'.join(path) or 'recipe'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        key = str(key)
        if key not in hints:
            near = [ALIASES[key]] if ALIASES.get(key) in names else difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(names)}"
            dotted = ".".join(path + (key,))
            raise MtbertError(f"{source.where(path + (key,))}: unknown key '{dotted}'{hint}")
        kwargs[key] = _convert(hints[key], value, path + (key,), source)
        if key in RANGES.get(cls, {}):
            _check_range(RANGES[cls][key], kwargs[key], path + (key,), source)
    try:
        return cls(**kwargs)
    except TypeError:
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise MtbertError(f"{source.where(path)}: {'.'.join(path)}: missing required key(s): "
                          f"{', '.join(missing)}") from None


def _check_range(bounds: Range, value: Any, path: tuple[str, ...], source: _Source) -> None:
    """A number, or each number of a list, within its field's range (a null is not checked)."""
    items = enumerate(value) if isinstance(value, list) else [(None, value)]
    for index, item in items:
        if item is not None and item not in bounds:
            at = path if index is None else path + (str(index),)
            raise MtbertError(f"{source.where(at)}: {'.'.join(at)}: must be {bounds}, got {item}")


def _convert(tp: Any, value: Any, path: tuple[str, ...], source: _Source) -> Any:
    """`value` as type `tp` (a recipe field's annotation), or an MtbertError naming file, line and key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(tp, value, path, source)
    if origin is Literal:
        return _convert_literal(tp, value, path, source)
    if origin is list:
        return _convert_list(tp, value, path, source)
    if origin is dict:
        return _convert_dict(tp, value, path, source)
    if dataclasses.is_dataclass(tp):
        return _build(tp, {} if value is None else value, path, source)
    convert = _SCALARS.get(tp)
    if convert is None:
        raise _type_error(tp, value, path, source)
    return convert(tp, value, path, source)


def _type_error(tp: Any, value: Any, path: tuple[str, ...], source: _Source) -> MtbertError:
    return MtbertError(f"{source.where(path)}: {'.'.join(path)}: expected {_type_name(tp)}, got {value!r}")


def _convert_union(tp: Any, value: Any, path: tuple[str, ...], source: _Source) -> Any:
    options = typing.get_args(tp)
    if value is None:
        if type(None) in options:
            return None
        raise _type_error(tp, value, path, source)
    meant_error = None
    candidates = [o for o in options if o is not type(None)]
    for option in candidates:
        try:
            return _convert(option, value, path, source)
        except MtbertError as e:
            # The only option, a mapping meant as this section or a list meant as this list: its own
            # message says what is wrong (an item out of range, an unknown key).
            if (len(candidates) == 1 or isinstance(value, dict) and dataclasses.is_dataclass(option)
                    or isinstance(value, list) and typing.get_origin(option) is list):
                meant_error = e
    raise meant_error or _type_error(tp, value, path, source)


def _convert_literal(tp: Any, value: Any, path: tuple[str, ...], source: _Source) -> Any:
    if value in typing.get_args(tp):
        return value
    near = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise MtbertError(f"{source.where(path)}: {'.'.join(path)}: expected {_type_name(tp)}, got {value!r}{hint}")


def _convert_list(tp: Any, value: Any, path: tuple[str, ...], source: _Source) -> list:
    (item_type,) = typing.get_args(tp)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item_type is str:
        value = [value]  # a single column name may be written without brackets
    if not isinstance(value, list):
        raise _type_error(tp, value, path, source)
    return [_convert(item_type, v, path + (str(i),), source) for i, v in enumerate(value)]


def _convert_dict(tp: Any, value: Any, path: tuple[str, ...], source: _Source) -> dict:
    _, value_type = typing.get_args(tp)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _type_error(tp, value, path, source)
    return {str(k): _convert(value_type, {} if v is None and dataclasses.is_dataclass(value_type) else v,
                             path + (str(k),), source) for k, v in value.items()}


def _convert_bool(tp: Any, value: Any, path: tuple[str, ...], source: _Source) -> bool:
    if isinstance(value, bool):
        return value
    raise _type_error(tp, value, path, source)


def _convert_int(tp: Any, value: Any, path: tuple[str, ...], source: _Source) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _type_error(tp, value, path, source)


def _convert_float(tp: Any, value: Any, path: tuple[str, ...], source: _Source) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
        try:
            number = float(value)
        except ValueError:
            raise _type_error(tp, value, path, source) from None
    if number is None:
        raise _type_error(tp, value, path, source)
    if not math.isfinite(number):
        raise MtbertError(f"{source.where(path)}: {'.'.join(path)}: expected a finite number, got {value!r}")
    return number


def _convert_str(tp: Any, value: Any, path: tuple[str, ...], source: _Source) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise _type_error(tp, value, path, source)


_SCALARS = {bool: _convert_bool, int: _convert_int, float: _convert_float, str: _convert_str}


def _check_semantics(recipe: Recipe, source: _Source) -> None:
    """Checks that span fields (each field's own range is checked as it is read, see RANGES); task-level
    checks live in tasks.resolve_tasks."""
    def err(path: tuple[str, ...], message: str) -> MtbertError:
        return MtbertError(f"{source.where(path)}: {'.'.join(path)}: {message}")

    if not recipe.tasks:
        raise err(("tasks",), "the recipe names no task; add e.g. `tasks: {sst: {}}`")
    size = recipe.model.size
    if size.hidden_size % size.num_heads:
        raise err(("model", "size", "num_heads"), f"{size.num_heads} does not divide hidden_size {size.hidden_size}")
    if recipe.model.init == "random" and size.max_position_embeddings < recipe.model.max_length:
        raise err(("model", "size", "max_position_embeddings"), f"{size.max_position_embeddings} positions cannot "
                  f"hold inputs of model.max_length {recipe.model.max_length}")
    if len(recipe.train.betas) != 2:
        raise err(("train", "betas"), "expected two numbers")
    if recipe.model.init == "random" and not recipe.model.tokenizer and not recipe.model.add_to:
        raise err(("model", "tokenizer"), "a randomly initialised encoder needs a tokenizer folder or name")
    try:
        plan = parse_plan(sharing_spec(recipe.model.sharing), list(recipe.tasks))
        layers = encoder_layer_count(recipe.model)
        if layers is not None:
            plan.resolve(layers)
    except SharingPlanError as e:
        raise err(("model", "sharing", *e.path), e.message) from None
    for name, task in recipe.tasks.items():
        low_high = task.label_range
        if low_high is not None and (len(low_high) != 2 or low_high[0] >= low_high[1]):
            raise err(("tasks", name, "label_range"), f"expected [low, high] with low < high, got {low_high}")
    _check_contrastive_and_stages(recipe, err)
    _check_balancing_and_distillation(recipe, err)
    _check_sampling_caps(recipe, err)
    _check_streaming(recipe, err)


def _check_sampling_caps(recipe: Recipe, err) -> None:
    """min_share and size_cap only where they act: on the random strategies, with a floor the tasks can share."""
    samplings = [(("sampling",), recipe.sampling, len(recipe.tasks))]
    samplings += [(("stages", str(i), "sampling"), stage.sampling, len(stage.tasks or recipe.tasks))
                  for i, stage in enumerate(recipe.stages) if stage.sampling is not None]
    for path, sampling, tasks in samplings:
        fixed = sampling.strategy in ("round_robin", "all_tasks")
        if sampling.min_share and fixed:
            raise err((*path, "min_share"), f"applies to the random strategies, not {sampling.strategy}")
        if sampling.size_cap is not None and (fixed or sampling.strategy == "uniform"):
            raise err((*path, "size_cap"), f"applies to proportional, temperature and annealed, not "
                                           f"{sampling.strategy}")
        if sampling.min_share * tasks > 1:
            raise err((*path, "min_share"), f"{sampling.min_share} for each of {tasks} tasks is more than every draw; "
                                            f"at most {1 / tasks:.4g}")


def _check_contrastive_and_stages(recipe: Recipe, err) -> None:
    """The contrastive settings and the stages."""
    if recipe.contrastive.negative_max >= recipe.contrastive.positive_min:
        raise err(("contrastive", "negative_max"), f"must be below positive_min ({recipe.contrastive.positive_min})")
    for i, stage in enumerate(recipe.stages):
        path = ("stages", str(i))
        for task in stage.tasks or []:
            if task not in recipe.tasks:
                near = difflib.get_close_matches(task, list(recipe.tasks), n=1)
                hint = f"; did you mean '{near[0]}'?" if near else f"; the recipe's tasks: {', '.join(recipe.tasks)}"
                if recipe.model.add_to:  # the trained model's tasks are frozen: a stage trains the recipe's own
                    hint += " (a run with model.add_to trains only these)"
                raise err((*path, "tasks"), f"unknown task '{task}'{hint}")
        if stage.tasks is not None and not stage.tasks:
            raise err((*path, "tasks"), "a stage needs at least one task (or null for all of them)")
        if stage.objective != "supervised" and stage.smart:
            raise err((*path, "smart"), f"SMART regularises supervised outputs; the {stage.objective} stage has none")


STREAM_STRATEGIES = ("round_robin", "uniform", "all_tasks")
"The sampling strategies that need no task sizes, so the ones a stage with a streamed task can use."


def _check_streaming(recipe: Recipe, err) -> None:
    """A streamed task's length is unknown: no epochs, no sizes to sample by, nothing that indexes its examples."""
    streamed = [name for name, task in recipe.tasks.items() if task.streaming]
    for name in streamed:
        task = recipe.tasks[name]
        for key in ("max_train_examples", "class_balanced"):
            if getattr(task, key):
                raise err(("tasks", name, key), "needs the task's examples in memory; a streamed task (streaming: "
                                                "true) has them one at a time")
    for i, stage in enumerate(stage_configs(recipe)):
        path = ("stages", str(i)) if recipe.stages else ()
        mine = [name for name in stage.tasks or list(recipe.tasks) if name in streamed]
        if not mine:
            continue
        sampling = stage.sampling or recipe.sampling
        if sampling.strategy not in STREAM_STRATEGIES:
            raise err((*path, "sampling", "strategy"), f"{sampling.strategy} needs each task's size, which streamed "
                                                       f"task {mine[0]} has not; use {', '.join(STREAM_STRATEGIES)}")
        max_steps = stage.max_steps if stage.max_steps is not None else (
            None if stage.epochs is not None else recipe.train.max_steps)
        if max_steps is None:
            raise err((*path, "max_steps") if recipe.stages else ("train", "max_steps"),
                      f"an epoch of streamed task {mine[0]} has no known length: set the steps")
        if stage.objective != "supervised":
            raise err((*path, "objective"), f"{stage.objective} indexes its tasks' examples; streamed task "
                                            f"{mine[0]} trains with the supervised objective only")


def stage_configs(recipe: Recipe) -> list[StageConfig]:
    """The recipe's stages, or the one stage a recipe without `stages:` describes."""
    return recipe.stages or [StageConfig()]


def sharing_spec(sharing: str | SharingConfig) -> str | dict:
    """The plan as plain data, what mtbert.model.plan reads."""
    return sharing if isinstance(sharing, str) else dataclasses.asdict(sharing)


def encoder_layer_count(model: ModelConfig) -> int | None:
    """The encoder's layer count when known before loading it: `size` for a random encoder, the local
    folder's config.json for a pretrained one; None for a hub name (checked when the model is built)."""
    if model.init == "random":
        return model.size.num_layers
    config = Path(model.init) / "config.json"
    try:
        count = json.loads(config.read_text(encoding="utf-8")).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return None  # a hub name, or a folder whose problems loading the encoder reports
    return count if isinstance(count, int) and not isinstance(count, bool) else None
