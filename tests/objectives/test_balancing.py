"""What the balancing objectives share (objectives/balancing.py), uncertainty weighting and DWA against their
definitions worked by hand, and, for every method, a run that resumes exactly with its learned weights and logs
them, which `mtbert report` plots."""

import dataclasses
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from mtbert.commands.report import WEIGHTS_FILE, write_report
from mtbert.config import BalancingConfig, StageConfig, load_recipe
from mtbert.objectives.balancing import LearnedVector, parameter_split, top_shared_layer
from mtbert.objectives.base import TrainingModel
from mtbert.objectives.dwa import DynamicWeightAverage, dwa_weights
from mtbert.objectives.uncertainty import UncertaintyWeighting
from mtbert.training.loop import train

from helpers import objective_context, write_recipe

TASKS = ["sst", "quora", "sts"]  # classes, binary, regression
STAGE = SimpleNamespace(index=0, start=0, steps=100, tasks=TASKS)
ALONE = TrainingModel(forward=None, module=None)  # one process: model.average is the identity


@pytest.fixture(scope="module")
def context(tmp_path_factory, tokenizer_dir):
    return objective_context(tmp_path_factory.mktemp("balancing"), tokenizer_dir, ["sampling.strategy=all_tasks"])


def build(kind, context, **balancing):
    """An objective of class `kind` for one stage of the context's recipe, with `balancing` settings."""
    recipe = dataclasses.replace(context.recipe, balancing=BalancingConfig(**balancing))
    return kind(dataclasses.replace(context, recipe=recipe), {0: StageConfig()})


# ---------------------------------------------------------------------------------------------
# Shared pieces


def test_learned_vector_takes_adam_steps_at_the_given_rate_and_round_trips_its_state():
    vector = LearnedVector(torch.zeros(2))
    vector.step(0.1, lambda t: t)  # no gradient yet: nothing moves
    assert vector.values.tolist() == [0.0, 0.0]
    vector.values.grad = torch.tensor([3.0, -0.5])
    vector.step(0.1, lambda t: t * 2)  # the averaged gradient; Adam's first step is lr x its sign
    assert torch.allclose(vector.values, torch.tensor([-0.1, 0.1]), atol=1e-6) and vector.values.grad is None
    copy = LearnedVector(torch.ones(2))
    copy.load_state_dict(vector.state_dict())
    for v in (vector, copy):
        v.values.grad = torch.tensor([1.0, 1.0])
        v.step(0.1, lambda t: t)
    assert torch.equal(vector.values, copy.values)  # Adam's moments came along


def test_parameter_split_and_the_top_shared_layer(context):
    model = context.model
    shared, owned = parameter_split(model, TASKS)
    shared_ids = {id(p) for p in shared}
    assert {id(p) for p in model.encoder.parameters()} >= shared_ids and shared
    for task in TASKS:
        assert {id(p) for p in model.heads[task].parameters()} <= {id(p) for p in owned[task]}
        assert not shared_ids & {id(p) for p in owned[task]}
    top = top_shared_layer(model, TASKS)
    last = list(model.encoder.branch("sst").encoder.layer)[-1]
    assert [id(p) for p in top] == [id(p) for p in last.parameters()]


# ---------------------------------------------------------------------------------------------
# Uncertainty weighting (Kendall et al. 2018): exp(-s) L + s/2, regression exp(-s) L / 2 + s/2


def test_uncertainty_weighs_by_its_two_forms_and_steps_s_by_hand(context):
    objective = build(UncertaintyWeighting, context, method="uncertainty", lr=0.1)
    losses = {"sst": torch.tensor(2.0), "quora": torch.tensor(0.3), "sts": torch.tensor(0.4)}
    objective.begin_step(0)
    weighed = {task: objective.weigh(task, loss, STAGE) for task, loss in losses.items()}
    assert [weighed[t].item() for t in TASKS] == pytest.approx([2.0, 0.3, 0.2])  # s = 0: L, L, L / 2
    sum(weighed.values()).backward()
    # d/ds: -exp(-s) L + 1/2 -> -1.5, 0.2, and -exp(-s) L / 2 + 1/2 -> 0.3; Adam's first step: -lr x sign
    assert objective.log_variance.values.grad.tolist() == pytest.approx([-1.5, 0.2, 0.3])
    objective.after_step(ALONE, stage=STAGE, step=0)
    s = objective.log_variance.values.detach()
    assert s.tolist() == pytest.approx([0.1, -0.1, -0.1], abs=1e-6)
    logged = objective.log_values(STAGE)
    assert logged["task_weights"]["sst"] == pytest.approx(math.exp(-0.1))
    assert logged["task_weights"]["sts"] == pytest.approx(0.5 * math.exp(0.1))
    assert objective.weigh("sts", torch.tensor(0.4), STAGE).item() == pytest.approx(0.2 * math.exp(0.1) - 0.05)


# ---------------------------------------------------------------------------------------------
# DWA (Liu et al. 2019): lambda_k = K softmax(r / T), r_k = L_k(w-1) / L_k(w-2); 1 in the first two windows


