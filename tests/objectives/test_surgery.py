"""Gradient surgery through torchjd: PCGrad's projection of two conflicting gradients by hand, the objective's
update on a tiny model equal to PCGrad computed by hand from autograd's per-task gradients, and what is refused (in
one line). Two processes taking the step of one process at double batch: test_balancing_processes.py."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from test_balancing import build, context  # noqa: F401  (the module's context fixture)
from torchjd.aggregation import PCGrad, UPGrad

from mtbert.errors import MtbertError
from mtbert.objectives.balancing import parameter_split
from mtbert.objectives.base import TrainingModel
from mtbert.objectives.supervised import LOSSES
from mtbert.objectives.surgery import GradientSurgery, build_aggregator, step_seed

PAIR = ["sst", "quora"]


def test_pcgrad_projects_two_conflicting_gradients_by_hand():
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # g1 . g2 = -1 < 0: they conflict
    g1, g2 = jacobian
    hand = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g2 @ g1) / (g1 @ g1) * g1)  # each projected off the other, summed
    assert hand.tolist() == [0.5, 1.5]
    assert PCGrad()(jacobian).tolist() == pytest.approx([0.5, 1.5])
    assert UPGrad()(jacobian).tolist() == pytest.approx([0.25, 0.75], abs=1e-3)  # dual cone, regularised
    assert PCGrad()(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).tolist() == pytest.approx([2.0, 1.0])  # no conflict: sum


def pcgrad_by_hand(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    p1 = g1 - min(0.0, float(g1 @ g2)) / float(g2 @ g2) * g2
    p2 = g2 - min(0.0, float(g2 @ g1)) / float(g1 @ g1) * g1
    return p1 + p2


@pytest.mark.parametrize("accumulated", [False, True], ids=["all_tasks", "one_task_per_micro_batch"])
def test_the_objectives_update_is_pcgrad_of_the_per_task_gradients(context, accumulated):  # noqa: F811
    # all_tasks: both tasks in one micro-batch. Accumulated (round_robin, grad_accum 2): one task per micro-batch,
    # each loss divided by 2, aggregated at the second; PCGrad is homogeneous, so the update is half the first's.
    grad_accum = 2 if accumulated else 1
    recipe = dataclasses.replace(context.recipe, train=dataclasses.replace(context.recipe.train,
                                                                          grad_accum=grad_accum))
    objective = build(GradientSurgery, dataclasses.replace(context, recipe=recipe), method="pcgrad")
    module = context.model.eval()  # no dropout: the hand computation's forwards equal the objective's
    module.zero_grad()
    stage = SimpleNamespace(index=0, start=0, steps=10, tasks=PAIR)
    batches = {task: context.streams[task].next_batch() for task in PAIR}
    shared, owned = parameter_split(module, PAIR)
    grads = {}
    for task in PAIR:
        spec = context.tasks[task]
        loss = spec.loss_weight * LOSSES[spec.loss](module(task, batches[task]), batches[task]["labels"])
        grads[task] = torch.autograd.grad(loss, shared + owned[task], allow_unused=True)
    flat = {task: torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                             for g, p in zip(grads[task][:len(shared)], shared)]) for task in PAIR}
    expected = pcgrad_by_hand(flat["sst"], flat["quora"]) / grad_accum
    micro_batches = [[task] for task in PAIR] if accumulated else [PAIR]
    for number, tasks in enumerate(micro_batches):
        last = number == len(micro_batches) - 1
        model = TrainingModel(forward=module, module=module, sync_gradients=lambda last=last: last)
        losses = {task: objective.loss(model, task, batches[task], stage=stage, step=0).loss for task in tasks}
        objective.backward(model, losses, lambda total: pytest.fail("surgery takes its own gradients"))
        if not last:
            assert all(p.grad is None for p in shared)  # nothing aggregated before the step's last micro-batch
    got = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in shared])
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)
    for task in PAIR:  # each task's own parameters: their ordinary gradient
        for p, g in zip(owned[task], grads[task][len(shared):]):
            assert torch.allclose(p.grad, g / grad_accum, atol=1e-7)
    module.zero_grad()


def test_pcgrad_draws_the_same_order_for_a_step_on_every_process_and_after_a_resume():
    assert step_seed(0, 5) == step_seed(0, 5) != step_seed(0, 6)


@pytest.mark.parametrize("setting, words", [({"deepspeed": True}, "DeepSpeed"), ({"loss_scaling": True}, "fp16")])
def test_refused_where_it_cannot_be_exact(context, setting, words):  # noqa: F811
    with pytest.raises(MtbertError, match=words) as error:
        build(GradientSurgery, dataclasses.replace(context, **setting), method="upgrad")
    assert "\n" not in str(error.value)


def test_a_missing_solver_is_one_line_naming_the_install(monkeypatch):
    from torchjd import aggregation

    def missing(*args, **kwargs):
        raise ImportError("no cvxpy")

    monkeypatch.setattr(aggregation, "CAGrad", missing)
    with pytest.raises(MtbertError, match=r"cagrad: its solver is not installed; pip install 'mtbert\[cagrad\]'"):
        build_aggregator("cagrad")
