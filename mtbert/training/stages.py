"""A run as a sequence of stages: which tasks, objective, sampler, steps and learning rate apply at each
optimizer step, and each task's SMART settings in each stage.

A recipe without `stages:` is one supervised stage of all its tasks with the recipe's sampling, length
and learning rate. Every stage gets its own sampler (over its tasks, counted from the stage's first
step), its own warm-up and linear decay to zero at its peak learning rate, and evaluates at its end.
Annealed sampling anneals over the stage's own steps. Which stage a step belongs to, and how far through it the
step is, follow from the step alone, so a resumed run needs nothing more.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mtbert.config import Recipe, SamplingConfig, StageConfig
from mtbert.data.sampling import TaskSampler, run_progress, total_steps
from mtbert.objectives.smart import SmartSettings

SMART_FIELDS = tuple(f.name for f in dataclasses.fields(SmartSettings))


@dataclass
class Stage:
    index: int
    "0-based position in the run."
    name: str
    tasks: list[str]
    objective: str
    "supervised, ranking, triplet, lse_hinge or lse_smooth (objectives/contrastive.py)."
    smart: dict[str, SmartSettings]
    "SMART settings of the tasks that use it in this stage (supervised stages only)."
    sampling: SamplingConfig
    sampler: TaskSampler
    start: int
    "First optimizer step (0-based) of the stage."
    steps: int
    "Optimizer steps in the stage."
    steps_per_epoch: int
    lr: float
    warmup_ratio: float

    @property
    def end(self) -> int:
        return self.start + self.steps

    @property
    def contrastive(self) -> bool:
        return self.objective != "supervised"

    @property
    def uses_teacher(self) -> bool:
        return any(s.prox_weight > 0 for s in self.smart.values())

    def tasks_at(self, step: int, micro: int, accum: int) -> list[str]:
        """The task(s) of micro-batch `micro` of optimizer step `step` (a run step, 0-based)."""
        return self.sampler.tasks_at((step - self.start) * accum + micro, self.progress(step))

    def progress(self, step: int) -> float:
        """How far run step `step` is through the stage: 0 at its first step, 1 at its last (annealed sampling)."""
        return run_progress(step - self.start, self.steps)

    def probabilities_at(self, step: int) -> dict[str, float]:
        """p(task) at run step `step` for a stage with random sampling."""
        return dict(zip(self.sampler.names, self.sampler.probabilities(self.progress(step)).tolist()))

    def lr_factor(self, step: int, base_lr: float) -> float:
        """The learning rate at run step `step`, as a multiple of base_lr: linear warm-up, then linear decay."""
        local, warmup = step - self.start, int(self.warmup_ratio * self.steps)
        if local < warmup:
            factor = (local + 1) / (warmup + 1)
        else:
            factor = max(0.0, (self.steps - local) / max(1, self.steps - warmup))
        return factor if self.lr == base_lr else factor * self.lr / base_lr

    def describe(self) -> str:
        smart = f" + SMART ({', '.join(self.smart)})" if self.smart else ""
        return (f"stage {self.index + 1} {self.name}: steps {self.start + 1}-{self.end} | {', '.join(self.tasks)} | "
                f"{self.objective}{smart} | sampling {self.sampling.strategy} | lr {self.lr:g}")


def stage_configs(recipe: Recipe) -> list[StageConfig]:
    """The recipe's stages, or the one stage a recipe without `stages:` describes."""
    return recipe.stages or [StageConfig()]


def smart_settings(recipe: Recipe, task: str, stage: StageConfig) -> SmartSettings | None:
    """The task's SMART settings in `stage`, or None when it trains without SMART there."""
    if stage.objective != "supervised":
        return None
    own = recipe.tasks[task].smart
    enabled = own.enabled if own is not None and own.enabled is not None else recipe.smart.enabled
    if stage.smart is not None:
        enabled = stage.smart and (own is None or own.enabled is not False)
    if not enabled:
        return None
    values = {}
    for key in SMART_FIELDS:
        value = getattr(own, key) if own is not None else None
        values[key] = getattr(recipe.smart, key) if value is None else value
    return SmartSettings(**values)


def plan_stages(recipe: Recipe, streams: dict, triplet_streams: dict, accum: int) -> list[Stage]:
    """Resolve every stage against the streams it draws from (anything with pass_size and
    batches_per_pass, per task): its sampler, start and length. triplet_streams serve contrastive stages."""
    stages, start = [], 0
    for index, config in enumerate(stage_configs(recipe)):
        tasks = config.tasks or list(recipe.tasks)
        sampling = config.sampling or recipe.sampling
        epochs = config.epochs or recipe.train.epochs
        max_steps = config.max_steps if config.max_steps is not None else (
            None if config.epochs is not None else recipe.train.max_steps)
        source = streams if config.objective == "supervised" else triplet_streams
        sampler = TaskSampler(sampling.strategy, {n: source[n].pass_size for n in tasks},
                              {n: source[n].batches_per_pass for n in tasks}, seed=recipe.seed,
                              temperature=sampling.temperature, anneal_decay=sampling.anneal_decay)
        steps = total_steps(sampler.steps_per_epoch, epochs, accum, max_steps)
        smart = {n: s for n in tasks if (s := smart_settings(recipe, n, config)) is not None}
        stages.append(Stage(index=index, name=config.name or f"stage-{index + 1}", tasks=tasks,
                            objective=config.objective, smart=smart, sampling=sampling, sampler=sampler,
                            start=start, steps=steps, steps_per_epoch=math.ceil(sampler.steps_per_epoch / accum),
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
