"""FAMO, fast adaptive multitask optimisation (Liu, Feng, Stone and Liu, NeurIPS 2023, section 3 and Algorithm 1):
one backward per step, of a weighted sum of the tasks' log-losses, with weights that move towards the tasks whose
loss fell least.

    z = softmax(xi),   D_i = L_i - L_i* + eps,   c = sum_i z_i / D_i
    the model trains on  sum_i (z_i / c) log D_i, whose gradient is  sum_i z_i / (c D_i) grad L_i
    after the optimizer step, the losses again on the same batches (no gradient, the model in training mode):
    delta_i = log D_i(before) - log D_i(after),   xi <- Adam step on  J_softmax(xi)^T delta  (+ decay)

L_i* = 0 (every mtbert loss is non-negative), eps = 1e-8. The logits xi start at 0 and take an Adam step of
learning rate balancing.lr with L2 decay balancing.weight_decay (gamma), as the authors' code does (its defaults:
0.025 and 1e-3). The extra forward costs about a third of a step. FAMO needs every task's loss in each
micro-batch: `sampling.strategy: all_tasks`. Under several processes the losses are averaged over the processes
before any weight is computed. Checkpoint part `famo`: xi and its Adam state. Logged: `task_weights`, the factor
z_i / (c D_i) on each task's loss at the logged step.
"""

from __future__ import annotations

import torch

from mtbert.objectives.balancing import Balanced, LearnedVector, named
from mtbert.objectives.supervised import LOSSES

EPSILON = 1e-8


def loss_factors(logits: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """z_i / (c D_i): what multiplies each task's loss so that its gradient is FAMO's."""
    z = torch.softmax(logits, dim=0)
    d = losses + EPSILON
    return z / ((z / d).sum() * d)


def logits_gradient(logits: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """J_softmax(xi)^T delta, delta_i = log D_i(before) - log D_i(after)."""
    z = torch.softmax(logits, dim=0)
    delta = torch.log(before + EPSILON) - torch.log(after + EPSILON)
    return z * (delta - (z * delta).sum())  # (diag(z) - z z^T) delta


class Famo(Balanced):
    keep_batches = True

    def __init__(self, context, stages):
        super().__init__(context, stages)
        self.logits = LearnedVector(torch.zeros(len(self.names), device=self.device))
        self.factors = torch.ones(len(self.names), device=self.device)

    def state_parts(self):
        return {"famo": self.logits}

    def backward(self, model, losses, backward):
        tasks = list(losses)
        at = self.positions(tasks)
        values = model.average(torch.stack([loss.detach() for loss in losses.values()]))
        factors = loss_factors(self.logits.values.detach()[at], values)
        self.factors[at] = factors
        total = torch.zeros((), device=self.device)
        for factor, loss in zip(factors, losses.values()):
            total = total + factor * loss
        backward(total)

    @torch.no_grad()
    def after_step(self, model, *, stage, step):
        tasks, settings = stage.tasks, self.settings[stage.index]
        before = self.step_mean_losses(model, tasks)
        again: dict[str, list[torch.Tensor]] = {}
        with model.autocast():
            for task, batch in self.step_batches:
                again.setdefault(task, []).append(self.task_loss(model.module, task, batch))
        after = model.average(torch.stack([torch.stack(again[task]).mean() for task in tasks]))
        at = self.positions(tasks)
        gradient = torch.zeros_like(self.logits.values)
        gradient[at] = logits_gradient(self.logits.values.detach()[at], before, after)
        self.logits.values.grad = gradient
        for group in self.logits.optimizer.param_groups:
            group["weight_decay"] = settings.weight_decay
        self.logits.step(settings.lr, lambda tensor: tensor)  # from averaged losses: equal on every process
        self.step_batches = []

    def task_loss(self, module, task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task's loss as `loss` gives it (times its loss_weight), from a forward of the model itself."""
        spec = self.tasks[task]
        return spec.loss_weight * LOSSES[spec.loss](module(task, batch), batch["labels"])

    def log_values(self, stage):
        at = self.positions(stage.tasks)
        return {"task_weights": named(stage.tasks, self.factors[at]),
                "famo_logits": named(stage.tasks, self.logits.values.detach()[at])}

    def describe(self, stage):
        return "supervised, FAMO"
