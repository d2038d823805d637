"""The task registry: what each task reads, predicts, optimises and scores.

Built-in tasks are written in the same schema as a custom task in a recipe (config.TaskConfig), so a
custom task is nothing more than a built-in that lives in the recipe. `resolve_tasks` merges a
recipe's settings over the built-in values and checks that the result is complete.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from mtbert.config import HeadConfig, HubConfig, PromptConfig, Recipe, TaskConfig
from mtbert.data.prompts import BUILTIN_PROMPTS, PromptTemplate, check_template
from mtbert.errors import MtbertError
from mtbert.metrics import METRIC_NAMES

SPLITS = ("train", "dev", "test")
DEFAULT_METRICS = {"classes": ["accuracy", "f1"], "binary": ["accuracy", "f1"], "regression": ["pearson", "spearman"]}
DEFAULT_MAIN = {"classes": ["accuracy"], "binary": ["accuracy"], "regression": ["pearson"]}
LOSS_FOR_KIND = {"classes": "cross_entropy", "binary": "bce_with_logits", "regression": "mse"}


def _cs224n(stem: str, test_stem: str, **fields) -> dict:
    return dict(format="cs224n", train_file=f"cs224n/{stem}-train.csv", dev_file=f"cs224n/{stem}-dev.csv",
                test_file=f"cs224n/{test_stem}-test-student.csv", id_column="id", **fields)


def _glue(folder: str, hub_name: str, text: list[str], label: str, hub_text: list[str] | None = None,
          dev: str = "dev.tsv", test: str = "test.tsv", hub_splits: dict | None = None, **fields) -> dict:
    hub = HubConfig(path="glue", name=hub_name, text_columns=hub_text or text)
    if hub_splits:
        hub.splits = hub_splits
    return dict(format="glue", train_file=f"glue/{folder}/train.tsv", dev_file=f"glue/{folder}/{dev}",
                test_file=f"glue/{folder}/{test}", text_columns=text, label_column=label, id_column="index",
                hub=hub, **fields)


BUILTIN_TASKS: dict[str, dict] = {
    # cs224n minBERT splits (see the data README for their formats)
    "sst": _cs224n("ids-sst", "ids-sst", text_columns=["sentence"], label_column="sentiment",
                   kind="classes", num_labels=5, metrics=["accuracy", "f1"], main_metric=["accuracy"]),
    "quora": _cs224n("quora", "quora", text_columns=["sentence1", "sentence2"], label_column="is_duplicate",
                     kind="binary", metrics=["accuracy", "f1"], main_metric=["accuracy"]),
    "sts": _cs224n("sts", "sts", text_columns=["sentence1", "sentence2"], label_column="similarity",
                   kind="regression", label_range=[0.0, 5.0], metrics=["pearson", "spearman"],
                   main_metric=["pearson"]),
    "cfimdb": _cs224n("ids-cfimdb", "ids-cfimdb", text_columns=["sentence"], label_column="sentiment",
                      kind="binary", metrics=["accuracy", "f1"], main_metric=["accuracy"]),
    # GLUE, from a local GLUE folder or the hub
    "sst2": _glue("SST-2", "sst2", ["sentence"], "label", kind="binary",
                  metrics=["accuracy", "f1"], main_metric=["accuracy"]),
    "cola": _glue("CoLA", "cola", ["sentence"], "label", columns=["source", "label", "mark", "sentence"],
                  kind="binary", metrics=["matthews", "accuracy"], main_metric=["matthews"]),
    "mrpc": _glue("MRPC", "mrpc", ["#1 String", "#2 String"], "Quality", hub_text=["sentence1", "sentence2"],
                  kind="binary", metrics=["accuracy", "f1"], main_metric=["accuracy", "f1"]),
    "qqp": _glue("QQP", "qqp", ["question1", "question2"], "is_duplicate", kind="binary",
                 metrics=["accuracy", "f1"], main_metric=["accuracy", "f1"]),
    "stsb": _glue("STS-B", "stsb", ["sentence1", "sentence2"], "score", kind="regression",
                  label_range=[0.0, 5.0], metrics=["pearson", "spearman"], main_metric=["pearson", "spearman"]),
    "rte": _glue("RTE", "rte", ["sentence1", "sentence2"], "label", kind="classes", num_labels=2,
                 label_names=["entailment", "not_entailment"], metrics=["accuracy"], main_metric=["accuracy"]),
    "mnli": _glue("MNLI", "mnli", ["sentence1", "sentence2"], "gold_label", hub_text=["premise", "hypothesis"],
                  dev="dev_matched.tsv", test="test_matched.tsv", kind="classes", num_labels=3,
                  label_names=["entailment", "neutral", "contradiction"],
                  hub_splits={"train": "train", "dev": "validation_matched", "test": "test_matched"},
                  metrics=["accuracy"], main_metric=["accuracy"]),
}

# File names the cs224n course expects for test-set submissions.
SUBMISSION_FILES = {"sst": ("sst-test-output.csv", "Predicted_Sentiment"),
                    "quora": ("para-test-output.csv", "Predicted_Is_Paraphrase"),
                    "sts": ("sts-test-output.csv", "Predicted_Similarity")}


@dataclass
class Task:
    """A task with every field decided: built-in values, then the recipe's."""

    name: str
    format: str
    files: dict[str, str | None]
    text_columns: list[str]
    label_column: str
    id_column: str | None
    columns: list[str] | None
    kind: str
    num_labels: int
    label_names: list[str] | None
    label_range: list[float] | None
    metrics: list[str]
    main_metric: list[str]
    hub: HubConfig | None
    pooler: str
    pair_encoding: str
    siamese_regression: str
    head: HeadConfig
    batch_size: int
    loss_weight: float
    max_train_examples: int | None
    class_balanced: bool
    prompt: PromptTemplate | None = None
    "Set: each example is encoded as [CLS] question [SEP] context [SEP] (see data/prompts.py)."
    pooler_options: dict | None = None
    "The pooler's settings (routing's outputs, size, iterations); None: its defaults."
    eval_examples: int | None = None
    "Dev examples this task is evaluated on during training, at most; None: eval.max_examples."
    eval_every: int | None = None
    "Optimizer steps between this task's dev evaluations during training (0: stage ends only); None: the run's."
    streaming: bool = False
    "Train from the file as a stream (data/streamed.py), never read whole."

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def num_outputs(self) -> int:
        """Width of the head's output: one logit per class, or one number."""
        return self.num_labels if self.kind == "classes" else 1

    @property
    def loss(self) -> str:
        return LOSS_FOR_KIND[self.kind]


