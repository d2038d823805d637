"""A run as a sequence of stages: which tasks, objective, sampler, steps and learning rate apply at each
optimizer step; and the learning-rate schedule that follows them.

A recipe without `stages:` is one supervised stage of all its tasks with the recipe's sampling, length
and learning rate. Every stage gets its own sampler (over its tasks, counted from the stage's first
step), its own warm-up and linear decay to zero at its peak learning rate, and evaluates at its end.
Annealed sampling anneals over the stage's own steps. Which stage a step belongs to, and how far through it the
step is, follow from the step alone, so a resumed run needs nothing more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mtbert.config import Recipe, SamplingConfig, stage_configs
from mtbert.data.sampling import TaskSampler, run_progress, total_steps
from mtbert.objectives.base import Objective


@dataclass
class Stage:
    index: int
    "0-based position in the run."
    name: str
    tasks: list[str]
    objective: Objective
    "What the stage trains (objectives/registry.py); it also gives the stage's batches."
    sampling: SamplingConfig
    sampler: TaskSampler
    start: int
    "First optimizer step (0-based) of the stage."
    steps: int
    "Optimizer steps in the stage."
    steps_per_epoch: int
    lr: float
    "The peak learning rate: train.lr, or the stage's own lr."
    warmup_ratio: float

    @property
    def end(self) -> int:
        return self.start + self.steps

    def tasks_at(self, step: int, micro: int, accum: int) -> list[str]:
        """The task(s) of micro-batch `micro` of optimizer step `step` (a run step, 0-based)."""
        return self.sampler.tasks_at((step - self.start) * accum + micro, self.progress(step))

    def progress(self, step: int) -> float:
        """How far run step `step` is through the stage: 0 at its first step, 1 at its last (annealed sampling)."""
        return run_progress(step - self.start, self.steps)

    def probabilities_at(self, step: int) -> dict[str, float]:
        """p(task) at run step `step` for a stage with random sampling."""
        return dict(zip(self.sampler.names, self.sampler.probabilities(self.progress(step)).tolist()))

    def lr_factor(self, step: int) -> float:
        """The learning rate at run step `step` as a fraction of the peak: linear warm-up, then linear decay."""
        local, warmup = step - self.start, int(self.warmup_ratio * self.steps)
        if local < warmup:
            return (local + 1) / (warmup + 1)
        return max(0.0, (self.steps - local) / max(1, self.steps - warmup))

    def describe(self) -> str:
        return (f"stage {self.index + 1} {self.name}: steps {self.start + 1}-{self.end} | {', '.join(self.tasks)} | "
                f"{self.objective.describe(self)} | sampling {self.sampling.strategy} | lr {self.lr:g}")


def plan_stages(recipe: Recipe, objectives: list[Objective], accum: int) -> list[Stage]:
    """Resolve every stage (config.stage_configs) against the objective that trains it, whose streams (anything
    with pass_size and batches_per_pass, per task) give its sampler and length."""
    stages, start = [], 0
    for index, (config, objective) in enumerate(zip(stage_configs(recipe), objectives, strict=True)):
        tasks = config.tasks or list(recipe.tasks)
        sampling = config.sampling or recipe.sampling
        epochs = config.epochs or recipe.train.epochs
        max_steps = config.max_steps if config.max_steps is not None else (
            None if config.epochs is not None else recipe.train.max_steps)
        source = objective.streams
        # A streamed task's size is unknown (None): config.py lets it only into stages of a set length whose
        # strategy draws without sizes, so it counts as one batch here and an epoch is the whole stage.
        streamed = any(source[n].pass_size is None for n in tasks)
        sampler = TaskSampler(sampling.strategy, {n: source[n].pass_size or 1 for n in tasks},
                              {n: source[n].batches_per_pass or 1 for n in tasks}, seed=recipe.seed,
                              temperature=sampling.temperature, anneal_decay=sampling.anneal_decay,
                              size_cap=sampling.size_cap, min_share=sampling.min_share)
        steps = total_steps(sampler.steps_per_epoch, epochs, accum, max_steps)
        steps_per_epoch = steps if streamed else math.ceil(sampler.steps_per_epoch / accum)
        stages.append(Stage(index=index, name=config.name or f"stage-{index + 1}", tasks=tasks, objective=objective,
                            sampling=sampling, sampler=sampler, start=start, steps=steps,
                            steps_per_epoch=steps_per_epoch,
                            lr=config.lr or recipe.train.lr,
                            warmup_ratio=recipe.train.warmup_ratio if config.warmup_ratio is None
                            else config.warmup_ratio))
        start += steps
    return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
    """The stage run step `step` (0-based) belongs to."""
    for stage in stages:
        if step < stage.end:
            return stage
    return stages[-1]


class LearningRateSchedule:
    """Sets the optimizer's learning rate for every step: the step's stage's peak times its warm-up or decay
    factor. Stepped by hand once per optimizer step, so that it counts optimizer steps whatever the number
    of processes (Accelerate would step a prepared scheduler once per process). The only place a learning
    rate is set: the optimizer's own is overwritten before the first step.

    Resumable as checkpoint part `scheduler`: its state is the step (`last_epoch`, the name torch's
    schedulers, which earlier mtbert versions used here, store it under).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, stages: list[Stage], reference_lr: float):
        """reference_lr: train.lr, see lr_at."""
        self.optimizer, self.stages, self.reference_lr = optimizer, stages, reference_lr
        self.last_epoch = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        """The learning rate of run step `step`."""
        stage = stage_at(self.stages, step)
        factor = stage.lr_factor(step)
        if stage.lr == self.reference_lr:
            return factor * stage.lr
        # A stage with its own peak: rounded as earlier versions computed it (train.lr times the ratio of the
        # stage's peak to it), so that runs, and runs resumed from their checkpoints, stay bit-identical.
        return self.reference_lr * (factor * stage.lr / self.reference_lr)

    def _apply(self) -> None:
        self.lr = self.lr_at(self.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = state["last_epoch"]
        self._apply()
