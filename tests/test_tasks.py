import pytest

from mtbert.config import HeadConfig, TaskConfig
from mtbert.errors import MtbertError
from mtbert.tasks import BUILTIN_TASKS, resolve_task, resolve_tasks


def test_every_builtin_resolves_with_a_main_score():
    for name in BUILTIN_TASKS:
        task = resolve_task(name, TaskConfig())
        assert task.main_metric and set(task.main_metric) <= set(task.metrics)
        assert task.files["train"] and task.files["dev"]


def test_builtin_values():
    sst = resolve_task("sst", TaskConfig())
    assert (sst.kind, sst.num_labels, sst.format, sst.main_metric) == ("classes", 5, "cs224n", ["accuracy"])
    sts = resolve_task("sts", TaskConfig())
    assert (sts.kind, sts.label_range, sts.main_metric) == ("regression", [0.0, 5.0], ["pearson"])
    mrpc = resolve_task("mrpc", TaskConfig())
    assert mrpc.main_metric == ["accuracy", "f1"] and mrpc.hub.name == "mrpc"
    assert resolve_task("cola", TaskConfig()).main_metric == ["matthews"]
    assert resolve_task("quora", TaskConfig()).is_pair


def test_recipe_settings_override_builtin():
    task = resolve_task("quora", TaskConfig(train_file="cs224n/quora-train-small.csv", batch_size=8,
                                            head=HeadConfig(type="mlp"), pair_encoding="siamese"), 32)
    assert task.files["train"] == "cs224n/quora-train-small.csv"
    assert task.files["dev"] == "cs224n/quora-dev.csv"
    assert task.batch_size == 8 and task.head.type == "mlp" and task.pair_encoding == "siamese"
    assert resolve_task("sst", TaskConfig(), 16).batch_size == 16


def test_custom_task():
    task = resolve_task("mine", TaskConfig(format="jsonl", train_file="t.jsonl", dev_file="d.jsonl",
                                           text_columns=["text"], label_column="y", kind="classes",
                                           label_names=["a", "b", "c"]))
    assert task.num_labels == 3 and task.metrics == ["accuracy", "f1"] and not task.is_pair


def test_unknown_task_suggests_builtin():
    with pytest.raises(MtbertError, match="did you mean 'sst'"):
        resolve_task("ssst", TaskConfig())


def test_incomplete_custom_task_names_missing_field():
    with pytest.raises(MtbertError, match="needs 'kind'"):
        resolve_task("mine", TaskConfig(format="csv", train_file="t.csv", text_columns=["x"], label_column="y"))


def test_bad_metric_and_label_counts():
    with pytest.raises(MtbertError, match="did you mean 'pearson'"):
        resolve_task("sts", TaskConfig(metrics=["pearsn"]))
    with pytest.raises(MtbertError, match="label_names"):
        resolve_task("sst", TaskConfig(label_names=["a", "b"]))
    with pytest.raises(MtbertError, match="siamese needs a sentence pair"):
        resolve_task("sst", TaskConfig(pair_encoding="siamese"))


def test_eval_examples_defaults_to_the_runs_budget():
    from mtbert.config import parse_recipe

    recipe = parse_recipe({"name": "x", "model": {"tokenizer": "tok"}, "eval": {"max_examples": 300},
                           "tasks": {"sst": {"eval_examples": 50}, "quora": {}}})
    tasks = resolve_tasks(recipe)
    assert tasks["sst"].eval_examples == 50 and tasks["quora"].eval_examples == 300
