import json
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mtbert.config import load_recipe
from mtbert.data.streams import TaskStream
from mtbert.errors import MtbertError
from mtbert.objectives.supervised import LOSSES
from mtbert.training import faults
from mtbert.training import loop as train_module
from mtbert.training.loop import latest_scores, replaces_best, tasks_due, train
from mtbert.training.setup import optimizer_groups

from helpers import write_recipe


@pytest.fixture(autouse=True)
def _no_fault(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)


def log_records(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture
def drawn(monkeypatch) -> list[tuple[int, list[int], list]]:
    """Every batch the training loop draws: (stream id, dataset indices, labels), in order."""
    batches = []
    next_indices = TaskStream.next_indices

    def recording(self):
        indices = next_indices(self)
        batches.append((self.stream_id, indices, [self.dataset[i]["label"] for i in indices]))
        return indices

    monkeypatch.setattr(TaskStream, "next_indices", recording)
    return batches


def test_trains_evaluates_and_exports(tmp_path, tokenizer_dir):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, eval={"every_steps": 20}))
    best = train(recipe)
    out = tmp_path / "ckpt"
    for name in ("model.safetensors", "mtbert.json", "recipe.yaml", "metrics.json", "tokenizer.json",
                 "train_log.jsonl"):
        assert (out / name).is_file(), name
    assert set(best) >= {"sst", "quora", "sts", "overall", "step"}
    assert best["sst"]["main"] == best["sst"]["accuracy"]
    assert json.loads((out / "metrics.json").read_text()) == best
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged][:2] == [5, 10] and set(logged[0]["loss"]) <= {"sst", "quora", "sts"}
    assert sum("dev" in r for r in records) >= 2
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_learns_a_learnable_task(tmp_path, tokenizer_dir):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, tasks={"sst": {"pooler": "mean"}},
                                      train={"epochs": 4}))
    best = train(recipe)
    assert best["sst"]["accuracy"] > 0.9  # chance is 0.5: 'great' -> 4, 'awful' -> 0


def test_all_tasks_trains_every_task_at_every_step(tmp_path, tokenizer_dir, drawn):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir), ["sampling.strategy=all_tasks", "train.grad_accum=2",
                                                                 "train.max_steps=3", "train.log_every=1"])
    train(recipe)
    steps = [r for r in log_records(tmp_path / "ckpt") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(set(r["loss"]) == {"sst", "quora", "sts"} for r in steps)
    # 3 steps x 2 micro-batches x every task, in recipe order within each micro-batch.
    assert [stream for stream, _, _ in drawn] == [0, 1, 2] * 6


def test_class_balanced_draws_the_rare_label_as_often_as_the_common_one(tmp_path, tokenizer_dir, drawn):
    recipe_path = write_recipe(tmp_path, tokenizer_dir, tasks={"sst": {"class_balanced": True}})
    rows = ["\tid\tsentence\tsentiment"] + [f"{i}\tt{i}\tthe film was {'great' if i < 8 else 'awful'}\t"
                                              f"{4 if i < 8 else 0}" for i in range(200)]
    (tmp_path / "data" / "cs224n" / "ids-sst-train.csv").write_text("\n".join(rows) + "\n")  # 4% label 4
    train(load_recipe(recipe_path, ["train.max_steps=10"]))
    labels = Counter(label for _, _, batch in drawn for label in batch)
    assert sum(labels.values()) == 160
    assert 0.35 < labels[4] / 160 < 0.65  # without class_balanced: 8 of 200, 4%


def test_max_train_examples_caps_each_pass_and_so_the_epoch(tmp_path, tokenizer_dir, drawn):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, tasks={"quora": {"max_train_examples": 16}},
                                      train={"epochs": 2}))
    train(recipe)
    # 40 training rows, 16 per pass: one batch of 16 per epoch, so 2 steps (uncapped: 3 batches, 6 steps).
    assert [r["step"] for r in log_records(tmp_path / "ckpt") if "dev" in r] == [1, 2]  # each epoch's end
    assert [len(indices) for _, indices, _ in drawn] == [16, 16]
    first, second = (set(indices) for _, indices, _ in drawn)
    assert len(first) == len(second) == 16 and first != second  # a fresh subset each pass


def test_annealed_sampling_moves_over_a_one_epoch_run(tmp_path, tokenizer_dir):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir), ["sampling.strategy=annealed", "train.max_steps=5",
                                                                 "train.log_every=1"])
    train(recipe)
    p = [r["task_p"] for r in log_records(tmp_path / "ckpt") if "loss" in r]
    sizes = np.array([256, 40, 40])  # sst, quora, sts training rows
    np.testing.assert_allclose(list(p[0].values()), sizes / sizes.sum())  # alpha 1 at the first step
    np.testing.assert_allclose(list(p[2].values()), sizes ** 0.6 / (sizes ** 0.6).sum())
    np.testing.assert_allclose(list(p[-1].values()), sizes ** 0.2 / (sizes ** 0.2).sum())  # 1 - 0.8 at the last