def test_dwa_weights_by_hand():
    weights = dwa_weights(torch.tensor([1.0, 2.0, float("nan")]), torch.tensor([2.0, 2.0, 1.0]), temperature=2.0)
    a, b = math.exp(0.5 / 2), math.exp(1.0 / 2)
    assert weights.tolist() == pytest.approx([2 * a / (a + b), 2 * b / (a + b), 1.0])  # the untrained task: 1


def test_dwa_follows_window_means(context):
    objective = build(DynamicWeightAverage, context, method="dwa", window=2, temperature=1.0)

    def step(step, values):
        objective.begin_step(step)
        objective.step_losses = {t: [torch.tensor(v)] for t, v in zip(TASKS, values)}
        objective.after_step(ALONE, stage=STAGE, step=step)

    for n, values in enumerate([(4, 4, 4), (2, 6, 4), (3, 3, 3)]):  # window 1: means 3, 5, 4
        step(n, values)
        assert objective.weights.tolist() == [1.0, 1.0, 1.0]  # windows 1 and 2 train at weight 1
    step(3, (3, 3, 3))  # window 2 ends: means 3, 3, 3; ratios against window 1: 1, 0.6, 0.75
    e = [math.exp(r) for r in (1.0, 0.6, 0.75)]
    assert objective.weights.tolist() == pytest.approx([3 * x / sum(e) for x in e])
    assert objective.weigh("sst", torch.tensor(2.0), STAGE).item() == pytest.approx(6 * e[0] / sum(e))
    step(4, (1, 1, 1))  # mid-window: unchanged
    assert objective.weights.tolist() == pytest.approx([3 * x / sum(e) for x in e])
    fresh = build(DynamicWeightAverage, context, method="dwa", window=2, temperature=1.0)
    fresh.load_state_dict(objective.state_dict())
    assert torch.equal(fresh.weights, objective.weights) and torch.equal(fresh.history, objective.history)


# ---------------------------------------------------------------------------------------------
# Every method: a run cut after step 3 and resumed ends bit-identical, learned weights included; the log holds
# the weights and `mtbert report` plots them


STEPS = ["train.max_steps=6", "train.checkpoint_every=3", "train.keep_checkpoints=5", "eval.every_steps=0",
         "train.log_every=1", "sampling.strategy=all_tasks", "model.dropout=0"]
PART = {"uncertainty": "uncertainty", "gradnorm": "gradnorm", "famo": "famo", "pcgrad": None}
# uncertainty in the quick suite; the slow suite adds GradNorm (weights and first losses), FAMO (logits, Adam, the
# extra forward) and PCGrad (its random order). DWA's and UPGrad's paths are the same kinds: DWA's state round-trip
# is tested above, UPGrad is deterministic and runs PCGrad's code.
METHODS = [pytest.param("uncertainty"), *(pytest.param(m, marks=pytest.mark.slow) for m in
                                          ("gradnorm", "famo", "pcgrad"))]


def run(root: Path, tokenizer_dir: Path, name: str, method: str, extra=(), resume=None):
    recipe = load_recipe(write_recipe(root, tokenizer_dir), [*STEPS, f"balancing.method={method}",
                                                             f"output_dir={root / name}", *extra])
    return train(recipe, resume=resume)


def records(folder: Path) -> list[dict]:
    lines = (folder / "train_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "elapsed_s")} for line in lines]


@pytest.mark.parametrize("method", METHODS)
def test_a_resumed_run_ends_bit_identical_with_its_learned_weights(tmp_path, tokenizer_dir, method):
    best = run(tmp_path, tokenizer_dir, "full", method)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-3", resumed / "checkpoints" / "step-3")
    shutil.copy(full / "train_log.jsonl", resumed / "train_log.jsonl")
    assert run(tmp_path, tokenizer_dir, "resumed", method, resume="latest") == best
    for rel in ["model.safetensors", *(f"checkpoints/step-6/{p.name}" for p in
                                       (full / "checkpoints" / "step-6").glob("*.safetensors"))]:
        a, b = load_file(full / rel), load_file(resumed / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    logged = records(full)
    assert logged == records(resumed)
    weights = [r["task_weights"] for r in logged if "loss" in r]
    assert len(weights) == 6 and set(weights[0]) == set(TASKS)
    assert weights[-1] != weights[0]  # learned or adaptive: they moved
    if PART[method]:
        state = (full / "checkpoints" / "step-3")
        assert any(PART[method] in p.name for p in state.iterdir()), sorted(p.name for p in state.iterdir())
    if method == "uncertainty":  # mtbert report draws the logged weights
        report = write_report(full, progress=False)
        assert (report.folder / WEIGHTS_FILE).is_file()
        assert f"]({WEIGHTS_FILE})" in (report.folder / "report.md").read_text()


def test_static_weights_named_in_the_recipe_are_logged_at_every_record(tmp_path, tokenizer_dir):
    run(tmp_path, tokenizer_dir, "static", "static", ["train.max_steps=2", "train.checkpoint_every=0",
                                                       "tasks.quora.loss_weight=0.5", "eval.max_examples=8"])
    weights = [r.get("task_weights") for r in records(tmp_path / "static") if "loss" in r]
    assert weights == [{"sst": 1.0, "quora": 0.5, "sts": 1.0}] * 2  # each task's loss_weight, constant
