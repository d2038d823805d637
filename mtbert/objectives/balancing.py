"""Task balancing: what the objectives that weigh a stage's tasks share. A recipe's (or a stage's) `balancing:`
picks the method; objectives/registry.py turns it into the stage's objective.

| method       | module         | each task's weight                                           | every task in a step |
|--------------|----------------|--------------------------------------------------------------|----------------------|
| static       | supervised.py  | its loss_weight                                              | no                   |
| uncertainty  | uncertainty.py | exp(-s) (classes, binary), exp(-s)/2 (regression), s learned | no                   |
| dwa          | dwa.py         | K softmax(r / T), r: the ratio of its last two window losses | no                   |
| gradnorm     | gradnorm.py    | learned so that gradient norms follow the training rates     | yes                  |
| famo         | famo.py        | softmax of learned logits, over its loss                     | yes (all_tasks)      |
| pcgrad, cagrad, upgrad, mgda | surgery.py | a torchjd aggregator's, over per-task gradients   | yes                  |

"Every task in a step" (config.EVERY_TASK_METHODS): the method compares the tasks' gradients or losses within one
optimizer step, so each step must hold a batch of every task (sampling all_tasks, or round_robin with grad_accum a
multiple of the task count); the recipe is refused otherwise. Learned weights are trained by an Adam of their own
(LearnedVector) and are checkpoint parts; every method logs `task_weights`, the factor on each task's loss (or,
for gradient surgery, on its gradient) at the logged step, which `mtbert report` plots over the run (static: each
task's loss_weight, where the recipe or the stage names a `balancing:`; supervised.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from mtbert.config import balancing_of
from mtbert.objectives.base import ObjectiveContext, StageLike, TaskLoss, TrainingModel
from mtbert.objectives.supervised import Supervised


class LearnedVector:
    """One learned value per task, stepped by an Adam of its own after each optimizer step (its learning rate is
    the recipe's balancing.lr, not the model's), from its gradient averaged over the processes. A checkpoint part."""

    def __init__(self, initial: torch.Tensor, weight_decay: float = 0.0):
        self.values = nn.Parameter(initial.clone())
        self.optimizer = torch.optim.Adam([self.values], lr=1.0, weight_decay=weight_decay)

    def step(self, lr: float, average: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """One Adam step from the gradient gathered since the last (none: nothing to do)."""
        if self.values.grad is None:
            return
        self.values.grad = average(self.values.grad)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.zero_grad()

    def zero_grad(self) -> None:
        self.values.grad = None

    def state_dict(self) -> dict:
        """A copy: later steps do not change it (the optimizer's own state_dict holds its live moment tensors)."""
        return {"values": self.values.detach().cpu().clone(), "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.values.copy_(state["values"])
        self.optimizer.load_state_dict(state["optimizer"])


def named(names: list[str], values: torch.Tensor) -> dict[str, float]:
    return dict(zip(names, values.tolist()))


class Balanced(Supervised):
    """The supervised loss of each task, weighed by `weigh`; the stage's balancing settings; the losses of the
    current optimizer step (and, with keep_batches, its batches) for methods that compare tasks after it."""

    keep_batches = False
    "Keep the step's batches until after_step (a method that computes the losses again after the step)."

    def __init__(self, context: ObjectiveContext, stages):
        super().__init__(context, stages)
        self.names = list(context.tasks)
        self.device = context.device
        self.accum = context.recipe.train.grad_accum
        self.settings = {index: balancing_of(context.recipe, config) for index, config in stages.items()}
        self.step = -1
        self.step_losses: dict[str, list[torch.Tensor]] = {}
        self.step_batches: list[tuple[str, dict[str, torch.Tensor]]] = []

    def positions(self, tasks: list[str]) -> torch.Tensor:
        """The tasks' positions in the run's task list (the order learned vectors are kept in)."""
        return torch.tensor([self.names.index(task) for task in tasks], device=self.device)

    def loss(self, model: TrainingModel, task: str, batch: dict[str, torch.Tensor], *, stage: StageLike,
             step: int) -> TaskLoss:
        if step != self.step:
            self.begin_step(step)
        out = super().loss(model, task, batch, stage=stage, step=step)
        self.step_losses.setdefault(task, []).append(out.loss.detach())
        if self.keep_batches:
            self.step_batches.append((task, batch))
        return TaskLoss(self.weigh(task, out.loss, stage), out.logged)

    def begin_step(self, step: int) -> None:
        """The first micro-batch of optimizer step `step` (what an earlier, perhaps skipped, step left goes)."""
        self.step, self.step_losses, self.step_batches = step, {}, []

    def weigh(self, task: str, loss: torch.Tensor, stage: StageLike) -> torch.Tensor:
        """What backward receives of the task: its loss times the method's weight."""
        return loss

    def step_mean_losses(self, model: TrainingModel, tasks: list[str]) -> torch.Tensor:
        """(len(tasks),): each task's mean loss over this step's micro-batches and the processes."""
        return model.average(torch.stack([torch.stack(self.step_losses[task]).mean() for task in tasks]))


# ---------------------------------------------------------------------------------------------
# Which parameters the tasks share (gradnorm.py, surgery.py)


def task_parameters(model: nn.Module, task: str) -> list[nn.Parameter]:
    """The trainable parameters task `task` runs through in a MultiTaskModel: its encoder branch, pooler, head."""
    parts = [model.encoder.branch(task)]
    parts += [modules[task] for modules in (model.poolers, model.heads) if task in modules]
    found = {id(p): p for part in parts for p in part.parameters() if p.requires_grad}
    return list(found.values())


def parameter_split(model: nn.Module, tasks: list[str]) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
    """(shared, owned): the trainable parameters more than one of `tasks` runs through, in the model's order, and
    each task's own."""
    reach = {task: task_parameters(model, task) for task in tasks}
    users: dict[int, int] = {}
    for params in reach.values():
        for p in params:
            users[id(p)] = users.get(id(p), 0) + 1
    shared = [p for p in model.parameters() if users.get(id(p), 0) > 1]
    return shared, {task: [p for p in params if users[id(p)] == 1] for task, params in reach.items()}


def top_shared_layer(model: nn.Module, tasks: list[str]) -> list[nn.Parameter]:
    """The trainable parameters of the highest encoder layer that every one of `tasks` runs through (GradNorm's
    W, the last shared layer); [] when there is none."""
    layers = [list(model.encoder.branch(task).encoder.layer) for task in tasks]
    common = set.intersection(*({id(layer) for layer in stack} for stack in layers))
    for layer in reversed(layers[0]):
        params = [p for p in layer.parameters() if p.requires_grad]
        if id(layer) in common and params:
            return params
    return []
