"""Which objective trains each stage: objective names -> classes.

A stage's name is its `objective:` (config.Objective lists what a recipe may write), except that a
supervised stage with SMART on one of its tasks (the recipe's, a task's or the stage's `smart:`) trains
`smart`. One object of each class serves every stage of that class, so that state the stages share (SMART's
teacher, the triplet streams) is one checkpoint part.
"""

from __future__ import annotations

from mtbert.config import SURGERY_METHODS, Recipe, StageConfig, balancing_of, stage_configs
from mtbert.errors import MtbertError
from mtbert.objectives.base import Objective, ObjectiveContext
from mtbert.objectives.contrastive import LOSS_NAMES, Contrastive
from mtbert.objectives.distillation import Distillation
from mtbert.objectives.dwa import DynamicWeightAverage
from mtbert.objectives.famo import Famo
from mtbert.objectives.gradnorm import GradNorm
from mtbert.objectives.smart import Smart, stage_settings
from mtbert.objectives.supervised import Supervised
from mtbert.objectives.surgery import GradientSurgery
from mtbert.objectives.uncertainty import UncertaintyWeighting

OBJECTIVES: dict[str, type[Objective]] = {
    "supervised": Supervised,
    "smart": Smart,
    **{name: Contrastive for name in LOSS_NAMES},
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "gradnorm": GradNorm,
    "famo": Famo,
    "surgery": GradientSurgery,
    "distillation": Distillation,
}


def objective_name(recipe: Recipe, stage: StageConfig) -> str:
    """The registry name of the objective that trains `stage`: a supervised stage's is its balancing method's
    (gradient-surgery methods share one), or smart."""
    if stage.objective != "supervised":
        return stage.objective
    method = balancing_of(recipe, stage).method
    if stage_settings(recipe, stage):
        if method != "static":
            raise MtbertError(f"balancing.method {method} and SMART are not combined in one stage; switch SMART off "
                              f"there (smart.enabled, a task's smart, a stage's smart) or balance with static weights")
        return "smart"
    if method in SURGERY_METHODS:
        return "surgery"
    return "supervised" if method == "static" else method


def build_objectives(context: ObjectiveContext) -> list[Objective]:
    """The objective of each of the recipe's stages (config.stage_configs), built in the order stages first
    need them."""
    configs = stage_configs(context.recipe)
    classes = [OBJECTIVES[objective_name(context.recipe, config)] for config in configs]
    built = {cls: cls(context, {i: config for i, config in enumerate(configs) if classes[i] is cls})
             for cls in dict.fromkeys(classes)}
    return [built[cls] for cls in classes]
