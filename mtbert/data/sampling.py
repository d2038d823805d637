"""Which task(s) each training step uses.

A sampler is a pure function of the step index: the same seed gives the same task at the same step
on every process, and a resumed run needs nothing but the step to continue the sequence.

What an epoch is, per strategy (batches counted at the global batch size):
  round_robin   tasks in turn, until the largest task has been seen once: T x max_t batches(t) steps
  all_tasks     one batch of every task per step, losses summed: max_t batches(t) steps
  proportional, temperature, annealed, uniform
                one draw per step, as many steps as all tasks' batches together: sum_t batches(t)
Smaller tasks restart (reshuffled) when they run out; `max_train_examples` caps a task's pass.
"""

from __future__ import annotations

import math

import numpy as np

STRATEGIES = ("round_robin", "proportional", "temperature", "annealed", "uniform", "all_tasks")


class TaskSampler:
    def __init__(self, strategy: str, sizes: dict[str, int], batches: dict[str, int], *, seed: int,
                 temperature: float = 2.0, anneal_decay: float = 0.8, epochs: int = 1):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        self.strategy, self.seed = strategy, seed
        self.names = list(sizes)
        self.sizes = np.array([sizes[n] for n in self.names], dtype=np.float64)
        self.temperature, self.anneal_decay, self.epochs = temperature, anneal_decay, epochs
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

    def probabilities(self, step: int) -> np.ndarray:
        """p(task) at `step` for the random strategies."""
        if self.strategy == "uniform":
            weights = np.ones_like(self.sizes)
        elif self.strategy == "proportional":
            weights = self.sizes
        elif self.strategy == "temperature":
            weights = self.sizes ** (1.0 / self.temperature)
        elif self.strategy == "annealed":
            weights = self.sizes ** self.annealing_alpha(step)
        else:
            raise ValueError(f"{self.strategy} is not a random strategy")
        return weights / weights.sum()

    def annealing_alpha(self, step: int) -> float:
        """Stickland & Murray (2019): alpha = 1 - decay * (e - 1) / (E - 1) in epoch e (1-based) of E."""
        epoch = min(step // self.steps_per_epoch, self.epochs - 1) + 1
        if self.epochs == 1:
            return 1.0
        return 1.0 - self.anneal_decay * (epoch - 1) / (self.epochs - 1)

    def tasks_at(self, step: int) -> list[str]:
        if self.strategy == "all_tasks":
            return list(self.names)
        if self.strategy == "round_robin":
            return [self.names[step % len(self.names)]]
        rng = np.random.default_rng([self.seed, step])
        return [self.names[rng.choice(len(self.names), p=self.probabilities(step))]]


def total_steps(micro_steps_per_epoch: int, epochs: int, grad_accum: int, max_steps: int | None) -> int:
    """Optimizer steps in the run."""
    if max_steps is not None:
        return max_steps
    return math.ceil(micro_steps_per_epoch * epochs / grad_accum)