# --- model selection ------------------------------------------------------------------------------


def test_a_finite_score_replaces_a_nan_best_and_a_nan_never_replaces_a_finite_one():
    nan = float("nan")
    assert replaces_best(nan, None) and replaces_best(0.1, None)
    assert replaces_best(0.1, {"overall": nan})  # NaN compared false with everything: it blocked every later model
    assert replaces_best(nan, {"overall": nan})  # among non-finite scores the later model is exported
    assert not replaces_best(nan, {"overall": 0.1}) and not replaces_best(float("inf"), {"overall": 0.1})
    assert replaces_best(0.2, {"overall": 0.1}) and not replaces_best(0.1, {"overall": 0.1})  # a tie keeps the first
    assert not replaces_best(0.05, {"overall": 0.1})


@pytest.mark.parametrize("scores,exported", [([math.nan, 0.5, 0.4], 4), ([math.nan, math.nan, 0.3], 6),
                                             ([0.2, math.nan, 0.1], 2), ([math.nan, math.nan, math.nan], 6)])
def test_the_run_exports_the_best_finite_evaluation(tmp_path, tokenizer_dir, monkeypatch, scores, exported):
    scripted = iter(scores)

    def evaluate_dev(model, tasks, loaders, accelerator):
        overall = next(scripted)
        return {"sts": {"pearson": overall, "main": overall}, "overall": overall}

    monkeypatch.setattr(train_module, "evaluate_dev", evaluate_dev)
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, tasks={"sts": {}}),
                         ["train.max_steps=6", "eval.every_steps=2"])
    best = train(recipe)
    assert best["step"] == exported

    def not_json(constant):
        raise ValueError(f"{constant} is not JSON")

    stored = json.loads((tmp_path / "ckpt" / "metrics.json").read_text(), parse_constant=not_json)
    assert stored["step"] == exported
    assert (stored["overall"] is None) == math.isnan(best["overall"])  # NaN is not JSON: written as null
    for line in (tmp_path / "ckpt" / "train_log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=not_json)


# --- non-finite losses name the task that had one -------------------------------------------------

HUGE = "1e39"  # finite as a Python float and as each task's own loss: only the weighted loss overflows


@pytest.mark.parametrize("overrides,message", [
    # Round robin: sst's step 1. Its weighted loss was not watched, so step 1 trained on it, every weight
    # became NaN, and quora's NaN loss at step 2 got the blame.
    ([f"tasks.sst.loss_weight={HUGE}"], "non-finite loss on task sst at step 1;"),
    # Gradient accumulation: step 1 is sst then quora; quora's is the non-finite one.
    ([f"tasks.quora.loss_weight={HUGE}", "train.grad_accum=2"], "non-finite loss on task quora at step 1;"),
    # all_tasks: every task non-finite at that step is named, not the first in recipe order alone.
    ([f"tasks.quora.loss_weight={HUGE}", f"tasks.sts.loss_weight={HUGE}", "sampling.strategy=all_tasks"],
     "non-finite loss on tasks quora, sts at step 1;"),
    ([f"tasks.sts.loss_weight={HUGE}", "sampling.strategy=all_tasks"], "non-finite loss on task sts at step 1;"),
])
def test_a_non_finite_loss_is_blamed_on_its_own_task_and_step(tmp_path, tokenizer_dir, overrides, message):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir), ["train.max_steps=4", *overrides])
    with pytest.raises(MtbertError) as error:
        train(recipe)
    assert str(error.value).startswith(message)


def test_a_fresh_run_never_points_back_to_an_earlier_runs_checkpoint(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path, tokenizer_dir)
    train(load_recipe(recipe, ["train.max_steps=2"]))  # an earlier run, with its checkpoint, in the same folder
    with pytest.raises(MtbertError) as error:
        train(load_recipe(recipe, ["train.max_steps=4", f"tasks.sst.loss_weight={HUGE}", "train.log_every=1"]))
    assert "at step 1; training stopped, no checkpoint was saved before it" in str(error.value)


def test_non_finite_gradients_of_finite_losses_are_named_as_such(tmp_path, tokenizer_dir, monkeypatch):
    def mse_with_nan_gradient(outputs, labels):
        zero = (outputs - outputs.detach()).sum()  # 0, whose square root has an infinite slope
        return mse(outputs, labels) + 0.0 * zero.sqrt()  # a finite value, NaN gradients

    mse = LOSSES["mse"]
    monkeypatch.setitem(LOSSES, "mse", mse_with_nan_gradient)
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir), ["train.max_steps=4"])
    with pytest.raises(MtbertError, match=r"^non-finite gradients \(every task's loss was finite\) at step 3;"):
        train(recipe)  # round robin: sts trains at step 3 (this used to blame sst's NaN loss at step 4)


