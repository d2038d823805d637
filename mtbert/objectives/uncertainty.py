"""Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018, section 3.2): each task's loss weighted by a
learned precision. With s = log sigma^2 learned per task (0 at the start):

    classes, binary   exp(-s) L + s/2          the softmax likelihood with temperature sigma^2 (their eq. 10)
    regression        exp(-s) L / 2 + s/2      the Gaussian likelihood (their eq. 7)

s is trained by its own Adam at balancing.lr after each optimizer step (the model's learning rate, made for
fine-tuning an encoder, would barely move it), from its gradient averaged over the processes. Checkpoint
part `uncertainty`: s and its Adam state. Logged: `task_weights` (the factor on each task's loss) and
`log_variance` (s).
"""

import torch

from mtbert.objectives.balancing import Balanced, LearnedVector, named


class UncertaintyWeighting(Balanced):
    def __init__(self, context, stages):
        super().__init__(context, stages)
        regression = [context.tasks[name].kind == "regression" for name in self.names]
        self.factor = torch.tensor([0.5 if r else 1.0 for r in regression], device=context.device)
        self.log_variance = LearnedVector(torch.zeros(len(self.names), device=context.device))

    def state_parts(self):
        return {"uncertainty": self.log_variance}  # saved and restored as checkpoint part `uncertainty`

    def begin_step(self, step):
        super().begin_step(step)
        self.log_variance.zero_grad()  # a skipped step's gradient is not carried into this one

    def weigh(self, task, loss, stage):
        i = self.names.index(task)
        s = self.log_variance.values[i]
        return self.factor[i] * torch.exp(-s) * loss + s / 2

    def after_step(self, model, *, stage, step):
        self.log_variance.step(self.settings[stage.index].lr, model.average)

    def log_values(self, stage):
        at = self.positions(stage.tasks)
        s = self.log_variance.values.detach()[at]
        return {"task_weights": named(stage.tasks, self.factor[at] * torch.exp(-s)),
                "log_variance": named(stage.tasks, s)}

    def describe(self, stage):
        return "supervised, uncertainty weighting"
