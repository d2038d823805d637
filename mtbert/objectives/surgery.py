"""Gradient surgery: the tasks' gradients of each optimizer step combined by an aggregator of torchjd (Quinton and
Rey 2024, "Jacobian Descent for Multi-Objective Optimization"), instead of summed.

    pcgrad   PCGrad()            Yu et al., NeurIPS 2020: each gradient projected off those it conflicts with,
                                 in random order, then summed
    cagrad   CAGrad(c=cagrad_c)  Liu et al., NeurIPS 2021: the best worst-task improvement within c x |mean|
                                 of the mean gradient (needs cvxpy: pip install 'mtbert[cagrad]')
    upgrad   UPGrad()            Quinton and Rey 2024: each gradient projected onto the dual cone of all of
                                 them, averaged
    mgda     MGDA()              Desideri 2012; Sener and Koltun, NeurIPS 2018: the min-norm point of the
                                 gradients' convex hull

Each step: the Jacobian J of the tasks' losses with respect to the shared parameters (those more than one of the
stage's tasks runs through: the whole encoder in the default plan), one row per task, summed over the step's
micro-batches. Every task's batch has a forward of its own, so the rows take one backward per task, no more work
than the summed loss's one backward; each task's own parameters (head, pooler, own layers) get their ordinary
gradient. At the step's last micro-batch the aggregator turns J into the shared parameters' gradient
(torchjd.autojac.jac_to_grad, from the Gramian J J^T; the concatenated matrix is never formed), and the
aggregator's weight on each task's gradient is logged as `task_weights`. J holds one gradient per task: for
all-MiniLM-L6-v2 and three tasks, 3 x 22.7 M floats.

PCGrad's random order is drawn from a generator seeded by the run's seed and the step: every process draws the
same order, and a resumed run the one the uninterrupted run drew.

Several processes: the forwards run on the model itself, not on the DDP wrapper (whose gradient averaging works
by hooks that per-task gradients bypass: each process would keep its own update); J and the own parameters'
gradients are averaged over the processes before the aggregator sees them, so every process takes the step one
process takes at the global batch. DeepSpeed (whose engine steps inside its own backward) and fp16's loss scaler
are refused.
"""

from __future__ import annotations

import numpy as np
import torch

from mtbert.errors import MtbertError
from mtbert.objectives.balancing import Balanced, named, parameter_split

INSTALL = {"cagrad": "pip install 'mtbert[cagrad]' (cvxpy)",
           "upgrad": "pip install 'torchjd[quadprog-projector]' (quadprog, qpsolvers)"}


def build_aggregator(method: str, cagrad_c: float = 0.4):
    """torchjd's aggregator for a gradient-surgery method; a missing solver is one line naming what to install."""
    from torchjd import aggregation

    try:
        if method == "pcgrad":
            return aggregation.PCGrad()
        if method == "upgrad":
            return aggregation.UPGrad()
        if method == "mgda":
            return aggregation.MGDA()
        if method == "cagrad":
            return aggregation.CAGrad(c=cagrad_c)
    except ImportError:
        raise MtbertError(f"balancing.method {method}: its solver is not installed; {INSTALL[method]}") from None
    raise ValueError(f"unknown gradient-surgery method {method!r}")


def step_seed(seed: int, step: int) -> int:
    """The seed of step `step`'s random draws (PCGrad's order): the same on every process and after a resume."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


class GradientSurgery(Balanced):
    def __init__(self, context, stages):
        super().__init__(context, stages)
        methods = ", ".join(sorted({s.method for s in self.settings.values()}))
        if context.deepspeed:
            raise MtbertError(f"balancing.method {methods}: gradient surgery is not available under DeepSpeed, whose "
                              f"engine steps inside its own backward; use DDP (accelerate_configs/multi_gpu.yaml)")
        if context.loss_scaling:
            raise MtbertError(f"balancing.method {methods}: gradient surgery takes each task's gradient itself, "
                              f"without fp16's loss scaler; use bf16 (speed.bf16) or full precision")
        self.aggregators = {index: build_aggregator(s.method, s.cagrad_c) for index, s in self.settings.items()}
        self.seed = context.recipe.seed
        self.splits: dict[int, tuple] = {}
        self.stage = None
        self.jacobians: dict[int, torch.Tensor] = {}  # shared parameter's position -> (tasks, *its shape)
        self.weights = torch.ones(len(self.names), device=self.device)

    def outputs(self, model, task, batch):
        with model.autocast():
            return model.module(task, batch)  # not the DDP wrapper: gradients are averaged here, by hand

    def loss(self, model, task, batch, *, stage, step):
        if stage.index not in self.splits:
            self.splits[stage.index] = parameter_split(model.module, stage.tasks)
        self.stage = stage
        return super().loss(model, task, batch, stage=stage, step=step)

    def backward(self, model, losses, backward):
        shared, owned = self.splits[self.stage.index]
        rows = len(self.stage.tasks)
        for number, (task, loss) in enumerate(losses.items()):
            row = self.stage.tasks.index(task)
            grads = torch.autograd.grad(loss / self.accum, shared + owned[task], allow_unused=True,
                                        retain_graph=number < len(losses) - 1)
            for k, grad in enumerate(grads[:len(shared)]):
                if grad is not None:
                    if k not in self.jacobians:
                        self.jacobians[k] = grad.new_zeros((rows, *grad.shape))
                    self.jacobians[k][row] += grad
            for param, grad in zip(owned[task], grads[len(shared):]):
                if grad is not None:
                    param.grad = grad if param.grad is None else param.grad + grad
        if model.sync_gradients():
            self.aggregate(model)

    def aggregate(self, model) -> None:
        """The shared parameters' gradient from J (every process's averaged); the own parameters' averaged."""
        from torchjd.autojac import jac_to_grad

        shared, owned = self.splits[self.stage.index]
        touched = [shared[k] for k in sorted(self.jacobians)]
        for k, param in zip(sorted(self.jacobians), touched):
            param.jac = model.average(self.jacobians[k])
        for params in owned.values():
            for param in params:
                if param.grad is not None:
                    param.grad = model.average(param.grad)
        self.jacobians = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(self.seed, self.step))
            weights = jac_to_grad(touched, self.aggregators[self.stage.index], optimize_gramian_computation=True)
        self.weights[self.positions(self.stage.tasks)] = weights.to(self.weights)

    def log_values(self, stage):
        return {"task_weights": named(stage.tasks, self.weights[self.positions(stage.tasks)])}

    def describe(self, stage):
        settings = self.settings[stage.index]
        detail = f" (c {settings.cagrad_c:g})" if settings.method == "cagrad" else ""
        return f"supervised, gradient surgery {settings.method}{detail}"
