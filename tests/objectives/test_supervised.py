"""The supervised objective (mtbert/objectives/supervised.py) through the interface, on a fake model."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mtbert.config import BalancingConfig, StageConfig
from mtbert.objectives.base import TrainingModel
from mtbert.objectives.supervised import LOSSES, Supervised

from helpers import objective_context


class FakeModel:
    """Fixed outputs per task, whatever the batch; records what it was asked."""

    def __init__(self):
        self.calls = []
        self.outputs = {"sst": torch.tensor([[2.0, 0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0, 0.0]], requires_grad=True),
                        "quora": torch.tensor([1.5, -0.5], requires_grad=True),
                        "sts": torch.tensor([4.0, 1.0], requires_grad=True)}

    def __call__(self, task, batch, **kwargs):
        self.calls.append((task, kwargs))
        return self.outputs[task]


LABELS = {"sst": torch.tensor([0, 3]), "quora": torch.tensor([1.0, 0.0]), "sts": torch.tensor([3.0, 1.0])}


@pytest.fixture
def supervised(tmp_path, tokenizer_dir):
    context = objective_context(tmp_path, tokenizer_dir, ["tasks.quora.loss_weight=0.5"])
    return Supervised(context, {0: StageConfig()}), context


@pytest.mark.parametrize("task, loss", [("sst", F.cross_entropy), ("quora", F.binary_cross_entropy_with_logits),
                                        ("sts", F.mse_loss)])
def test_each_task_s_own_loss_times_its_weight(supervised, task, loss):
    objective, context = supervised
    fake = FakeModel()
    out = objective.loss(TrainingModel(fake, fake), task, {"labels": LABELS[task]}, stage=None, step=0)
    expected = loss(fake.outputs[task], LABELS[task].long() if task == "sst" else LABELS[task])
    weight = 0.5 if task == "quora" else 1.0
    assert torch.equal(out.logged, expected) and torch.equal(out.loss, weight * expected)
    assert fake.calls == [(task, {})]  # one forward, through the prepared model
    assert context.tasks[task].loss in LOSSES


def test_it_trains_the_run_s_task_streams_and_keeps_no_state(supervised):
    objective, context = supervised
    assert objective.streams is context.streams and objective.state_parts() == {} and objective.parameters() == []
    assert objective.describe(None) == "supervised"


STAGE = SimpleNamespace(index=0, start=0, steps=10, tasks=["sst", "quora", "sts"])


@pytest.mark.parametrize("where", ["recipe", "stage"])
def test_static_balancing_named_in_the_recipe_logs_each_tasks_loss_weight(supervised, where):
    objective, context = supervised
    assert objective.log_values(STAGE) == {}  # no balancing: in the recipe: the log stays as it was
    static = BalancingConfig(method="static")
    if where == "recipe":
        context = dataclasses.replace(context, recipe=dataclasses.replace(context.recipe, balancing=static))
    named = Supervised(context, {0: StageConfig(balancing=static if where == "stage" else None)})
    assert named.log_values(STAGE) == {"task_weights": {"sst": 1.0, "quora": 0.5, "sts": 1.0}}
    pair = SimpleNamespace(index=0, start=0, steps=10, tasks=["quora", "sts"])
    assert named.log_values(pair) == {"task_weights": {"quora": 0.5, "sts": 1.0}}  # the stage's tasks only