def test_skipping_drops_the_step_with_the_weighted_overflow_and_keeps_the_weights(tmp_path, tokenizer_dir):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir), [
        "train.max_steps=4", f"tasks.quora.loss_weight={HUGE}", "train.on_nonfinite=skip"])
    best = train(recipe)
    skipped = [r for r in log_records(tmp_path / "ckpt") if "skipped" in r]
    # Round robin: quora trains at step 2 only; that step alone is skipped. Before, step 2 trained, the
    # weights became NaN, steps 3 and 4 were skipped for sts and sst, and a NaN model was exported.
    assert skipped == [{"step": 2, "skipped": "non-finite loss on task quora"}]
    assert math.isfinite(best["overall"])


def test_same_seed_same_model(tmp_path, tokenizer_dir):
    from safetensors.torch import load_file

    weights = []
    for run in ("a", "b"):
        recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir), [f"output_dir={tmp_path / run}",
                                                                      "train.max_steps=6"])
        train(recipe)
        weights.append(load_file(tmp_path / run / "model.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_no_weight_decay_on_biases_and_layernorm():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    decay, no_decay = optimizer_groups(model, 0.1)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


# --- per-task evaluation budgets (tasks.*.eval_every) ------------------------------------------------


def test_each_task_is_due_on_its_own_schedule_and_every_task_at_a_stage_end():
    tasks = {"a": SimpleNamespace(eval_every=2), "b": SimpleNamespace(eval_every=0),
             "c": SimpleNamespace(eval_every=None)}
    assert tasks_due(tasks, 4, run_evaluates=False, stage_end=False) == ["a"]
    assert tasks_due(tasks, 3, run_evaluates=True, stage_end=False) == ["c"]  # 0: never between stage ends
    assert tasks_due(tasks, 6, run_evaluates=True, stage_end=False) == ["a", "c"]
    assert tasks_due(tasks, 7, run_evaluates=False, stage_end=True) == ["a", "b", "c"]
    assert tasks_due(tasks, 5, run_evaluates=False, stage_end=False) == []


def test_the_overall_score_is_the_mean_of_each_tasks_latest_score():
    scores: dict = {}
    metrics, record = latest_scores(scores, {"a": {"main": 0.2}, "overall": 0.2}, 2, ["a", "b"])
    assert metrics is None and record == {"dev": {"a": {"main": 0.2}}, "dev_pending": ["b"]}
    metrics, record = latest_scores(scores, {"b": {"main": 0.6}, "overall": 0.6}, 3, ["a", "b"])
    assert metrics == {"a": {"main": 0.2}, "b": {"main": 0.6}, "overall": pytest.approx(0.4)}
    assert record == {"dev": {"b": {"main": 0.6}, "overall": pytest.approx(0.4)}, "dev_carried": {"a": 2}}
    metrics, record = latest_scores(scores, {"a": {"main": 0.0}, "b": {"main": 0.1}, "overall": 0.05}, 4, ["a", "b"])
    assert metrics["overall"] == pytest.approx(0.05) and "dev_carried" not in record


def test_per_task_eval_every_evaluates_each_task_on_its_schedule_and_exports_the_best_overall(
        tmp_path, tokenizer_dir, monkeypatch):
    scripted = iter([{"sst": 0.1}, {"quora": 0.5}, {"sst": 0.3, "sts": 0.2}, {"sst": 0.4, "quora": 0.6},
                     {"sst": 0.1, "quora": 0.1, "sts": 0.1}])
    evaluated = []

    def evaluate_dev(model, tasks, loaders, accelerator):
        main = next(scripted)
        evaluated.append(sorted(loaders))
        assert sorted(main) == sorted(loaders)
        overall = float(np.mean(list(main.values())))
        return {n: {"accuracy": v, "main": v} for n, v in main.items()} | {"overall": overall}

    monkeypatch.setattr(train_module, "evaluate_dev", evaluate_dev)
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir),
                         ["train.max_steps=7", "eval.every_steps=3", "tasks.sst.eval_every=2",
                          "tasks.sts.eval_every=4"])
    best = train(recipe)
    assert evaluated == [["sst"], ["quora"], ["sst", "sts"], ["quora", "sst"], ["quora", "sst", "sts"]]
    dev = {r["step"]: r for r in log_records(tmp_path / "ckpt") if "dev" in r}
    assert sorted(dev) == [2, 3, 4, 6, 7]
    assert dev[2]["dev_pending"] == ["quora", "sts"] and "overall" not in dev[2]["dev"]
    assert dev[3]["dev_pending"] == ["sts"]
    assert dev[4]["dev"]["overall"] == pytest.approx((0.3 + 0.5 + 0.2) / 3) and dev[4]["dev_carried"] == {"quora": 3}
    assert dev[6]["dev"]["overall"] == pytest.approx((0.4 + 0.6 + 0.2) / 3) and dev[6]["dev_carried"] == {"sts": 4}
    assert "dev_carried" not in dev[7] and dev[7]["dev"]["overall"] == pytest.approx(0.1)
    # The best overall was at step 6, with sts's score carried from step 4: that model is the exported one.
    assert best["step"] == 6 and best["sts"]["main"] == 0.2 and best["overall"] == pytest.approx(0.4)
    assert json.loads((tmp_path / "ckpt" / "metrics.json").read_text())["step"] == 6
