"""Which task(s) each training step uses.

A sampler is a pure function of the step index: the same seed gives the same task at the same step
on every process, and a resumed run needs nothing but the step to continue the sequence.

What an epoch is, per strategy (batches counted at the global batch size):
  round_robin   tasks in turn, until the largest task has been seen once: T x max_t batches(t) steps
  all_tasks     one batch of every task per step, losses summed: max_t batches(t) steps
  proportional, temperature, annealed, uniform
                one draw per step, as many steps as all tasks' batches together: sum_t batches(t)
Smaller tasks restart (reshuffled) when they run out; `max_train_examples` caps a task's pass.

With many tasks of very different sizes, two settings keep the small ones alive under the random
strategies: `size_cap` K counts a task as at most K examples when its p is computed (the examples-
proportional mixing limit of Raffel et al., 2020, section 3.5.2), and `min_share` m mixes p with uniform
sampling, p -> m + (1 - n m) p for n tasks, so that every task gets at least m of the draws.

`annealed` anneals over the run's progress, not its epochs: at optimizer step t (0-based) of T,
alpha = 1 - anneal_decay * t / (T - 1), so a one-epoch run or a `max_steps` run shorter than an epoch
anneals just as fully as a long one. This is Stickland & Murray's (2019) schedule,
alpha = 1 - decay * (e - 1) / (E - 1) in epoch e of E, with the optimizer step as the unit instead of
the epoch: counting epochs (t -> e - 1, T -> E) gives theirs exactly, which holds alpha for a whole
epoch and, with one epoch, never moves from 1 (plain proportional sampling).
"""

from __future__ import annotations

import math

import numpy as np

STRATEGIES = ("round_robin", "proportional", "temperature", "annealed", "uniform", "all_tasks")


def run_progress(step: int, steps: int) -> float:
    """How far optimizer step `step` (0-based) is through a run of `steps`: 0 at the first, 1 at the last."""
    return step / (steps - 1) if steps > 1 else 0.0


def anneal_alpha(progress: float, decay: float) -> float:
    """The annealed exponent: 1 at the start of the run, 1 - decay at its end, linear in between."""
    return 1.0 - decay * progress


class TaskSampler:
    """The task(s) of each batch draw. `tasks_at(draw, progress)` is a pure function of its arguments: draw
    counts the batches drawn (micro-steps), progress is `run_progress` of the optimizer step they belong to."""

    def __init__(self, strategy: str, sizes: dict[str, int], batches: dict[str, int], *, seed: int,
                 temperature: float = 2.0, anneal_decay: float = 0.8, size_cap: int | None = None,
                 min_share: float = 0.0):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        if not 0 <= min_share * len(sizes) <= 1:
            raise ValueError(f"min_share {min_share} for {len(sizes)} tasks is not a share of the draws")
        self.strategy, self.seed = strategy, seed
        self.names = list(sizes)
        self.sizes = np.array([sizes[n] for n in self.names], dtype=np.float64)
        if size_cap is not None:
            self.sizes = np.minimum(self.sizes, size_cap)
        self.temperature, self.anneal_decay, self.min_share = temperature, anneal_decay, min_share
        self.batches = batches

    @property
    def steps_per_epoch(self) -> int:
        """Batch draws (micro-steps) in one epoch, as the module docstring defines it."""
        largest = max(self.batches.values())
        if self.strategy == "round_robin":
            return largest * len(self.names)
        if self.strategy == "all_tasks":
            return largest
        return sum(self.batches.values())

    def probabilities(self, progress: float) -> np.ndarray:
        """p(task) for the random strategies at `progress` through the run (see run_progress)."""
        if self.strategy == "uniform":
            weights = np.ones_like(self.sizes)
        elif self.strategy == "proportional":
            weights = self.sizes
        elif self.strategy == "temperature":
            weights = self.sizes ** (1.0 / self.temperature)
        elif self.strategy == "annealed":
            weights = self.sizes ** anneal_alpha(progress, self.anneal_decay)
        else:
            raise ValueError(f"{self.strategy} is not a random strategy")
        p = weights / weights.sum()
        return self.min_share + (1.0 - len(p) * self.min_share) * p if self.min_share else p

    def tasks_at(self, draw: int, progress: float) -> list[str]:
        if self.strategy == "all_tasks":
            return list(self.names)
        if self.strategy == "round_robin":
            return [self.names[draw % len(self.names)]]
        rng = np.random.default_rng([self.seed, draw])
        return [self.names[rng.choice(len(self.names), p=self.probabilities(progress))]]


def total_steps(micro_steps_per_epoch: int, epochs: int, grad_accum: int, max_steps: int | None) -> int:
    """Optimizer steps in the run."""
    if max_steps is not None:
        return max_steps
    return math.ceil(micro_steps_per_epoch * epochs / grad_accum)
