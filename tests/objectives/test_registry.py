"""Which objective trains each stage (mtbert/objectives/registry.py), and that the recipe's language and the
registry name the same objectives."""

import typing

from mtbert import config
from mtbert.config import StageConfig
from mtbert.objectives.contrastive import Contrastive
from mtbert.objectives.registry import OBJECTIVES, build_objectives, objective_name
from mtbert.objectives.smart import Smart
from mtbert.objectives.supervised import Supervised

from helpers import objective_context

STAGES = {"stages": [{"tasks": ["quora"], "objective": "ranking", "max_steps": 2},
                     {"tasks": ["quora"], "max_steps": 2},
                     {"objective": "triplet", "max_steps": 2},
                     {"max_steps": 2, "smart": True},
                     {"max_steps": 2, "smart": True}]}


def test_every_objective_a_recipe_may_name_is_registered_and_smart_is_switched_on_by_its_settings():
    # balancing methods name their objective (the gradient-surgery ones share one), static is plain supervised
    balancing = {"surgery" if m in config.SURGERY_METHODS else m for m in typing.get_args(config.BalancingMethod)}
    assert set(OBJECTIVES) == set(typing.get_args(config.Objective)) | {"smart"} | balancing - {"static"}


def test_each_stage_gets_its_objective_and_stages_of_a_class_share_one(tmp_path, tokenizer_dir):
    context = objective_context(tmp_path, tokenizer_dir, **STAGES)
    names = [objective_name(context.recipe, stage) for stage in context.recipe.stages]
    assert names == ["ranking", "supervised", "triplet", "smart", "smart"]
    objectives = build_objectives(context)
    assert [type(o) for o in objectives] == [Contrastive, Supervised, Contrastive, Smart, Smart]
    assert objectives[0] is objectives[2] and objectives[3] is objectives[4]  # one triplet stream set, one teacher
    assert list(objectives[0].streams) == ["quora", "sst", "sts"]


def test_a_recipe_without_stages_trains_one_supervised_stage(tmp_path, tokenizer_dir):
    context = objective_context(tmp_path, tokenizer_dir)
    (objective,) = build_objectives(context)
    assert type(objective) is Supervised and objective_name(context.recipe, StageConfig()) == "supervised"
    smart = objective_context(tmp_path / "smart", tokenizer_dir, ["smart.enabled=true"])
    assert [type(o) for o in build_objectives(smart)] == [Smart]
