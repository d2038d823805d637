"""GradNorm (Chen et al. 2018): the weights' gradient and renormalisation worked by hand, and the per-task gradient
norms it collects at the last shared layer equal to autograd's."""

import pytest
import torch
from test_balancing import STAGE, TASKS, build, context  # noqa: F401  (the module's context fixture)

from mtbert.objectives.balancing import top_shared_layer
from mtbert.objectives.base import TrainingModel
from mtbert.objectives.gradnorm import FLOOR, GradNorm, gradnorm_gradient, renormalise


def test_weights_gradient_by_hand():
    # G = w ||grad L|| = [1, 3], mean 2; L / L(0) = [0.5, 1], over its mean: [2/3, 4/3]; alpha 1: target [4/3, 8/3]
    gradient = gradnorm_gradient(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]),
                                 torch.tensor([2.0, 1.0]), alpha=1.0)
    assert gradient.tolist() == [-1.0, 3.0]  # sign(G - target) x ||grad L||
    # alpha 0: the target is the mean norm for every task
    assert gradnorm_gradient(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0]), torch.ones(2), torch.ones(2),
                             alpha=0.0).tolist() == [-1.0, 3.0]


def test_renormalise_floors_then_sums_to_the_task_count():
    weights = renormalise(torch.tensor([0.5, 1.5, -1.0]))
    assert weights.tolist() == pytest.approx([3 * 0.5 / (2 + FLOOR), 3 * 1.5 / (2 + FLOOR), 3 * FLOOR / (2 + FLOOR)])
    assert weights.sum().item() == pytest.approx(3.0)


def test_one_step_collects_each_tasks_norm_at_the_shared_layer_and_moves_the_weights(context):  # noqa: F811
    objective = build(GradNorm, context, method="gradnorm", lr=0.1, alpha=1.5)
    module = context.model.eval()
    model = TrainingModel(forward=module, module=module)
    batches = {task: context.streams[task].next_batch() for task in TASKS}
    losses = {task: objective.loss(model, task, batches[task], stage=STAGE, step=0).loss for task in TASKS}
    layer = top_shared_layer(module, TASKS)
    expected = {task: torch.cat([g.flatten() for g in torch.autograd.grad(loss, layer, retain_graph=True)]).norm()
                for task, loss in losses.items()}
    objective.backward(model, losses, lambda total: total.backward())
    assert {t: g.norm().item() for t, g in objective.grads.items()} == pytest.approx(
        {t: v.item() for t, v in expected.items()}, rel=1e-5)
    objective.after_step(model, stage=STAGE, step=0)
    # First step: L = L(0), all rates 1, the target is the mean norm; Adam's first step moves each weight by
    # lr against its gradient's sign, then the weights are scaled to sum to 3.
    norms = torch.stack([expected[t] for t in TASKS])
    moved = 1 - 0.1 * torch.sign(norms - norms.mean())
    weights = objective.log_values(STAGE)["task_weights"]
    assert [weights[t] for t in TASKS] == pytest.approx((3 * moved / moved.sum()).tolist(), rel=1e-5)
