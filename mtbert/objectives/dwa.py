"""Dynamic weight average (Liu, Johns and Davison, CVPR 2019, section 3, eq. 7): a task whose loss fell less over
the last window gets more weight.

    lambda_k = K exp(r_k / T) / sum_i exp(r_i / T),   r_k = L_k(w-1) / L_k(w-2)

L_k(w) is task k's mean loss over window w (the paper's epoch; here balancing.window optimizer steps, averaged
over the processes too), K the number of tasks that trained in both windows, T = balancing.temperature. In the
first two windows every weight is 1. Checkpoint part `dwa`: the weights, the last two windows' means and the
current window's sums.
"""

from __future__ import annotations

import torch

from mtbert.objectives.balancing import Balanced, named


def dwa_weights(latest: torch.Tensor, earlier: torch.Tensor, temperature: float) -> torch.Tensor:
    """lambda for every task from its mean losses in the last two windows (NaN: the task was not trained then,
    and keeps weight 1)."""
    weights = torch.ones_like(latest)
    known = torch.isfinite(latest) & torch.isfinite(earlier) & (earlier > 0)
    if known.any():
        ratio = latest[known] / earlier[known]
        weights[known] = known.sum() * torch.softmax(ratio / temperature, dim=0)
    return weights


class DynamicWeightAverage(Balanced):
    def __init__(self, context, stages):
        super().__init__(context, stages)
        n = len(self.names)
        self.weights = torch.ones(n, device=self.device)
        self.history = torch.full((2, n), float("nan"), device=self.device)  # window w-1, then w-2
        self.sums = torch.zeros(n, device=self.device)
        self.counts = torch.zeros(n, device=self.device)
        self.steps_in_window = 0

    def state_parts(self):
        return {"dwa": self}

    def weigh(self, task, loss, stage):
        return self.weights[self.names.index(task)] * loss

    def after_step(self, model, *, stage, step):
        step = torch.zeros(2, len(self.names), device=self.device)  # this step's loss sums and counts
        for task, losses in self.step_losses.items():
            step[:, self.names.index(task)] += torch.stack([torch.stack(losses).sum(), step.new_tensor(len(losses))])
        step = model.average(step)  # every process keeps the same sums: the checkpoint holds process 0's
        self.sums += step[0]
        self.counts += step[1]
        self.steps_in_window += 1
        if self.steps_in_window == self.settings[stage.index].window:
            means = torch.where(self.counts > 0, self.sums / self.counts.clamp(min=1), torch.nan)
            self.history = torch.stack([means, self.history[0]])
            self.weights = dwa_weights(self.history[0], self.history[1], self.settings[stage.index].temperature)
            self.sums.zero_()
            self.counts.zero_()
            self.steps_in_window = 0

    def state_dict(self):
        return {"weights": self.weights.cpu(), "history": self.history.cpu(), "sums": self.sums.cpu(),
                "counts": self.counts.cpu(), "steps_in_window": self.steps_in_window}

    def load_state_dict(self, state):
        for name in ("weights", "history", "sums", "counts"):
            setattr(self, name, state[name].to(self.device))
        self.steps_in_window = int(state["steps_in_window"])

    def log_values(self, stage):
        return {"task_weights": named(stage.tasks, self.weights[self.positions(stage.tasks)])}

    def describe(self, stage):
        settings = self.settings[stage.index]
        return f"supervised, dynamic weight average (window {settings.window} steps, T {settings.temperature:g})"
