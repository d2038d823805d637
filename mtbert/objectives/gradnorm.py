"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018, section 3 and Algorithm 1): learned task weights
w_i that pull the tasks' gradient norms at the last shared layer W towards a common size, scaled by how slowly
each task trains.

    G_i = || grad_W w_i L_i ||,   Gbar = mean_i G_i,   Ltilde_i = L_i / L_i(0),   r_i = Ltilde_i / mean_j Ltilde_j
    L_grad = sum_i | G_i - Gbar r_i^alpha |     (the target Gbar r_i^alpha held constant)
    dL_grad/dw_i = sign(G_i - Gbar r_i^alpha) || grad_W L_i ||

The network trains on sum_i w_i L_i as usual; after each optimizer step the weights take one Adam step on
dL_grad/dw (balancing.lr) and are renormalised to sum to the number of tasks (first floored at 1e-3, so that
no weight turns negative). W is every trainable parameter of the highest encoder layer all the stage's tasks
share; L_i(0) is the task's loss in its first step. Under several processes the per-task gradients of W and the
losses are averaged over the processes first. Checkpoint part `gradnorm`: w, its Adam state, L(0).
"""

from __future__ import annotations

import torch

from mtbert.errors import MtbertError
from mtbert.objectives.balancing import Balanced, LearnedVector, named, top_shared_layer

FLOOR = 1e-3


def gradnorm_gradient(weights: torch.Tensor, norms: torch.Tensor, losses: torch.Tensor, initial: torch.Tensor,
                      alpha: float) -> torch.Tensor:
    """dL_grad/dw from the weights w, the norms ||grad_W L_i|| of the unweighted losses' gradients, the losses
    L_i and their first values L_i(0)."""
    gradient_norms = weights * norms  # G_i
    rates = losses / initial  # Ltilde_i
    target = gradient_norms.mean() * (rates / rates.mean()) ** alpha  # a constant for the derivative
    return torch.sign(gradient_norms - target) * norms


def renormalise(weights: torch.Tensor) -> torch.Tensor:
    """Floored at FLOOR, then scaled to sum to their number."""
    weights = weights.clamp(min=FLOOR)
    return len(weights) * weights / weights.sum()


class GradNorm(Balanced):
    def __init__(self, context, stages):
        super().__init__(context, stages)
        if context.deepspeed:
            raise MtbertError("balancing.method gradnorm: not available under DeepSpeed, which shards the shared "
                              "layer whose gradients it compares; use DDP (accelerate_configs/multi_gpu.yaml)")
        n = len(self.names)
        self.weights = LearnedVector(torch.ones(n, device=self.device))
        self.initial = torch.full((n,), float("nan"), device=self.device)
        self.layers: dict[int, list[torch.nn.Parameter]] = {}
        self.layer: list[torch.nn.Parameter] = []
        self.grads: dict[str, torch.Tensor] = {}

    def state_parts(self):
        return {"gradnorm": self}

    def begin_step(self, step):
        super().begin_step(step)
        self.grads = {}

    def loss(self, model, task, batch, *, stage, step):
        if stage.index not in self.layers:
            self.layers[stage.index] = top_shared_layer(model.module, stage.tasks)
            if not self.layers[stage.index]:
                raise MtbertError(f"balancing.method gradnorm: the tasks {', '.join(stage.tasks)} share no trainable "
                                  f"encoder layer (model.sharing), whose gradients GradNorm compares")
        self.layer = self.layers[stage.index]
        return super().loss(model, task, batch, stage=stage, step=step)

    def weigh(self, task, loss, stage):
        return self.weights.values[self.names.index(task)].detach() * loss

    def backward(self, model, losses, backward):
        for task, loss in losses.items():  # grad_W of w_i L_i: a backward through the heads and W only
            grads = torch.autograd.grad(loss, self.layer, retain_graph=True, allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                              for g, p in zip(grads, self.layer)]) / self.accum
            self.grads[task] = self.grads[task] + flat if task in self.grads else flat
        super().backward(model, losses, backward)

    def after_step(self, model, *, stage, step):
        tasks, settings = stage.tasks, self.settings[stage.index]
        at = self.positions(tasks)
        weights = self.weights.values.detach()[at]
        gradient_norms = torch.stack([model.average(self.grads[task]).norm() for task in tasks])  # G_i
        losses = self.step_mean_losses(model, tasks)
        self.initial[at] = torch.where(torch.isnan(self.initial[at]), losses, self.initial[at])
        gradient = torch.zeros_like(self.weights.values)
        gradient[at] = gradnorm_gradient(weights, gradient_norms / weights, losses, self.initial[at], settings.alpha)
        self.weights.values.grad = gradient
        self.weights.step(settings.lr, lambda tensor: tensor)  # from averaged figures: equal on every process
        with torch.no_grad():
            self.weights.values[at] = renormalise(self.weights.values[at])

    def state_dict(self):
        return {"weights": self.weights.state_dict(), "initial": self.initial.cpu()}

    def load_state_dict(self, state):
        self.weights.load_state_dict(state["weights"])
        self.initial = state["initial"].to(self.device)

    def log_values(self, stage):
        return {"task_weights": named(stage.tasks, self.weights.values.detach()[self.positions(stage.tasks)])}

    def describe(self, stage):
        return f"supervised, GradNorm (alpha {self.settings[stage.index].alpha:g})"
