"""Which objective trains each stage: objective names -> classes.

A stage's name is its `objective:` (config.Objective lists what a recipe may write), except that a
supervised stage with SMART on one of its tasks (the recipe's, a task's or the stage's `smart:`) trains
`smart`. One object of each class serves every stage of that class, so that state the stages share (SMART's
teacher, the triplet streams) is one checkpoint part.
"""

from __future__ import annotations

from mtbert.config import Recipe, StageConfig, stage_configs
from mtbert.objectives.base import Objective, ObjectiveContext
from mtbert.objectives.contrastive import LOSS_NAMES, Contrastive
from mtbert.objectives.smart import Smart, stage_settings
from mtbert.objectives.supervised import Supervised

OBJECTIVES: dict[str, type[Objective]] = {
    "supervised": Supervised,
    "smart": Smart,
    **{name: Contrastive for name in LOSS_NAMES},
}


def objective_name(recipe: Recipe, stage: StageConfig) -> str:
    """The registry name of the objective that trains `stage`."""
    if stage.objective == "supervised" and stage_settings(recipe, stage):
        return "smart"
    return stage.objective


def build_objectives(context: ObjectiveContext) -> list[Objective]:
    """The objective of each of the recipe's stages (config.stage_configs), built in the order stages first
    need them."""
    configs = stage_configs(context.recipe)
    classes = [OBJECTIVES[objective_name(context.recipe, config)] for config in configs]
    built = {cls: cls(context, {i: config for i, config in enumerate(configs) if classes[i] is cls})
             for cls in dict.fromkeys(classes)}
    return [built[cls] for cls in classes]