def resolve_tasks(recipe: Recipe) -> dict[str, Task]:
    """Merge each recipe task over its built-in and check the result; keeps the recipe's order."""
    tasks = {name: resolve_task(name, cfg, recipe.train.batch_size) for name, cfg in recipe.tasks.items()}
    for task in tasks.values():
        if task.eval_examples is None:
            task.eval_examples = recipe.eval.max_examples
    return tasks


def resolve_task(name: str, cfg: TaskConfig, default_batch_size: int = 32) -> Task:
    merged = _merge(name, cfg)
    where = f"recipe key tasks.{name}"

    def need(field_name: str):
        value = getattr(merged, field_name)
        if value in (None, []):
            raise MtbertError(f"{where}: a custom task needs '{field_name}' (or use a built-in task: "
                              f"{', '.join(BUILTIN_TASKS)})")
        return value

    kind = need("kind")
    text_columns = need("text_columns")
    if len(text_columns) not in (1, 2):
        raise MtbertError(f"{where}.text_columns: one column or a pair of two, got {text_columns}")
    if not (merged.train_file or merged.dev_file or merged.hub):
        raise MtbertError(f"{where}: no data: set train_file and dev_file (relative to data_dir)")
    need("format")
    need("label_column")
    num_labels = _num_labels(merged, where)
    metrics = merged.metrics or DEFAULT_METRICS[kind]
    main = merged.main_metric or DEFAULT_MAIN[kind]
    for metric in metrics + main:
        if metric not in METRIC_NAMES:
            near = difflib.get_close_matches(metric, list(METRIC_NAMES), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; known: {', '.join(METRIC_NAMES)}"
            raise MtbertError(f"{where}.metrics: unknown metric '{metric}'{hint}")
    for metric in main:
        if metric not in metrics:
            metrics = metrics + [metric]
    if kind == "regression" and merged.label_range is not None:
        if len(merged.label_range) != 2 or merged.label_range[0] >= merged.label_range[1]:
            raise MtbertError(f"{where}.label_range: expected [low, high] with low < high")
    if merged.siamese_regression == "cosine" and merged.pair_encoding == "siamese" and not merged.label_range:
        raise MtbertError(f"{where}: siamese_regression: cosine needs label_range to scale the cosine")
    if merged.pair_encoding == "siamese" and len(text_columns) != 2:
        raise MtbertError(f"{where}.pair_encoding: siamese needs a sentence pair (two text_columns)")
    if merged.routing is not None and merged.pooler != "routing":
        raise MtbertError(f"{where}.routing: sets the routing pooler's sizes, but the task's pooler is {merged.pooler}")
    prompt = _prompt(name, merged, len(text_columns) == 2, where)
    return Task(
        name=name, format=merged.format,
        files={"train": merged.train_file, "dev": merged.dev_file, "test": merged.test_file},
        text_columns=list(text_columns), label_column=merged.label_column, id_column=merged.id_column,
        columns=merged.columns, kind=kind, num_labels=num_labels, label_names=merged.label_names,
        label_range=merged.label_range, metrics=list(metrics), main_metric=list(main), hub=merged.hub,
        pooler=merged.pooler, pair_encoding=merged.pair_encoding, siamese_regression=merged.siamese_regression,
        head=merged.head, batch_size=merged.batch_size or default_batch_size, loss_weight=merged.loss_weight,
        max_train_examples=merged.max_train_examples, class_balanced=merged.class_balanced, prompt=prompt,
        pooler_options=dataclasses.asdict(merged.routing) if merged.routing is not None else None,
        eval_examples=merged.eval_examples, eval_every=merged.eval_every,
        streaming=merged.streaming)


def _prompt(name: str, cfg: TaskConfig, is_pair: bool, where: str) -> PromptTemplate | None:
    """The task's prompt template, checked against its number of sentences; None for plain inputs."""
    if cfg.prompt is None:
        return None
    where = f"{where}.prompt"
    if isinstance(cfg.prompt, PromptConfig):
        template = PromptTemplate(question=cfg.prompt.question, context=cfg.prompt.context)
    elif cfg.prompt == "builtin":
        if name not in BUILTIN_PROMPTS:
            raise MtbertError(f"{where}: task {name} has no built-in prompt (built-in prompts: "
                              f"{', '.join(BUILTIN_PROMPTS)}); write one as {{question: ..., context: ...}}")
        template = BUILTIN_PROMPTS[name]
    else:
        raise MtbertError(f"{where}: expected `builtin` or a mapping {{question: ..., context: ...}}, "
                          f"got {cfg.prompt!r}")
    if cfg.pair_encoding == "siamese":
        raise MtbertError(f"{where}: a prompted task is encoded as one [CLS] question [SEP] context [SEP] "
                          f"sequence, so it cannot use pair_encoding: siamese")
    check_template(template, is_pair, where)
    return template


def _merge(name: str, cfg: TaskConfig) -> TaskConfig:
    """The built-in's values, with every field the recipe set explicitly on top."""
    builtin = BUILTIN_TASKS.get(name)
    if builtin is None:
        if cfg.format is None and cfg.train_file is None and cfg.hub is None:
            near = difflib.get_close_matches(name, list(BUILTIN_TASKS), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise MtbertError(f"recipe key tasks.{name}: unknown task '{name}'; {hint}built-in tasks are "
                              f"{', '.join(BUILTIN_TASKS)}; a custom task sets format, train_file, dev_file, "
                              f"text_columns, label_column and kind")
        return cfg
    defaults = TaskConfig()
    merged = dataclasses.replace(TaskConfig(), **builtin)
    for f in dataclasses.fields(TaskConfig):
        value = getattr(cfg, f.name)
        if value != getattr(defaults, f.name):
            setattr(merged, f.name, value)
    return merged


def _num_labels(cfg: TaskConfig, where: str) -> int:
    if cfg.kind == "regression":
        return 1
    if cfg.kind == "binary":
        if cfg.num_labels not in (None, 2):
            raise MtbertError(f"{where}.num_labels: a binary task has 2 labels, got {cfg.num_labels}")
        if cfg.label_names is not None and len(cfg.label_names) != 2:
            raise MtbertError(f"{where}.label_names: a binary task has 2 label names")
        return 2
    num = cfg.num_labels or (len(cfg.label_names) if cfg.label_names else None)
    if num is None or num < 2:
        raise MtbertError(f"{where}.num_labels: a classes task needs num_labels >= 2")
    if cfg.label_names is not None and len(cfg.label_names) != num:
        raise MtbertError(f"{where}.label_names: {len(cfg.label_names)} names for {num} labels")
    return num
