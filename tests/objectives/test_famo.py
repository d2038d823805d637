"""FAMO (Liu et al. 2023): the factors on the losses and the logits' update worked by hand."""

import math

import pytest
import torch

from mtbert.objectives.famo import logits_gradient, loss_factors


def test_loss_factors_by_hand_give_the_gradient_of_the_weighted_log_losses():
    # z = [1/2, 1/2], L = [1, 4]: c = 0.5 / 1 + 0.5 / 4 = 0.625; z / (c L) = [0.8, 0.2]
    factors = loss_factors(torch.zeros(2), torch.tensor([1.0, 4.0]))
    assert factors.tolist() == pytest.approx([0.8, 0.2])
    # the gradient of sum_i (z_i / c) log L_i with respect to L is z_i / (c L_i): the factors
    losses = torch.tensor([1.0, 4.0], requires_grad=True)
    z = torch.softmax(torch.tensor([0.3, -0.2]), 0)
    c = (z / losses.detach()).sum()
    (z / c * losses.log()).sum().backward()
    assert loss_factors(torch.tensor([0.3, -0.2]), losses.detach()).tolist() == pytest.approx(losses.grad.tolist())


def test_logits_update_by_hand_lowers_the_weight_of_the_task_that_improved_most():
    # delta = log before - log after = [log 2, 0]; z = [1/2, 1/2]: (diag z - z z^T) delta = [log 2 / 4, -log 2 / 4]
    gradient = logits_gradient(torch.zeros(2), torch.tensor([1.0, 4.0]), torch.tensor([0.5, 4.0]))
    assert gradient.tolist() == pytest.approx([math.log(2) / 4, -math.log(2) / 4])
    logits = torch.zeros(2, requires_grad=True)
    logits.grad = gradient
    torch.optim.Adam([logits], lr=0.025, weight_decay=1e-3).step()
    assert logits.tolist() == pytest.approx([-0.025, 0.025], abs=1e-6)
    assert torch.softmax(logits, 0)[0] < 0.5  # the task whose loss halved gets less weight
